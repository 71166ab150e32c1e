"""The shards of a scoring run gathered into the published outputs (docs/scoring.md):

- ``variants.parquet``: one row per scored allele of the VCF, in VCF order: chrom, pos (1-based),
  id, ref, alt, window_chrom, window_start, window_end (0-based half-open, FASTA names), flags,
  max_abs_effect, top_feature, then one float32 column per output name;
- ``variants.vcf.gz`` + ``.tbi`` (pysam: bgzip and tabix): the records with INFO ``SEQMUX_MAX_ABS``,
  ``SEQMUX_TOP`` and ``SEQMUX_FLAGS`` per ALT allele;
- ``skipped.tsv``: every allele not scored, with its reason;
- ``maps/<name>.parquet`` per region (every SNV, the same columns) and ``maps/max_abs_effect.bw``;
- ``summary.json``: counts, engine, strand, model and genome (with checksums), speed, accuracy.
"""

import contextlib
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..metrics import PearsonAccumulator
from ..outputs import atomic_path
from .shard import FIXED

log = logging.getLogger(__name__)

PUBLISHED = ["chrom", "pos", "id", "ref", "alt", *FIXED]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_vcf(rows, plan, lengths, path):
    """``variants.vcf.gz`` (bgzipped, sorted by FASTA contig order and position) and its ``.tbi``:
    every VCF record of the plan with per-allele INFO (``.`` for an allele not scored)."""
    import pysam

    scored = {(r, a): (m, t, f) for r, a, m, t, f in zip(rows["record"].to_pylist(), rows["allele"].to_pylist(),
                                                          rows["max_abs_effect"].to_pylist(),
                                                          rows["top_feature"].to_pylist(), rows["flags"].to_pylist())}
    records = {}
    for r in plan.to_pylist():
        rec = records.setdefault(r["record"], dict(record=r["record"], chrom=r["chrom"], fasta=r["fasta_chrom"],
                                                   pos=r["pos"], id=r["id"], ref=r["ref"], alts=[]))
        rec["alts"].append((r["allele"], r["alt"], r["reason"]))
    header = pysam.VariantHeader()
    order = {name: i for i, name in enumerate(lengths)}
    contigs = {}
    for rec in records.values():
        contigs.setdefault(rec["chrom"], rec["fasta"])
    for chrom in sorted(contigs, key=lambda c: (order[contigs[c]], c)):
        header.add_line(f"##contig=<ID={chrom},length={lengths[contigs[chrom]]}>")
    header.add_line('##INFO=<ID=END,Number=1,Type=Integer,Description="End position (symbolic alleles)">')
    header.add_line('##INFO=<ID=SEQMUX_MAX_ABS,Number=A,Type=Float,Description="Largest |effect| over the '
                    'summary outputs (seqmux score)">')
    header.add_line('##INFO=<ID=SEQMUX_TOP,Number=A,Type=String,Description="Output with the largest |effect|">')
    header.add_line('##INFO=<ID=SEQMUX_FLAGS,Number=A,Type=String,Description="Flags of the allele, | separated '
                    '(n_padded, flipped; skipped when not scored: see skipped.tsv)">')
    tmp = Path(str(path) + ".part.vcf.gz")
    with pysam.VariantFile(str(tmp), "wz", header=header) as out:
        for rec in sorted(records.values(), key=lambda r: (order[r["fasta"]], r["chrom"], r["pos"])):
            alts = [alt for _, alt, _ in rec["alts"]]
            v = out.new_record(contig=rec["chrom"], start=rec["pos"] - 1, alleles=(rec["ref"], *alts),
                               id=rec["id"] if rec["id"] not in ("", ".") else None)
            values = [scored.get((rec["record"], a)) for a, _, _ in rec["alts"]]
            v.info["SEQMUX_MAX_ABS"] = tuple(x[0] if x else None for x in values)
            v.info["SEQMUX_TOP"] = tuple(x[1] if x else "." for x in values)
            v.info["SEQMUX_FLAGS"] = tuple((x[2].replace(",", "|") or ".") if x else "skipped" for x in values)
            out.write(v)
    pysam.tabix_index(str(tmp), preset="vcf", force=True)
    return tmp, Path(str(tmp) + ".tbi")


def write_bigwig(rows, lengths, path):
    """Per position (FASTA names), the largest ``max_abs_effect`` over its substitutions."""
    import pyBigWig

    frame = pa.table({"c": rows["window_chrom"], "p": rows["pos"], "v": rows["max_abs_effect"]}).to_pandas()
    best = frame.groupby(["c", "p"], sort=False)["v"].max().reset_index()
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader([(c, int(n)) for c, n in lengths.items()])
    order = {c: i for i, c in enumerate(lengths)}
    best = best.assign(o=best["c"].map(order)).sort_values(["o", "p"])
    for chrom, part in best.groupby("c", sort=False):
        starts = (part["p"].to_numpy() - 1).astype(int)
        bw.addEntries(chrom, starts.tolist(), values=part["v"].astype(float).tolist(), span=1, step=1) \
            if np.all(np.diff(starts) == 1) else \
            bw.addEntries([chrom] * len(starts), starts.tolist(), ends=(starts + 1).tolist(),
                          values=part["v"].astype(float).tolist())
    bw.close()


def gather(genome, plan_path, plan_info, shard_tables, shard_infos, outdir, engine="multiplexer", strand="forward",
           model_file="", mode="logfold"):
    """Stage: the outputs of the module docstring under ``outdir`` (each written atomically)."""
    from ..genome import chromosome_lengths, open_fasta

    outdir = Path(outdir)
    info = json.loads(Path(plan_info).read_text())
    lengths = chromosome_lengths(open_fasta(genome))
    table = pa.concat_tables([pq.read_table(str(p)) for p in shard_tables])
    stats = [json.loads(Path(p).read_text()) for p in shard_infos]
    names = stats[0]["names"] if stats else []
    plan = pq.read_table(str(plan_path))
    skipped = plan.filter(pc.not_equal(plan["reason"], ""))
    is_vcf = pc.equal(table["source"], "vcf")
    variants = table.filter(is_vcf)
    variants = variants.sort_by([("record", "ascending"), ("allele", "ascending")])
    with contextlib.ExitStack() as files:
        out = {}
        if info["vcf"]:
            out["parquet"] = files.enter_context(atomic_path(outdir / "variants.parquet"))
            pq.write_table(variants.select(PUBLISHED + names), str(out["parquet"]))
            vcf_rows = plan.filter(pc.equal(plan["source"], "vcf"))
            vcf_tmp, tbi_tmp = write_vcf(variants, vcf_rows, lengths, outdir / "variants.vcf.gz")
            files.callback(lambda: [p.unlink() for p in (vcf_tmp, tbi_tmp) if p.exists()])  # after an error
            out["skipped"] = files.enter_context(atomic_path(outdir / "skipped.tsv"))
            skipped.select(["chrom", "pos", "id", "ref", "alt", "reason"]).to_pandas().to_csv(
                out["skipped"], sep="\t", index=False)
        maps = table.filter(pc.invert(is_vcf))
        if info["regions"]:
            for name in sorted(set(maps["source"].to_pylist())):
                part = maps.filter(pc.equal(maps["source"], name)).sort_by([("pos", "ascending"),
                                                                            ("allele", "ascending")])
                tmp = files.enter_context(atomic_path(outdir / "maps" / f"{name}.parquet"))
                pq.write_table(part.select(PUBLISHED + names), str(tmp))
            bw_tmp = files.enter_context(atomic_path(outdir / "maps" / "max_abs_effect.bw"))
            write_bigwig(maps, lengths, bw_tmp)
        sums = np.sum([s["accuracy_sums"] for s in stats], axis=0) if stats else np.zeros((6, 0))
        checked = sum(s["checked_windows"] for s in stats)
        accuracy = None
        if engine == "multiplexer" and checked:
            acc = PearsonAccumulator(sums.shape[1])
            acc.sums = sums
            r = acc.result()
            accuracy = dict(windows=checked, weighted_pearson_mean=float(r.mean()),
                            weighted_pearson_median=float(np.median(r)), per_profile=[float(v) for v in r])
        seconds = sum(s["seconds"] for s in stats)
        rows = sum(s["rows"] for s in stats)
        windows = sum(s["windows"] for s in stats)
        reasons = Counter(r.split(":")[0] for r in skipped["reason"].to_pylist())
        counts = dict(info["counts"], scored=rows, scored_variants=variants.num_rows, skipped=skipped.num_rows,
                      skipped_by_reason=dict(sorted(reasons.items())), flipped=sum(s["flipped"] for s in stats),
                      n_padded=sum(s["n_padded"] for s in stats), windows=windows)
        summary = dict(counts=counts, engine=engine, strand=strand, mode=mode, stride=info["stride"],
                       length=info["length"], shards=info["n_shards"], ref_check=info["ref_check"],
                       model=dict(file=str(model_file), sha256=sha256(model_file) if model_file else None),
                       genome=dict(file=str(genome), sha256=sha256(genome)),
                       speed=dict(seconds=seconds, variants_per_second=rows / seconds if seconds else None,
                                  windows_per_second=windows / seconds if seconds else None),
                       accuracy=accuracy, outputs=names)
        if info["vcf"]:  # the index after the file: it must not be older
            vcf_tmp.replace(outdir / "variants.vcf.gz")
            tbi_tmp.replace(outdir / "variants.vcf.gz.tbi")
        tmp = files.enter_context(atomic_path(outdir / "summary.json"))
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    log.info("gathered %d scored alleles (%d skipped) from %d shards in %s", rows, skipped.num_rows, len(stats), outdir)
    return summary
