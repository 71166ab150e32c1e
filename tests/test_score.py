"""Scoring at genome scale (seqmux.score, rules/score.smk): every exact score against an independent
computation (the base model on the stated window, in float64, by plain forward passes), the
workflow stage with both engines and both strands, resume, and bad input."""

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import ROUNDING_FACTOR, TINY, deep_update, float32_rounding, planned_jobs, run_workflow
from seqmux.encoding import one_hot, tokenize
from seqmux.errors import InputError
from seqmux.models import load_model
from seqmux.score.gather import gather
from seqmux.score.plan import make_plan
from seqmux.score.shard import run_shard

L = 400
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
PUBLISHED = ["chrom", "pos", "id", "ref", "alt", "window_chrom", "window_start", "window_end", "flags",
             "max_abs_effect", "top_feature"]


@pytest.fixture(scope="module")
def genome(demo_dir, tmp_path_factory):
    """Two chromosomes of the demo genome with their N's replaced by seeded random bases (so that a
    variant 10 bp from a chromosome end has a real base), the planted motif sites and the model."""
    from seqmux.genome import open_fasta

    d = tmp_path_factory.mktemp("score_genome")
    fasta = open_fasta(demo_dir / "genome.fa")
    rng = np.random.default_rng(0)
    seqs = {}
    with open(d / "genome.fa", "w") as fh:
        for name in ("chr1", "chr2"):
            s = np.frombuffer(fasta[name][:].upper().encode(), dtype="S1").copy()
            n = s == b"N"
            s[n] = rng.choice(np.array([b"A", b"C", b"G", b"T"]), int(n.sum()))
            seqs[name] = s.tobytes().decode()
            fh.write(f">{name}\n" + "\n".join(seqs[name][i:i + 60] for i in range(0, len(seqs[name]), 60)) + "\n")
    sites = pd.read_csv(demo_dir / "sites.bed", sep="\t", header=None)
    return dict(fasta=d / "genome.fa", seqs=seqs, sites=sites, model=demo_dir / "model.pt",
                names=demo_dir / "names.txt")


def other(base, k=1):
    return "ACGT"[("ACGT".index(base) + k) % 4]


def site_position(genome, chrom, k):
    """A 1-based position in the middle of the k-th planted motif site of ``chrom``."""
    rows = genome["sites"][genome["sites"][0] == chrom]
    start, end = rows.iloc[k, 1], rows.iloc[k, 2]
    return int((start + end) // 2) + 1


def write_vcf(genome, path):
    s1, s2 = genome["seqs"]["chr1"], genome["seqs"]["chr2"]
    n1 = len(s1)
    p_shared = site_position(genome, "chr2", 40)
    p_shared -= (p_shared - 1) % 100 - 20   # 0-based offset 20 in its 100 bp tile: the next one shares it
    p_multi = site_position(genome, "chr2", 60)
    p_swap = site_position(genome, "chr1", 30)
    p_del = site_position(genome, "chr1", 50)
    p_ins = site_position(genome, "chr2", 80)
    p_bad = site_position(genome, "chr1", 70)
    records = [
        ("chr1", 10, "start", s1[9], other(s1[9])),                          # 10 bp from the chromosome start
        ("chr1", n1 - 9, "end", s1[n1 - 10], other(s1[n1 - 10], 2)),          # 10 bp from its end
        ("chr1", p_swap, "swap", other(s1[p_swap - 1]), s1[p_swap - 1]),    # REF and ALT swapped
        ("chr1", p_del, "del", s1[p_del - 1:p_del + 4], s1[p_del - 1]),      # a 4 bp deletion
        ("chr1", p_bad, "bad", other(s1[p_bad - 1]), other(s1[p_bad - 1], 2)),  # REF mismatch
        ("2", p_shared, "shared1", s2[p_shared - 1], other(s2[p_shared - 1])),  # contig without chr
        ("2", p_shared + 30, "shared2", s2[p_shared + 29], other(s2[p_shared + 29], 3)),
        ("chr2", p_multi, "multi", s2[p_multi - 1], f"{other(s2[p_multi - 1])},{other(s2[p_multi - 1], 2)}"),
        ("chr2", p_ins, "ins", s2[p_ins - 1], s2[p_ins - 1] + "GATTACA"),  # a 7 bp insertion
        ("chr2", p_ins + 200, "sym", s2[p_ins + 199], "<DEL>"),
    ]
    text = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    text += "".join(f"{c}\t{p}\t{i}\t{r}\t{a}\t.\t.\t.\n" for c, p, i, r, a in records)
    path.write_text(text)
    return records


def window_of(seq, start, length=L):
    """``seq[start:start + length]`` with N outside the chromosome."""
    left = "N" * max(0, -start)
    right = "N" * max(0, start + length - len(seq))
    return (left + seq[max(0, start):max(0, start + length)] + right)[:length]


def outputs64(model, windows):
    """The base model's outputs on DNA strings, in float64."""
    x = torch.from_numpy(one_hot(np.stack([tokenize(w) for w in windows]))).double()
    with torch.no_grad():
        return model(x).numpy()


def logfold(alt, ref, eps=1e-6):
    return np.log((alt + eps) * (1 - ref + eps) / ((1 - alt + eps) * (ref + eps)))


def independent_effect(model, ref_window, alt_window, strand):
    pairs = [(ref_window, alt_window)]
    if strand == "both":
        pairs.append((ref_window.translate(COMPLEMENT)[::-1], alt_window.translate(COMPLEMENT)[::-1]))
    out = outputs64(model, [w for pair in pairs for w in pair])
    return np.mean([logfold(out[2 * i + 1], out[2 * i]) for i in range(len(pairs))], axis=0)


def expected_row(model, genome, row, strand):
    """The effect of one output row computed from the row's stated window and the genome alone."""
    seq = genome["seqs"][row["window_chrom"]]
    start = row["window_start"]
    p0 = row["pos"] - 1
    flipped = "flipped" in row["flags"].split(",")
    ref, alt = row["ref"].upper(), row["alt"].upper()
    if flipped:
        ref, alt = alt, ref   # the genome has ALT: the effect is minus that of putting REF there
    ref_window = window_of(seq, start)
    if len(ref) == len(alt) == 1:
        assert ref_window[p0 - start] == ref
        alt_window = ref_window[:p0 - start] + alt + ref_window[p0 - start + 1:]
    else:  # the convention of docs/scoring.md: each window centred on its allele, length kept by the flanks
        assert start == p0 + (len(ref) - 1) // 2 - (L - 1) // 2
        edited = seq[:p0] + alt + seq[p0 + len(ref):]
        alt_window = window_of(edited, p0 + (len(alt) - 1) // 2 - (L - 1) // 2)
    padded = start < 0 or start + L > len(seq)
    assert padded == ("n_padded" in row["flags"].split(","))
    effect = independent_effect(model, ref_window, alt_window, strand)
    return -effect if flipped else effect


def run_in_process(genome, tmp_path, vcf, engine="exact", strand="forward", shards=2, **plan):
    base = dict(kind="demo", weights=str(genome["model"]), module="", names=str(genome["names"]), **{"class": ""})
    make_plan(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", vcf=vcf, length=L, stride=100,
              engine=engine, n_shards=shards, **plan)
    tables = [tmp_path / f"{s}.parquet" for s in range(shards)]
    infos = [tmp_path / f"{s}.json" for s in range(shards)]
    for s in range(shards):
        run_shard(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", tables[s], infos[s], s,
                  engine=engine, strand=strand, base_model=base, device="cpu", batch_size=64)
    return gather(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", tables, infos,
                  tmp_path / "out", engine=engine, strand=strand, model_file=genome["model"])


@pytest.mark.parametrize("strand", ["forward", "both"])
def test_every_exact_score_matches_an_independent_computation(genome, tmp_path, strand):
    import pysam

    records = write_vcf(genome, tmp_path / "calls.vcf")
    summary = run_in_process(genome, tmp_path, tmp_path / "calls.vcf", strand=strand)
    table = pd.read_parquet(tmp_path / "out/variants.parquet")
    names = [n.strip() for n in open(genome["names"]) if n.strip()]
    assert list(table.columns) == PUBLISHED + names
    assert all(table[n].dtype == np.float32 for n in names)
    # every allele but the mismatch and the symbolic one: the multi-allelic record split in two
    assert list(table["id"]) == ["start", "end", "swap", "del", "shared1", "shared2", "multi", "multi", "ins"]
    assert list(table["chrom"][table["id"].str.startswith("shared")]) == ["2", "2"]
    assert set(table["window_chrom"]) == {"chr1", "chr2"}
    by_id = table.set_index("id")
    assert by_id.loc["start", "flags"] == "n_padded" and by_id.loc["end", "flags"] == "n_padded"
    assert by_id.loc["swap", "flags"] == "flipped"
    assert by_id.loc["shared1", "window_start"] == by_id.loc["shared2", "window_start"]   # one window
    assert summary["counts"]["windows"] < len(table) + 2  # shared tiles: fewer windows than alleles + indels

    model = load_model(genome["model"]).double().eval()
    got = table[names].to_numpy()
    want = np.stack([expected_row(model, genome, row, strand) for row in table.to_dict("records")])
    model32 = load_model(genome["model"]).eval()
    windows = [window_of(genome["seqs"][r["window_chrom"]], r["window_start"]) for r in table.to_dict("records")]
    tol = ROUNDING_FACTOR * float32_rounding(model32, one_hot(np.stack([tokenize(w) for w in windows])))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    assert np.abs(want).max() > 100 * tol   # effects, not zeros: the comparison can fail
    np.testing.assert_allclose(table["max_abs_effect"], np.abs(got).max(1))
    assert list(table["top_feature"]) == [names[i] for i in np.abs(got).argmax(1)]

    skipped = pd.read_csv(tmp_path / "out/skipped.tsv", sep="\t")
    assert list(skipped["id"]) == ["bad", "sym"]
    assert skipped["reason"].iloc[0].startswith("REF mismatch") and "symbolic" in skipped["reason"].iloc[1]
    assert summary["counts"]["flipped"] == 1 and summary["counts"]["n_padded"] == 2
    assert summary["counts"]["skipped_by_reason"] == {"REF mismatch": 1, "symbolic ALT allele": 1}

    vcf = list(pysam.VariantFile(str(tmp_path / "out/variants.vcf.gz")))
    assert len(vcf) == len(records)
    assert (tmp_path / "out/variants.vcf.gz.tbi").is_file()
    multi = next(r for r in vcf if r.id == "multi")
    np.testing.assert_allclose(multi.info["SEQMUX_MAX_ABS"], by_id.loc["multi", "max_abs_effect"], rtol=1e-5)
    assert next(r for r in vcf if r.id == "bad").info["SEQMUX_FLAGS"] == ("skipped",)


def test_multiplexer_engine_skips_indels_and_reports_agreement(genome, tmp_path):
    """An untrained Multiplexer of the right shape: indels skipped with a reason; the accuracy flag
    scores the sampled windows exactly too."""
    from seqmux.multiplexer import build_multiplexer, save_multiplexer

    names = [n.strip() for n in open(genome["names"]) if n.strip()]
    torch.manual_seed(0)
    save_multiplexer(build_multiplexer("demo", L, len(names), dict(widths=[8, 8], dilations=[1, 2], kernel=4,
                                                                   head_hidden=8, ramp="tent")),
                     tmp_path / "mux.pt", names, "logfold")
    write_vcf(genome, tmp_path / "calls.vcf")
    base = dict(kind="demo", weights=str(genome["model"]), module="", names=str(genome["names"]), **{"class": ""})
    make_plan(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", vcf=tmp_path / "calls.vcf",
              length=L, stride=100, engine="multiplexer", n_shards=1, accuracy_windows=3)
    run_shard(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", tmp_path / "0.parquet",
              tmp_path / "0.json", 0, engine="multiplexer", strand="both", base_model=base,
              model_path=tmp_path / "mux.pt", device="cpu")
    summary = gather(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", [tmp_path / "0.parquet"],
                     [tmp_path / "0.json"], tmp_path / "out", engine="multiplexer", strand="both",
                     model_file=tmp_path / "mux.pt")
    skipped = pd.read_csv(tmp_path / "out/skipped.tsv", sep="\t")
    assert set(skipped["id"]) == {"bad", "sym", "del", "ins"}
    assert skipped.set_index("id").loc["del", "reason"].startswith("indel or MNV: the multiplexer engine")
    assert summary["accuracy"]["windows"] == 3
    assert -1 <= summary["accuracy"]["weighted_pearson_mean"] <= 1


def test_ref_mismatch_diagnosis(genome, tmp_path):
    """Too many mismatches stop the plan with the likely cause, nothing written: another build when
    the alleles do not match either way, swapped alleles when they match once swapped."""
    seq = genome["seqs"]["chr1"]
    positions = range(6000, 36000, 1000)
    wrong = "".join(f"chr1\t{p}\t.\t{other(seq[p - 1])}\t{other(seq[p - 1], 2)}\n" for p in positions)
    swapped = "".join(f"chr1\t{p}\t.\t{other(seq[p - 1])}\t{seq[p - 1]}\n" for p in positions)
    for text, cause in ((wrong, "another genome build"), (swapped, "the alleles are swapped")):
        (tmp_path / "v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + text)
        with pytest.raises(InputError, match=cause):
            make_plan(genome["fasta"], tmp_path / "plan.parquet", tmp_path / "plan.json", vcf=tmp_path / "v.vcf",
                      length=L, stride=100, engine="exact")
        assert not (tmp_path / "plan.parquet").exists() and not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("content, fragment", [
    ("chrZ\t100\t.\tA\tC\n", "CHROM='chrZ': contig not in the FASTA, also not as Z"),
    ("chr1\tx\t.\tA\tC\n", "POS='x': not an integer"),
])
def test_bad_vcf(genome, tmp_path, content, fragment):
    (tmp_path / "v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + content)
    with pytest.raises(InputError, match=fragment):
        make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", vcf=tmp_path / "v.vcf", length=L)
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("bed, fragment", [
    ("chr1\t100\t100\n", "end=100: BED end must be greater than start"),
    ("chr1\t100\t99999999\n", "end=99999999: beyond the end of chr1"),
    ("4\t1\t10\n", "chrom='4': contig not in the FASTA"),
])
def test_bad_regions(genome, tmp_path, bed, fragment):
    (tmp_path / "r.bed").write_text(bed)
    with pytest.raises(InputError, match=fragment):
        make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", regions=tmp_path / "r.bed", length=L)


def test_more_shards_than_windows(genome, tmp_path):
    seq = genome["seqs"]["chr1"]
    (tmp_path / "v.vcf").write_text(f"#CHROM\tPOS\tID\tREF\tALT\nchr1\t5000\t.\t{seq[4999]}\t{other(seq[4999])}\n")
    with pytest.raises(InputError, match="score.shards=3: more shards than the 1 windows"):
        make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", vcf=tmp_path / "v.vcf", length=L,
                  n_shards=3)


def test_regions_map_and_bigwig(genome, tmp_path):
    """Every SNV of the regions, in a map per region, and a bigWig of the largest |effect| per base."""
    import pyBigWig

    (tmp_path / "r.bed").write_text("chr1\t5000\t5150\tfirst\nchr2\t7000\t7040\n")
    base = dict(kind="demo", weights=str(genome["model"]), module="", names=str(genome["names"]), **{"class": ""})
    make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", regions=tmp_path / "r.bed", length=L,
              engine="exact", stride=100)
    run_shard(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", tmp_path / "0.parquet", tmp_path / "0.json",
              0, engine="exact", base_model=base, device="cpu")
    gather(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", [tmp_path / "0.parquet"],
           [tmp_path / "0.json"], tmp_path / "out", engine="exact", model_file=genome["model"])
    first = pd.read_parquet(tmp_path / "out/maps/first.parquet")
    assert len(first) == 3 * 150 and sorted(set(first["pos"])) == list(range(5001, 5151))
    second = pd.read_parquet(tmp_path / "out/maps/chr2_7000_7040.parquet")
    assert len(second) == 3 * 40
    bw = pyBigWig.open(str(tmp_path / "out/maps/max_abs_effect.bw"))
    values = np.array(bw.values("chr1", 5000, 5150))
    np.testing.assert_allclose(values, first.groupby("pos")["max_abs_effect"].max().to_numpy(), rtol=1e-6)


def test_annotated_vcf_keeps_every_input_field(genome, tmp_path):
    """The annotated VCF is the input's records as written (QUAL, FILTER, INFO, samples) with the
    SEQMUX_* INFO fields added; a hand-made VCF that htslib refuses (five columns, no
    ##fileformat) gets them too."""
    import pysam

    seq = genome["seqs"]["chr1"]
    head = ["##fileformat=VCFv4.2", '##INFO=<ID=DP,Number=1,Type=Integer,Description="depth">',
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="genotype">',
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1"]
    body = [f"chr1\t{p}\tv{p}\t{seq[p - 1]}\t{other(seq[p - 1])}\t{p % 50 + 1}\tPASS\tDP={p % 7};XX\tGT\t0/1"
            for p in (5000, 5030, 9000)]
    body.append(f"chr1\t9100\tbad\t{other(seq[9099])}\t{other(seq[9099], 2)}\t.\tlow\t.\tGT\t1/1")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/v.vcf").write_text("\n".join(head + body) + "\n")
    run_in_process(genome, tmp_path / "full", tmp_path / "full/v.vcf", shards=1)
    table = pd.read_parquet(tmp_path / "full/out/variants.parquet").set_index("id")
    records = list(pysam.VariantFile(str(tmp_path / "full/out/variants.vcf.gz")))
    assert [r.id for r in records] == ["v5000", "v5030", "v9000", "bad"]
    assert [r.qual for r in records] == [1, 31, 1, None]
    assert [list(r.filter) for r in records] == [["PASS"]] * 3 + [["low"]]
    assert [r.info.get("DP") for r in records] == [2, 4, 5, None] and all("XX" in r.info for r in records[:3])
    assert [r.samples["s1"]["GT"] for r in records] == [(0, 1)] * 3 + [(1, 1)]
    for r in records[:3]:
        np.testing.assert_allclose(r.info["SEQMUX_MAX_ABS"], table.loc[r.id, "max_abs_effect"], rtol=1e-5)
        assert r.info["SEQMUX_TOP"] == (table.loc[r.id, "top_feature"],)
    assert records[3].info["SEQMUX_FLAGS"] == ("skipped",)
    (tmp_path / "hand").mkdir()
    (tmp_path / "hand/v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + "".join(
        "\t".join(line.split("\t")[:5]) + "\n" for line in body))
    run_in_process(genome, tmp_path / "hand", tmp_path / "hand/v.vcf", shards=1)
    hand = list(pysam.VariantFile(str(tmp_path / "hand/out/variants.vcf.gz")))
    assert [r.id for r in hand] == ["v5000", "v5030", "v9000", "bad"] and hand[0].qual is None
    assert [r.info["SEQMUX_MAX_ABS"] for r in hand[:3]] == [r.info["SEQMUX_MAX_ABS"] for r in records[:3]]


def test_gather_streams_the_shards(genome, tmp_path, monkeypatch):
    """The gather merges the shards (each in plan order) a batch at a time: gathering 7x more
    variants peaks at about the same memory, and the outputs
    are in VCF order whatever the shard of each row."""
    import tracemalloc

    import seqmux.score.gather as gather_module
    import seqmux.score.shard as shard_module
    from seqmux.genome import open_fasta
    from seqmux.score.shard import ShardScorer, score_plan_rows

    class Effects:  # the engine's interface, without a model: each row's effect is its position
        def windows(self, items):
            return [np.repeat(np.asarray(o, np.float32)[:, None], 6, 1) for _, o, _ in items]

    monkeypatch.setattr(shard_module, "WRITE_ROWS", 512)
    monkeypatch.setattr(gather_module, "BATCH_ROWS", 512)
    monkeypatch.setattr(gather_module, "ROW_GROUP_BYTES", 1024 * 4 * 6)  # row groups of 1,024 rows
    peaks = []
    for sites in ([("chr1", p) for p in range(5000, 15000, 20)],  # 500 variants, then 14x more
                  [(c, p) for c in ("chr1", "chr2") for p in range(2000, 37000, 10)]):
        (tmp_path / "v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + "".join(
            f"{c}\t{p}\t.\t{genome['seqs'][c][p - 1]}\t{other(genome['seqs'][c][p - 1])}\n" for c, p in sites))
        make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", vcf=tmp_path / "v.vcf", length=L,
                  stride=100, engine="exact", n_shards=3)
        for s in range(3):
            scorer = ShardScorer(open_fasta(genome["fasta"]), Effects(), [f"o{i}" for i in range(6)], L,
                                 tmp_path / f"{s}.parquet", window_batch=8)
            score_plan_rows(tmp_path / "p.parquet", s, scorer, rows_per_batch=1024)
            scorer.close()
            (tmp_path / f"{s}.json").write_text(json.dumps(dict(
                scorer.stats, seconds=1.0, names=scorer.names, accuracy_sums=scorer.sums.tolist())))
        tracemalloc.start()
        gather(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json",
               [tmp_path / f"{s}.parquet" for s in range(3)], [tmp_path / f"{s}.json" for s in range(3)],
               tmp_path / "out", engine="exact")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        table = pd.read_parquet(tmp_path / "out/variants.parquet")
        assert list(zip(table["chrom"], table["pos"])) == sites
        np.testing.assert_array_equal(table["o0"], table["pos"] - 1 - table["window_start"])
        assert pq.read_metadata(tmp_path / "out/variants.parquet").num_row_groups == -(-len(sites) // 1024)
    assert peaks[1] < 1.5 * peaks[0], peaks


# --- the workflow stage -------------------------------------------------------------------------


def workflow_vcf(run_dir, path):
    """A VCF on the tiny run's demo genome: SNVs in planted motif sites (some sharing a tile), a
    contig without chr, a multi-allelic record, an indel."""
    from seqmux.genome import open_fasta

    fasta = open_fasta(run_dir / "resources/demo/genome.fa")
    sites = pd.read_csv(run_dir / "resources/demo/motif_sites.bed", sep="\t", header=None)
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for k, (chrom, start) in enumerate(zip(sites[0][::40], sites[1][::40])):
        pos = int(start) + 3
        base = fasta[chrom][pos - 1].upper()
        if base == "N":
            continue
        name = chrom if k % 3 else chrom[3:]
        lines.append(f"{name}\t{pos}\tv{k}\t{base}\t{other(base)},{other(base, 2)}\t.\t.\t.")
        nxt = fasta[chrom][pos + 4].upper()
        if nxt != "N":
            lines.append(f"{name}\t{pos + 5}\tw{k}\t{nxt}\t{other(nxt)}\t.\t.\t.")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def score_run(tiny_run, tmp_path_factory):
    """The tiny run with a VCF scored by the workflow's Multiplexer on both strands."""
    d = tmp_path_factory.mktemp("score_run")
    shutil.copytree(tiny_run, d, symlinks=True, dirs_exist_ok=True)
    workflow_vcf(d, d / "calls.vcf")
    config = deep_update(TINY, {"score": {"vcf": str(d / "calls.vcf"), "strand": "both", "shards": 2,
                                          "accuracy_windows": 2, "device": "cpu"}})
    result = run_workflow(d, config, "score")
    assert result.returncode == 0, result.stderr[-3000:]
    return d, config


def test_workflow_scores_a_vcf_with_the_multiplexer_on_both_strands(score_run):
    from seqmux.genome import open_fasta
    from seqmux.multiplexer import load_multiplexer

    d, _ = score_run
    table = pq.read_table(d / "results/score/variants.parquet").to_pandas()
    model, info = load_multiplexer(d / "results/multiplexer/model.pt")
    assert list(table.columns) == PUBLISHED + info["output_names"]
    fasta = open_fasta(d / "resources/demo/genome.fa")
    for row in table.to_dict("records")[:12]:
        seq = fasta[row["window_chrom"]][:]
        w = window_of(seq.upper(), row["window_start"])
        rc = w.translate(COMPLEMENT)[::-1]
        x = torch.from_numpy(one_hot(np.stack([tokenize(w), tokenize(rc)])))
        with torch.no_grad():
            maps = model(x).numpy()
        o, b = row["pos"] - 1 - row["window_start"], "AGCT".index(row["alt"])
        want = (maps[0][:, b, o] + maps[1][:, 3 - b, L - 1 - o]) / 2
        np.testing.assert_allclose([row[n] for n in info["output_names"]], want, rtol=1e-5, atol=1e-6)
    summary = json.loads((d / "results/score/summary.json").read_text())
    assert summary["engine"] == "multiplexer" and summary["strand"] == "both"
    assert summary["accuracy"]["windows"] == 2
    assert summary["counts"]["scored"] == len(table) and summary["counts"]["windows"] < len(table)
    with gzip.open(d / "results/score/variants.vcf.gz", "rt") as fh:
        assert "SEQMUX_MAX_ABS" in fh.read()


def planned(workdir, config):
    """``{rule: job count}`` a dry run of ``score`` would run."""
    return planned_jobs(workdir, config, "score")


def test_killed_shard_reruns_alone_and_execution_settings_plan_nothing(score_run):
    """A run killed while shard 0001 ran (its outputs and the gathered ones absent; the plan and
    shard 0000 done) reruns that shard and the gather only; a finished run plans nothing, also
    after the execution settings changed."""
    d, config = score_run
    assert planned(d, config) == {}
    changed = deep_update(config, {"score": {"device": "auto", "batch_size": 7, "window_batch": 3, "threads": 2}})
    assert planned(d, changed) == {}
    before = (d / "results/score/shards/0000.parquet").stat().st_mtime_ns
    for name in ("shards/0001.parquet", "shards/0001.json", "summary.json", "variants.parquet", "variants.vcf.gz",
                 "variants.vcf.gz.tbi", "skipped.tsv"):
        (d / "results/score" / name).unlink()
    assert planned(d, config) == {"score_shard": 1, "score_gather": 1, "score": 1}
    result = run_workflow(d, changed, "score")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (d / "results/score/shards/0000.parquet").stat().st_mtime_ns == before
    assert (d / "results/score/summary.json").is_file()


def test_workflow_exact_engine_forward(score_run):
    d, config = score_run
    exact = deep_update(config, {"score": {"engine": "exact", "strand": "forward"}})
    result = run_workflow(d, exact, "score")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((d / "results/score/summary.json").read_text())
    assert summary["engine"] == "exact" and summary["strand"] == "forward" and summary["accuracy"] is None


def test_cli_score_is_the_same_engine(genome, tmp_path):
    """``seqmux score`` (one shard in the foreground) writes what the stage's functions write."""
    import subprocess
    import sys

    write_vcf(genome, tmp_path / "calls.vcf")
    (tmp_path / "stage").mkdir()
    run_in_process(genome, tmp_path / "stage", tmp_path / "calls.vcf", strand="both", shards=1)
    res = subprocess.run([sys.executable, "-m", "seqmux.cli", "score", "--vcf", str(tmp_path / "calls.vcf"),
                          "--engine", "exact", "--weights", str(genome["model"]), "--names", str(genome["names"]),
                          "--genome", str(genome["fasta"]), "--strand", "both", "--stride", "100", "--batch-size", "64",
                          "--threads", "1", "--output", str(tmp_path / "cli")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    cli = pd.read_parquet(tmp_path / "cli/variants.parquet")
    stage = pd.read_parquet(tmp_path / "stage/out/variants.parquet")
    pd.testing.assert_frame_equal(cli, stage, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "cli/variants.vcf.gz.tbi").is_file() and (tmp_path / "cli/summary.json").is_file()


def test_multiplexer_of_another_length_or_base_model_is_refused(genome, tmp_path):
    from seqmux.multiplexer import build_multiplexer, save_multiplexer
    from seqmux.score.shard import load_scorers

    names = [n.strip() for n in open(genome["names"]) if n.strip()]
    sizes = dict(widths=[8], dilations=[1], kernel=4, head_hidden=8, ramp="tent")
    base = dict(kind="demo", weights=str(genome["model"]), module="", names=str(genome["names"]), **{"class": ""})
    save_multiplexer(build_multiplexer("demo", 300, len(names), sizes), tmp_path / "short.pt", names, "logfold")
    with pytest.raises(InputError, match="short.pt: score.model=.*takes 300 bp windows, not windows.length=400"):
        load_scorers("multiplexer", "forward", base, tmp_path / "short.pt", L, "logfold", "cpu", 64, 8, True)
    other_names = [f"x{i}" for i in range(len(names))]
    save_multiplexer(build_multiplexer("demo", L, len(names), sizes), tmp_path / "other.pt", other_names, "logfold")
    with pytest.raises(InputError, match="trained for another base model's outputs"):
        load_scorers("multiplexer", "forward", base, tmp_path / "other.pt", L, "logfold", "cpu", 64, 8, True)
    with pytest.raises(InputError, match="model file not found"):
        load_scorers("multiplexer", "forward", base, tmp_path / "none.pt", L, "logfold", "cpu", 64, 8, False)


def test_not_a_vcf(genome, tmp_path):
    (tmp_path / "v.vcf").write_text("this is not\na VCF\n")
    with pytest.raises(InputError, match="v.vcf:1: score.vcf=.*a record before the #CHROM header line"):
        make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", vcf=tmp_path / "v.vcf", length=L)
    assert not (tmp_path / "p.parquet").exists()


def test_shard_memory_does_not_grow_with_the_input(genome, tmp_path, monkeypatch):
    """A shard streams the plan: scoring 10x more rows (every SNV of 4 kb, then of 40 kb) peaks at
    about the same memory (one plan row group, one batch of windows, one output buffer)."""
    import tracemalloc

    import seqmux.score.shard as shard_module
    from seqmux.genome import open_fasta
    from seqmux.score.shard import ShardScorer, score_plan_rows

    class Zeros:  # the engine's interface, without a model: the memory of the streaming alone
        def windows(self, items):
            return [np.zeros((len(o), 6), np.float32) for _, o, _ in items]

    monkeypatch.setattr(shard_module, "WRITE_ROWS", 2048)
    peaks = []
    for size in (4_000, 40_000 - 11_000):
        (tmp_path / "r.bed").write_text(f"chr1\t5000\t{5000 + size}\n")
        make_plan(genome["fasta"], tmp_path / "p.parquet", tmp_path / "p.json", regions=tmp_path / "r.bed",
                  length=L, stride=100)
        scorer = ShardScorer(open_fasta(genome["fasta"]), Zeros(), [f"o{i}" for i in range(6)], L,
                             tmp_path / "s.parquet", window_batch=8)
        tracemalloc.start()
        score_plan_rows(tmp_path / "p.parquet", 0, scorer, rows_per_batch=4096)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        scorer.close()
        assert pq.read_metadata(tmp_path / "s.parquet").num_rows == 3 * size
    assert peaks[1] < 1.5 * peaks[0], peaks
