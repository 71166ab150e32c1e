"""The ``seqmux`` command end to end on a small demo genome and demo base model (built directly
with package functions, no Snakemake), run as a subprocess the way a user runs it."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import UNUSABLE_MODELS
from seqmux.encoding import tokenize
from seqmux.genome import build_demo_genome, open_fasta
from seqmux.heatmap import window_matrix
from seqmux.ism import one_cpu_thread, window_targets
from seqmux.models import load_model
from seqmux.predict import unique_names
from seqmux.score.plan import tile_start
from seqmux.variants import read_vcf, substitutions
from seqmux.windows import window_bounds

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 320  # about the shortest window the demo architecture takes
N_OUTPUTS = 6
CHROM_LENGTH = 30_000
BASES = "AGCT"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A two-chromosome demo genome, its demo base model, and the model's output names."""
    from seqmux.models import write_demo_model

    d = tmp_path_factory.mktemp("demo")
    build_demo_genome(d / "genome.fa", d / "sites.bed", d / "motifs.json",
                      {"chr1": CHROM_LENGTH, "chr2": CHROM_LENGTH}, seed=3, n_motifs=6)
    write_demo_model(d / "genome.fa", d / "motifs.json", d / "base_model.pt", d / "output_names.txt", LENGTH,
                     N_OUTPUTS, 3, (24, 32, 32), 32, n_calibration=16)
    fasta = open_fasta(d / "genome.fa")
    seq = fasta["chr1"][:].upper()
    first_base = len(seq) - len(seq.lstrip("N"))  # end of the leading N block
    names = (d / "output_names.txt").read_text().split()
    return dict(dir=d, genome=str(d / "genome.fa"), model=str(d / "base_model.pt"), fasta=fasta, names=names,
                first_base=first_base)


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "seqmux.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def genome_base(fasta, chrom, pos):
    """Upper-case base at 1-based ``pos`` (N for any non-ACGT code)."""
    base = fasta[chrom][pos - 1:pos].upper()
    return base if base in BASES else "N"


def one_thread_targets(model, tokens, offsets, alts):
    """``window_targets`` on one CPU thread, as the CLI runs with ``--threads 1`` (the last bits of a
    matrix product depend on how its sums are split between threads)."""
    with one_cpu_thread():
        return window_targets(model, tokens, offsets, alts)[1]


def assert_same_effects(actual, expected):
    """The CLI's effects equal the in-process ones up to float32 rounding (another process may
    sum in another order); the text table holds the float32 values exactly (checked against the
    parquet table)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-12)


def expected_targets(demo, chrom, pos):
    """Tokens, window start and the exact ISM targets [F, 4, L] of the window centred on ``pos``."""
    start, end = window_bounds(pos, LENGTH)
    tokens = tokenize(demo["fasta"][chrom][start:end])
    offsets, alts = substitutions(tokens)
    return tokens, start, one_thread_targets(load_model(demo["model"]).eval(), tokens, offsets, alts)


def parse(labels):
    parts = labels.str.extract(r"^(?P<chrom>[^:]+):(?P<pos>\d+) (?P<ref>[ACGTN])>(?P<alt>[ACGT])$")
    assert not parts.isna().any().any(), "malformed labels"
    parts["pos"] = parts["pos"].astype(int)
    return parts


def test_predict_position_then_plot(demo, tmp_path):
    # a window that straddles the end of the leading N block: N positions get 4 rows each
    pos = demo["first_base"] - 40 + (LENGTH - 1) // 2 + 1
    out = tmp_path / "site"
    res = run_cli("predict", "--chromosome", "chr1", "--position", pos, "--exact", "--weights", demo["model"],
                  "--genome", demo["genome"], "--format", "both", "--threads", 1, "--output", out)
    assert res.returncode == 0, res.stderr
    tokens, start, target = expected_targets(demo, "chr1", pos)
    assert (tokens[:40] == 4).all() and (tokens[40:] < 4).all()

    table = pd.read_csv(f"{out}.tsv.gz", sep="\t")
    assert list(table.columns) == ["variant", "window", *demo["names"]]
    assert (table["window"] == f"chr1:{pos}").all()
    assert len(table) == 3 * LENGTH + 40  # 3 substitutions per base, 4 at each N
    labels = parse(table["variant"])
    assert (labels["chrom"] == "chr1").all()
    assert sorted(set(labels["pos"])) == list(range(start + 1, start + LENGTH + 1))  # 1-based, whole window
    assert all(genome_base(demo["fasta"], "chr1", p) == r for p, r in zip(labels["pos"], labels["ref"]))
    assert (labels["ref"] != labels["alt"]).all()
    offsets = labels["pos"].to_numpy() - start - 1
    alts = labels["alt"].map(BASES.index).to_numpy()
    expected = target[:, alts, offsets].T
    assert_same_effects(table[demo["names"]].to_numpy(np.float32), expected)

    parquet = pq.read_table(f"{out}.parquet").to_pandas()
    assert list(parquet["variant"]) == list(table["variant"])
    np.testing.assert_array_equal(table[demo["names"]].to_numpy(np.float32), parquet[demo["names"]].to_numpy())

    # plot: strongest profile by default (PNG), a chosen one (PDF); a prefix finds the file
    res = run_cli("plot", f"{out}.tsv.gz", "--out", tmp_path / "site.png")
    assert res.returncode == 0, res.stderr
    strongest = demo["names"][int(np.abs(target).reshape(N_OUTPUTS, -1).max(axis=1).argmax())]
    assert f"drew {strongest} of window chr1:{pos}" in res.stderr
    assert (tmp_path / "site.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_cli("plot", out, "--profile", demo["names"][1], "--out", tmp_path / "site.pdf")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "site.pdf").read_bytes()[:5] == b"%PDF-"
    res = run_cli("plot", out, "--profile", "no_such_profile", "--out", tmp_path / "x.png")
    assert res.returncode == 1 and "no_such_profile" in res.stderr and not (tmp_path / "x.png").exists()


def test_predict_vcf_with_ref_mismatch(demo, tmp_path):
    fasta = demo["fasta"]
    lo = demo["first_base"] + LENGTH  # well inside the first stretch of sequence
    sites = [("chr1", lo + 11), ("chr1", lo + 12), ("chr1", lo + 500), ("chr2", CHROM_LENGTH - 5_000)]
    sites = [(c, p) for c, p in sites if genome_base(fasta, c, p) != "N"]
    assert len(sites) >= 3
    refs = {site: genome_base(fasta, *site) for site in sites}
    others = {site: [b for b in "ACGT" if b != refs[site]] for site in sites}
    (c0, p0), (c1, p1), (c2, p2) = sites[:3]
    bad_ref = others[(c2, p2)][0]
    rows = [
        (c0, p0, refs[(c0, p0)].lower(), others[(c0, p0)][0]),          # REF compared case-insensitively
        (c1, p1, refs[(c1, p1)], ",".join(others[(c1, p1)][:2])),        # multi-allelic: two rows
        (c2, p2, bad_ref, refs[(c2, p2)]),                               # REF mismatch: skipped
        (c0, p0 + 3, "AT", "A"),                                         # deletion: skipped
        (c1, p1, refs[(c1, p1)], "<DUP>"),                               # symbolic: skipped
    ]
    vcf = tmp_path / "calls.vcf.gz"
    with gzip.open(vcf, "wt") as fh:
        fh.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for chrom, pos, ref, alt in rows:
            fh.write(f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t50\tPASS\t.\n")
    out = tmp_path / "calls"
    res = run_cli("predict", "--vcf", vcf, "--exact", "--weights", demo["model"], "--genome", demo["genome"],
                  "--format", "both", "--threads", 1, "--output", out)
    assert res.returncode == 0, res.stderr
    mismatch = f"{c2}:{p2} {bad_ref}>{refs[(c2, p2)]}"
    assert "REF mismatch" in res.stderr and mismatch in res.stderr  # reported in the log ...
    skipped = pd.read_csv(f"{out}.skipped.tsv", sep="\t")            # ... and in the skipped table
    assert list(skipped["variant"]) == [f"{c0}:{p0 + 3} AT>A", f"{c1}:{p1} {refs[(c1, p1)]}><DUP>", mismatch]
    assert skipped["reason"].iloc[2].startswith(f"REF mismatch: genome has {refs[(c2, p2)]}")

    table = pd.read_csv(f"{out}.tsv.gz", sep="\t")
    wanted = [(c0, p0, others[(c0, p0)][0]), (c1, p1, others[(c1, p1)][0]), (c1, p1, others[(c1, p1)][1])]
    assert list(table["variant"]) == [f"{c}:{p} {refs[(c, p)]}>{a}" for c, p, a in wanted]
    # tiled as `seqmux score` tiles (stride 150): SNVs of one tile share its window
    starts = [(c, int(tile_start(p - 1, LENGTH, 150))) for c, p, _ in wanted]
    assert list(table["window"]) == [f"{c}:{s + (LENGTH - 1) // 2 + 1}" for c, s in starts]
    assert json.loads(Path(f"{out}.json").read_text())["windows"] == len(set(starts)) < len(wanted)
    assert not table["variant"].str.startswith(f"{c2}:{p2} ").any()  # the mismatch is never scored
    # each SNV scored in its tile's window, at its offset, with the substitution the VCF lists
    model = load_model(demo["model"]).eval()
    expected = []
    for chrom, start in dict.fromkeys(starts):  # the window's substitutions in one call, as the CLI does
        listed = [(pos - 1 - start, BASES.index(alt)) for (c, pos, alt), key in zip(wanted, starts)
                  if key == (chrom, start)]
        assert all(abs(o - (LENGTH - 1) // 2) <= 75 for o, _ in listed)
        target = one_thread_targets(model, tokenize(fasta[chrom][start:start + LENGTH]), *zip(*listed))
        expected += [target[:, a, o] for o, a in listed]
    expected = np.stack(expected)
    parquet = pq.read_table(f"{out}.parquet").to_pandas()
    assert list(parquet["variant"]) == list(table["variant"])
    assert_same_effects(parquet[demo["names"]].to_numpy(), expected)
    np.testing.assert_array_equal(table[demo["names"]].to_numpy(np.float32), parquet[demo["names"]].to_numpy())


@pytest.mark.parametrize("case", ["unknown chromosome", "too close to the start", "too close to the end",
                                  "missing weights", "vcf too close to the end"])
def test_bad_input(demo, tmp_path, case):
    out_dir = tmp_path / "out"
    model = demo["model"]
    chrom, pos = "chr1", demo["first_base"] + LENGTH
    inputs = None
    if case == "unknown chromosome":
        chrom, value = "chrUn_missing", "chrUn_missing"
    elif case == "too close to the start":
        pos = value = 100
    elif case == "too close to the end":
        pos = value = CHROM_LENGTH - 20
    elif case == "missing weights":
        model = value = str(tmp_path / "no_such_weights.pt")
    else:
        pos = value = CHROM_LENGTH - 3
        vcf = tmp_path / "end.vcf"
        vcf.write_text(f"#CHROM\tPOS\tID\tREF\tALT\nchr1\t{pos}\t.\tN\tA\nchr2\t{pos}\t.\tA\tC\n")
        inputs = ["--vcf", vcf]
    where = inputs or ["--chromosome", chrom, "--position", pos]
    res = run_cli("predict", *where, "--exact", "--weights", model, "--genome", demo["genome"],
                  "--format", "both", "--output", out_dir / "x")
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(value) in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_read_vcf(tmp_path):
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##x\n#CHROM\tPOS\tID\tREF\tALT\n"
                   "chr1\t5\t.\tA\tC,G,<DEL>\n\n"
                   "chr1\t6\t.\tc\tt\n"
                   "chr1\t6\t.\tC\tT\n"
                   "chr1\t7\t.\tA\t.\n"
                   "chr1\t8\t.\tN\tA\n")
    snvs, skipped = read_vcf(vcf)
    assert [s[:4] for s in snvs] == [("chr1", 5, "A", "C"), ("chr1", 5, "A", "G"), ("chr1", 6, "C", "T")]
    assert [label for label, _ in skipped] == ["chr1:5 A><DEL>", "chr1:6 C>T", "chr1:7 A>.", "chr1:8 N>A"]


def test_unique_names_and_matrix():
    assert unique_names(["a", "b", "a", "a.1", "window"]) == ["a", "b", "a.2", "a.1", "window.1"]
    span, letters, m = window_matrix(np.array([10, 10, 12]), np.array(["A", "A", "N"]), np.array([1, 3, 2]),
                                     np.array([1.0, -2.0, 3.0], dtype=np.float32))
    assert list(span) == [10, 11, 12] and list(letters) == ["A", "", "N"]
    np.testing.assert_array_equal(m[:, 0], [0, 1, np.nan, -2])
    assert np.isnan(m[:, 1]).all() and m[2, 2] == 3


def test_plot_needs_window_when_file_holds_several(demo, tmp_path):
    from seqmux.errors import InputError
    from seqmux.heatmap import plot_prediction
    from seqmux.predict import predict

    first = demo["first_base"] + LENGTH
    (tmp_path / "positions.tsv").write_text(f"chr1\t{first}\nchr1\t{first + 7}\nchr1\t{first}\n")
    rows = predict(demo["genome"], tmp_path / "two", inputs_file=tmp_path / "positions.tsv", exact=True,
                   weights=demo["model"], diff=True)
    assert rows == 2 * 3 * LENGTH  # the repeated position is scored once
    with pytest.raises(InputError, match="holds 2 windows"):
        plot_prediction(tmp_path / "two.tsv.gz", tmp_path / "two.png")
    assert not (tmp_path / "two.png").exists()
    profile = plot_prediction(tmp_path / "two", tmp_path / "two.png", window=f"chr1:{first + 7}")
    assert profile in demo["names"] and (tmp_path / "two.png").stat().st_size > 0


def test_predict_with_the_trained_multiplexer(tiny_run, tmp_path):
    """From the workflow directory with the defaults (demo genome, results/multiplexer/model.pt):
    every substitution of a window, each value the trained multiplexer's own output."""
    import torch

    from seqmux.encoding import one_hot
    from seqmux.multiplexer import load_multiplexer

    model, info = load_multiplexer(tiny_run / "results/multiplexer/model.pt")
    length, names = info["length"], info["output_names"]
    pos = 20_000
    res = run_cli("predict", "--chromosome", "chr3", "--position", pos, "--output", tmp_path / "mux", cwd=tiny_run)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "mux.tsv.gz", sep="\t")
    assert list(table.columns) == ["variant", "window", *unique_names(names)]
    fasta = open_fasta(tiny_run / "resources/demo/genome.fa")
    start, end = window_bounds(pos, length)
    tokens = tokenize(fasta["chr3"][start:end])
    assert len(table) == 3 * int((tokens < 4).sum()) + 4 * int((tokens == 4).sum())
    with torch.no_grad():
        want = model(torch.from_numpy(one_hot(tokens))[None])[0].numpy()   # [F, 4, L]
    labels = parse(table["variant"])
    offsets = labels["pos"].to_numpy() - start - 1
    alts = labels["alt"].map(BASES.index).to_numpy()
    assert (offsets >= 0).all() and (offsets < length).all()
    np.testing.assert_allclose(table[unique_names(names)].to_numpy(np.float32), want[:, alts, offsets].T,
                               rtol=1e-6, atol=1e-7)
    assert np.abs(want[:, alts, offsets]).max() > 0     # a trained model, not zeros
    meta = (tmp_path / "mux.json").read_text()
    assert "multiplexer" in meta




@pytest.mark.parametrize("case, fragment", [
    ("empty vcf", "empty.vcf: --vcf='{dir}/empty.vcf': empty file: no VCF header and no records"),
    ("header-only vcf", "header.vcf: --vcf='{dir}/header.vcf': no records: the file has header lines only"),
    ("vcf without header", "nohead.vcf:1: --vcf="),
    ("base model as multiplexer", "--multiplexer='{model}': not a multiplexer model (it holds a base model"),
    ("NaN model", "--modelname='NaNNet': window chr1:15000 on the reference: output 0 is nan: not finite"),
    ("outputs not probabilities", "--modelname='Softplus': window chr1:15000 on the reference: output 0 is 1."),
])
def test_bad_input_files(demo, tmp_path, case, fragment):
    """Files of the wrong kind or content: one error line naming the file, option and value, no
    traceback, nothing written (the 0-byte VCF used to give an empty table and exit 0)."""
    out_dir = tmp_path / "out"
    models = tmp_path / "models.py"
    models.write_text(UNUSABLE_MODELS)
    (tmp_path / "empty.vcf").write_text("")
    (tmp_path / "header.vcf").write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
    (tmp_path / "nohead.vcf").write_text("chr1\t15000\t.\tA\tC\n")
    vcf = {"empty vcf": "empty.vcf", "header-only vcf": "header.vcf", "vcf without header": "nohead.vcf"}
    if case in vcf:
        args = ["--vcf", tmp_path / vcf[case], "--exact", "--weights", demo["model"]]
    elif case == "base model as multiplexer":
        args = ["--chromosome", "chr1", "--position", 15000, "--multiplexer", demo["model"]]
    else:
        name = "NaNNet" if case == "NaN model" else "Softplus"
        args = ["--chromosome", "chr1", "--position", 15000, "--exact", "--model-kind", "custom",
                "--modelpath", models, "--modelname", name]
    res = run_cli("predict", *args, "--genome", demo["genome"], "--format", "both", "--output", out_dir / "x")
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment.format(dir=tmp_path, model=demo["model"]) in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_exact_diff_takes_any_finite_output(demo, tmp_path):
    models = tmp_path / "models.py"
    models.write_text(UNUSABLE_MODELS)
    res = run_cli("predict", "--chromosome", "chr1", "--position", 15000, "--exact", "--model-kind", "custom",
                  "--modelpath", models, "--modelname", "Softplus", "--diff", "--genome", demo["genome"],
                  "--output", tmp_path / "x")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "x.tsv.gz", sep="\t")
    assert len(table) == 3 * LENGTH and np.isfinite(table[["output_0", "output_1", "output_2"]].to_numpy()).all()
