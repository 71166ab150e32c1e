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
import os
import re
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


INFO_LINES = [
    '##INFO=<ID=SEQMUX_MAX_ABS,Number=A,Type=Float,Description="Largest |effect| over the summary outputs '
    '(seqmux score)">',
    '##INFO=<ID=SEQMUX_TOP,Number=A,Type=String,Description="Output with the largest |effect|">',
    '##INFO=<ID=SEQMUX_FLAGS,Number=A,Type=String,Description="Flags of the allele, | separated (n_padded, '
    'flipped; skipped when not scored: see skipped.tsv)">',
]
BATCH_ROWS = 65536
ROW_GROUP_BYTES = 64 << 20  # a published parquet file's row groups: up to this many bytes of floats


def merged_shards(paths, batch_rows=BATCH_ROWS):
    """The rows of the shard tables in plan order, a table at a time: each shard is sorted by
    ``row`` (``seqmux.score.shard``), so a k-way merge holds one batch of each shard at a time."""
    readers = [pq.ParquetFile(str(p)).iter_batches(batch_size=batch_rows) for p in paths]

    def advance(k):
        return next((b for b in readers[k] if b.num_rows), None)

    current = [advance(k) for k in range(len(readers))]
    while any(b is not None for b in current):
        threshold = min(b.column("row")[b.num_rows - 1].as_py() for b in current if b is not None)
        parts = []
        for k, b in enumerate(current):
            if b is None:
                continue
            n = int(np.searchsorted(b.column("row").to_numpy(), threshold, side="right"))
            parts.append(b.slice(0, n))
            current[k] = b.slice(n) if n < b.num_rows else advance(k)
        table = pa.Table.from_batches([p for p in parts if p.num_rows])
        yield table.take(pc.sort_indices(table["row"]))


class TableWriter:
    """A parquet file written as ``pq.write_table`` writes a table, without holding it: rows are
    buffered up to a row group (1,048,576 rows, or fewer when that many would pass
    ``ROW_GROUP_BYTES`` of float32 outputs)."""

    def __init__(self, path, schema, n_outputs):
        self.writer = pq.ParquetWriter(str(path), schema)
        self.limit = max(1024, min(1 << 20, ROW_GROUP_BYTES // (4 * max(1, n_outputs))))
        self.buffer, self.rows = [], 0

    def add(self, table):
        self.buffer.append(table)
        self.rows += table.num_rows
        while self.rows >= self.limit:
            whole = pa.concat_tables(self.buffer)
            self.writer.write_table(whole.slice(0, self.limit), row_group_size=self.limit)
            rest = whole.slice(self.limit)
            self.buffer, self.rows = [rest], rest.num_rows

    def close(self):
        if self.rows:
            self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=self.limit)
        self.writer.close()


class PositionMax:
    """Per position (FASTA names), the largest ``max_abs_effect`` over its substitutions: 12 bytes a
    scored base, whatever the number of outputs."""

    def __init__(self):
        self.parts = {}

    def add(self, table):
        chroms = table["window_chrom"].to_numpy(zero_copy_only=False)
        pos, values = table["pos"].to_numpy(), table["max_abs_effect"].to_numpy()
        for chrom in dict.fromkeys(chroms):
            keep = chroms == chrom
            self.parts.setdefault(chrom, []).append(_max_by_position(pos[keep], values[keep]))

    def write(self, lengths, path):
        import pyBigWig

        bw = pyBigWig.open(str(path), "w")
        bw.addHeader([(c, int(n)) for c, n in lengths.items()])
        for chrom in (c for c in lengths if c in self.parts):
            pos, values = _max_by_position(*(np.concatenate(a) for a in zip(*self.parts[chrom])))
            starts, values = (pos - 1).astype(int).tolist(), values.astype(float).tolist()
            if np.all(np.diff(pos) == 1):
                bw.addEntries(chrom, starts, values=values, span=1, step=1)
            else:
                bw.addEntries([chrom] * len(starts), starts, ends=[s + 1 for s in starts], values=values)
        bw.close()


def _max_by_position(pos, values):
    order = np.argsort(pos, kind="stable")
    pos, values = pos[order], values[order]
    first = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
    return pos[first], np.maximum.reduceat(values, first) if len(pos) else values


def _plan_vcf_records(plan_path):
    """Per VCF record of the plan, in record order: ``dict(record, chrom, fasta, pos, id, ref, alts)``
    with ``alts`` ``[(allele, alt, reason)]``."""
    rec = None
    for batch in pq.ParquetFile(str(plan_path)).iter_batches(
            batch_size=BATCH_ROWS, columns=["record", "allele", "source", "chrom", "fasta_chrom", "pos", "id", "ref",
                                            "alt", "reason"]):
        for r in batch.to_pylist():
            if r["source"] != "vcf":
                continue
            if rec is not None and r["record"] != rec["record"]:
                yield rec
                rec = None
            if rec is None:
                rec = dict(record=r["record"], chrom=r["chrom"], fasta=r["fasta_chrom"], pos=r["pos"], id=r["id"],
                           ref=r["ref"], alts=[])
            rec["alts"].append((r["allele"], r["alt"], r["reason"]))
    if rec is not None:
        yield rec


def _annotated(plan_path, scored_path):
    """``_plan_vcf_records`` with ``values``: per ALT ``(max_abs_effect, top_feature, flags)`` or
    None when not scored. The rows of ``variants.parquet`` are the plan's alleles without a reason,
    in the same order (each checked by CHROM, POS and ALT)."""
    def scored():
        for batch in pq.ParquetFile(str(scored_path)).iter_batches(
                batch_size=BATCH_ROWS, columns=["chrom", "pos", "alt", "max_abs_effect", "top_feature", "flags"]):
            yield from zip(*(batch.column(i).to_pylist() for i in range(6)))

    rows = scored()
    for rec in _plan_vcf_records(plan_path):
        rec["values"] = []
        for _, alt, reason in rec["alts"]:
            if reason:
                rec["values"].append(None)
                continue
            row = next(rows, None)
            if row is None or row[:3] != (rec["chrom"], rec["pos"], alt):
                raise RuntimeError(f"{scored_path}: the scored rows are not the plan's (at {rec['chrom']}:{rec['pos']} "
                                   f"{alt}, found {row[:3] if row else 'no row'})")
            rec["values"].append(row[3:])
        yield rec


def _input_header(vcf):
    """The input VCF's header as htslib completes it after reading every record (contigs, INFO and
    FILTER fields used but not declared), or None when htslib refuses the file."""
    import pysam

    verbosity = pysam.set_verbosity(0)  # htslib's warnings on undeclared fields: the header is completed
    try:
        with pysam.VariantFile(str(vcf)) as fh:
            for _ in fh:
                pass
            return fh.header.copy()
    except (ValueError, OSError):
        return None
    finally:
        pysam.set_verbosity(verbosity)


def _input_lines(vcf):
    """The record lines of the VCF as written (without the line end), in the order of
    ``seqmux.variants.vcf_records``."""
    import gzip

    with open(vcf, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(vcf, "rt") as fh:
        for line in fh:
            if not line.startswith("#") and line.strip():
                yield line.rstrip("\r\n")


def _number(x):
    return "." if x is None else f"{x:g}"


def annotated_line(line, values):
    """A VCF record line with the per-ALT ``SEQMUX_*`` INFO fields of ``values`` added (QUAL,
    FILTER, the other INFO fields and the samples kept; missing columns up to INFO written ``.``)."""
    fields = line.split("\t")
    fields += ["."] * (8 - len(fields))
    info = [f for f in fields[7].split(";") if f not in ("", ".") and not f.startswith("SEQMUX_")]
    info += ["SEQMUX_MAX_ABS=" + ",".join(_number(x[0] if x else None) for x in values),
             "SEQMUX_TOP=" + ",".join(x[1] if x else "." for x in values),
             "SEQMUX_FLAGS=" + ",".join((x[2].replace(",", "|") or ".") if x else "skipped" for x in values)]
    fields[7] = ";".join(info)
    return "\t".join(fields)


def write_vcf(vcf, plan_path, scored_path, lengths, path):
    """``variants.vcf.gz`` (bgzipped, sorted by FASTA contig order and position) and its ``.tbi``:
    every input record as written (QUAL, FILTER, INFO and samples kept) with the per-ALT INFO
    fields ``SEQMUX_MAX_ABS``, ``SEQMUX_TOP`` and ``SEQMUX_FLAGS`` added (``.`` and ``skipped`` for
    an allele not scored). The header is the input's as htslib completes it (pysam), or, for a VCF
    htslib refuses (no ``##fileformat`` line, five columns), one with the contigs. Streamed when
    the input is already in that order, else sorted in memory. Returns the two temporary paths."""
    import pysam

    order = {name: i for i, name in enumerate(lengths)}
    contigs = {}
    for rec in _plan_vcf_records(plan_path):
        contigs.setdefault(rec["chrom"], rec["fasta"])
    header = _input_header(vcf)
    if header is None:
        header = pysam.VariantHeader()
        header.add_line('##INFO=<ID=END,Number=1,Type=Integer,Description="End position (symbolic alleles)">')
    for chrom in sorted(set(contigs) - set(header.contigs), key=lambda c: (order[contigs[c]], c)):
        header.add_line(f"##contig=<ID={chrom},length={lengths[contigs[chrom]]}>")
    for line in INFO_LINES:
        if line.split(",")[0].split("=")[-1] not in header.info:
            header.add_line(line)

    def key(rec):
        return order[rec["fasta"]], rec["chrom"], rec["pos"]

    keys = (key(r) for r in _plan_vcf_records(plan_path))
    ordered = all(a <= b for a, b in _pairs(next(keys, None), keys))
    records = ((key(rec), annotated_line(line, rec["values"]))
               for rec, line in zip(_annotated(plan_path, scored_path), _input_lines(vcf)))
    if not ordered:
        records = sorted(records, key=lambda r: r[0])
    tmp = Path(str(path) + ".part.vcf.gz")
    try:
        with pysam.BGZFile(str(tmp), "wb") as out:
            out.write(_contig_lengths(str(header), contigs, lengths).encode())
            for _, line in records:
                out.write((line + "\n").encode())
        pysam.tabix_index(str(tmp), preset="vcf", force=True)
    except BaseException:
        for p in (tmp, Path(str(tmp) + ".tbi")):
            p.unlink(missing_ok=True)
        raise
    return tmp, Path(str(tmp) + ".tbi")


def _contig_lengths(text, contigs, lengths):
    """Header text with a length on each ``##contig`` line of the VCF's contigs that has none (the
    lines htslib adds for contigs used but not declared)."""
    def fill(m):
        chrom = m.group(1)
        return f"##contig=<ID={chrom},length={lengths[contigs[chrom]]}>" if chrom in contigs else m.group(0)

    return re.sub(r"^##contig=<ID=([^,>]+)>$", fill, text, flags=re.M)


def _pairs(first, rest):
    prev = first
    for item in rest:
        yield prev, item
        prev = item


def _write_skipped(plan_path, path):
    """``skipped.tsv`` from the plan, streamed; ``(count, Counter of reasons)``."""
    reasons, count = Counter(), 0
    with open(path, "w") as fh:
        for i, batch in enumerate(pq.ParquetFile(str(plan_path)).iter_batches(batch_size=BATCH_ROWS)):
            table = pa.Table.from_batches([batch])
            table = table.filter(pc.not_equal(table["reason"], ""))
            if i == 0 or table.num_rows:
                table.select(["chrom", "pos", "id", "ref", "alt", "reason"]).to_pandas().to_csv(
                    fh, sep="\t", index=False, header=i == 0)
            reasons.update(r.split(":")[0] for r in table["reason"].to_pylist())
            count += table.num_rows
    return count, reasons


def gather(genome, plan_path, plan_info, shard_tables, shard_infos, outdir, engine="multiplexer", strand="forward",
           model_file="", mode="logfold"):
    """Stage: the outputs of the module docstring under ``outdir`` (each written atomically)."""
    from ..genome import chromosome_lengths, open_fasta

    outdir = Path(outdir)
    info = json.loads(Path(plan_info).read_text())
    lengths = chromosome_lengths(open_fasta(genome))
    stats = [json.loads(Path(p).read_text()) for p in shard_infos]
    names = stats[0]["names"] if stats else []
    with contextlib.ExitStack() as files:
        out, writers, scored_variants = {}, {}, 0
        positions = PositionMax()
        if info["vcf"]:
            out["parquet"] = files.enter_context(atomic_path(outdir / "variants.parquet"))
        try:
            for table in merged_shards(shard_tables):
                is_vcf = pc.equal(table["source"], "vcf")
                variants = table.filter(is_vcf).select(PUBLISHED + names)
                if variants.num_rows:
                    if ("vcf",) not in writers:
                        writers[("vcf",)] = TableWriter(out["parquet"], variants.schema, len(names))
                    writers[("vcf",)].add(variants)
                    scored_variants += variants.num_rows
                maps = table.filter(pc.invert(is_vcf))
                if maps.num_rows:
                    positions.add(maps)
                for name in dict.fromkeys(maps["source"].to_pylist()):
                    part = maps.filter(pc.equal(maps["source"], name)).select(PUBLISHED + names)
                    if ("map", name) not in writers:
                        tmp = files.enter_context(atomic_path(outdir / "maps" / f"{name}.parquet"))
                        writers[("map", name)] = TableWriter(tmp, part.schema, len(names))
                    writers[("map", name)].add(part)
        finally:
            for writer in writers.values():
                writer.close()
        if info["vcf"]:
            if ("vcf",) not in writers:  # nothing scored: the columns only
                pq.write_table(pa.table({n: pa.array([], pa.float32() if n in names or n == "max_abs_effect" else
                                                     pa.int64() if n in ("pos", "window_start", "window_end")
                                                     else pa.string()) for n in PUBLISHED + names}),
                               str(out["parquet"]))
            vcf_tmp, tbi_tmp = write_vcf(info["vcf"], plan_path, out["parquet"], lengths, outdir / "variants.vcf.gz")
            files.callback(lambda: [p.unlink() for p in (vcf_tmp, tbi_tmp) if p.exists()])  # after an error
            out["skipped"] = files.enter_context(atomic_path(outdir / "skipped.tsv"))
        n_skipped, reasons = _write_skipped(plan_path, out.get("skipped", os.devnull))
        if info["regions"]:
            bw_tmp = files.enter_context(atomic_path(outdir / "maps" / "max_abs_effect.bw"))
            positions.write(lengths, bw_tmp)
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
        counts = dict(info["counts"], scored=rows, scored_variants=scored_variants, skipped=n_skipped,
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
    log.info("gathered %d scored alleles (%d skipped) from %d shards in %s", rows, n_skipped, len(stats), outdir)
    return summary
