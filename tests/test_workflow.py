"""The spine run by Snakemake end to end, on the tiny config, and its bad inputs."""

import hashlib

import numpy as np
import pytest
import torch

from conftest import (ROUNDING_FACTOR, TINY, UNUSABLE_MODELS, deep_update, float32_rounding, planned_jobs,
                      run_workflow)
from seqmux.encoding import one_hot, tokenize
from seqmux.genome import open_fasta, read_bed_intervals
from seqmux.models import BelugaFamily, load_model
from seqmux.splits import open_split, split_info, targets_of
from seqmux.windows import read_windows

SPLITS = ("train", "validation", "test")
SHARD_FILES = [f"results/splits/{s}/{shard}.feather" for s in SPLITS for shard in ("0000", "0001")]
PRODUCTS = ["results/windows/windows.bed", "results/encoded/tokens.npy"] + SHARD_FILES


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_disk_formula_matches_the_bytes_on_disk(tiny_run):
    """The estimate printed at the start of a run (docs/multiplexer.md, "Disk") against the files the tiny run
    wrote: the split shards are the one copy of the targets (nothing else under results/ is big)."""
    from seqmux.splits import disk_bytes

    n = sum(TINY["windows"]["count"].values())
    formula = disk_bytes(n, 16, 400, TINY["targets"]["dtype"])
    splits = sum((tiny_run / p).stat().st_size for p in SHARD_FILES)
    per_window_numbers = 16 * 3 * 400 * 4
    assert abs(splits - formula) < 6 * 4096 + n * 200, (splits, formula)   # framing of 6 shards
    assert splits > n * per_window_numbers
    import pyarrow as pa

    others = [p for p in (tiny_run / "results").rglob("*") if p.is_file() and "splits" not in p.parts
              and p.suffix in (".arrow", ".feather")]
    for p in others:                # no second copy of the targets anywhere
        assert "target" not in pa.ipc.open_file(pa.memory_map(str(p), "r")).schema.names, p


def test_spine_builds_the_three_splits(tiny_run):
    tables = {s: open_split(tiny_run / f"results/splits/{s}") for s in SPLITS}
    assert {s: t.num_rows for s, t in tables.items()} == TINY["windows"]["count"]
    info = split_info(tables["train"])
    assert info["n_outputs"] == 16 and info["length"] == 400 and info["mode"] == "logfold"
    assert len(info["output_names"]) == 16
    fa = open_fasta(tiny_run / "resources/demo/genome.fa")
    for s, t in tables.items():
        for row in t.select(["chrom", "start", "end", "sequence"]).to_pylist():
            assert row["sequence"] == fa[row["chrom"]][row["start"]:row["end"]].upper().replace("R", "N")
    # split hygiene: no chromosome in two splits, held-out chromosomes where the config puts them
    chroms = {s: set(t.column("chrom").to_pylist()) for s, t in tables.items()}
    assert not (chroms["train"] & chroms["validation"]) and not (chroms["train"] & chroms["test"])
    assert not (chroms["validation"] & chroms["test"])
    assert chroms["validation"] <= {"chr7"} and chroms["test"] <= {"chr8", "chr9"}
    # identity substitutions are exactly zero, every other target is finite
    target = targets_of(tables["test"])
    for i, seq in enumerate(tables["test"].column("sequence").to_pylist()):
        tokens = tokenize(seq)
        ok = tokens < 4
        assert np.all(target[i][:, tokens[ok], np.nonzero(ok)[0]] == 0)
    assert np.all(np.isfinite(target))
    for rule in ("sample_windows", "compute_targets.train.0000", "compute_targets.test.0001"):
        assert (tiny_run / f"results/benchmarks/{rule}.tsv").exists()
        assert (tiny_run / f"logs/{rule}.log").exists()


def test_same_config_same_bytes(tiny_run, tmp_path):
    result = run_workflow(tmp_path, TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    for product in PRODUCTS:
        assert digest(tiny_run / product) == digest(tmp_path / product), product


def test_fast_targets_equal_naive_targets(tiny_run, tmp_path):
    """The target stage's default (fast ISM) and naive ISM agree to float32 rounding on every target
    (conftest.float32_rounding of the demo model on the windows of the shard); the reference
    predictions are the same forward pass."""
    shards = SHARD_FILES
    model = load_model(tiny_run / "resources/demo/base_model.pt")
    tokens = np.load(tiny_run / "results/encoded/tokens.npy")
    result = run_workflow(tmp_path, deep_update(TINY, {"targets": {"method": "naive"}}), *shards)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "naive ISM" in (tmp_path / "logs/compute_targets.train.0000.log").read_text()
    for shard in shards:
        fast, naive = open_split(tiny_run / shard), open_split(tmp_path / shard)
        assert fast.column("window_id").equals(naive.column("window_id"))
        if not fast.num_rows:
            continue
        t_fast, t_naive = targets_of(fast), targets_of(naive)
        assert t_fast.dtype == np.float32 and np.abs(t_naive).max() > 0.1
        ids = fast.column("window_id").to_numpy()
        tol = ROUNDING_FACTOR * float32_rounding(model, np.stack([one_hot(tokens[i]) for i in ids]))
        assert tol < 1e-4 and np.abs(t_fast - t_naive).max() <= tol
        assert fast.column("reference_prediction").equals(naive.column("reference_prediction"))


def test_demo_targets_respond_to_planted_motifs(tiny_run):
    """Mean |log-fold| inside planted motif sites is at least 5x the background's."""
    sites = read_bed_intervals(tiny_run / "resources/demo/motif_sites.bed")
    inside, outside = [], []
    for s in SPLITS:
        table = open_split(tiny_run / f"results/splits/{s}")
        target = targets_of(table)
        for i, row in enumerate(table.select(["chrom", "start", "end"]).to_pylist()):
            mask = np.zeros(row["end"] - row["start"], dtype=bool)
            for a, b in sites.get(row["chrom"], []):
                if b > row["start"] and a < row["end"]:
                    mask[max(a - row["start"], 0):b - row["start"]] = True
            effect = np.abs(target[i]).sum(axis=1) / 3  # [F, L], mean over the 3 substitutions
            inside.append(effect[:, mask].ravel())
            outside.append(effect[:, ~mask].ravel())
    ratio = np.concatenate(inside).mean() / np.concatenate(outside).mean()
    assert ratio >= 5, ratio


def test_report_describes_the_run(tiny_run, tmp_path):
    """``snakemake --report``: a front page written from the run's config, then every result marked
    for the report with its caption, the evaluation's summary table among them."""
    report = tmp_path / "report.html"
    res = run_workflow(tiny_run, TINY, extra_args=("--report", str(report)))
    assert res.returncode == 0, res.stderr[-3000:]
    html = report.read_text()
    assert "What was run" in html and "embedded synthetic demo genome" in html
    assert "6 training, 2" in html and "windows of 400 bp" in html and "drawn with seed 3" in html
    for name in ("training_log.csv", "loss_curve.png", "metrics.json", "metrics.tsv", "predicted_vs_exact.png",
                 "profile_correlations.png", "example_heatmap.png"):
        assert f'"results/multiplexer/{name}"' in html, name
    assert "The evaluation in one table" in html and "2 windows of the test chromosomes" in html


TRACK_RULES = ("circuitsnp", "scrna", "gc_hmm", "sgrna")


def planned_rules(workdir, config, *targets):
    """``{rule: job count}`` of a dry run (``snakemake -n --quiet rules``)."""
    return planned_jobs(workdir, config, *targets)


def test_default_run_builds_the_multiplexer_and_every_track(tmp_path):
    """The default config's `rule all` plans the spine and every track's target rule; `tracks: []`
    plans the Multiplexer alone; a track's own target plans that track and none of the spine's
    training."""
    def tracks_in(rules):  # step rules are named <verb>_<track>
        return {t for t in TRACK_RULES if any(r.endswith("_" + t) for r in rules)}

    default = planned_rules(tmp_path / "default", {})
    assert {"train_multiplexer", "evaluate_multiplexer"} <= set(default), default
    assert tracks_in(default) == set(TRACK_RULES), default
    spine_only = planned_rules(tmp_path / "spine", {"tracks": []})
    assert "train_multiplexer" in spine_only and not tracks_in(spine_only), spine_only
    one = planned_rules(tmp_path / "one", {}, "sgrna")
    assert "sgrna" in one and "train_multiplexer" not in one and tracks_in(one) == {"sgrna"}, one


def test_windows_table_is_bed(tiny_run):
    windows = read_windows(tiny_run / "results/windows/windows.bed")
    assert [w.window_id for w in windows] == list(range(10))
    assert all(w.end - w.start == 400 for w in windows)


# ---- bad input: one clear line, non-zero exit, no partial outputs -----------------------------------

def write_fasta(path, records):
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n{seq}\n")
    return str(path)


def random_genome(tmp_path, names=("chr1", "chr2", "chr8"), length=5000):
    rng = np.random.default_rng(0)
    return write_fasta(tmp_path / "genome.fa", {n: "".join(rng.choice(list("ACGT"), length)) for n in names})


def assert_failed_cleanly(result, workdir, *fragments, products=PRODUCTS):
    """Non-zero exit, the error fragments in the output, none of ``products`` left behind."""
    assert result.returncode != 0
    text = result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in text, text[-3000:]
    for product in products:
        assert not (workdir / product).exists(), product
    assert not list(workdir.glob("results/**/*.tmp"))


def test_config_not_matching_schema(tmp_path):
    result = run_workflow(tmp_path, deep_update(TINY, {"windows": {"length": "long"}}), "-n")
    assert_failed_cleanly(result, tmp_path, "windows.length='long'", "is not of type 'integer'")
    result = run_workflow(tmp_path, deep_update(TINY, {"targets": {"mode": "ratio"}}), "-n")
    assert_failed_cleanly(result, tmp_path, "targets.mode='ratio'")
    result = run_workflow(tmp_path, deep_update(TINY, {"base_model": {"demo": {"logit_std": 0}}}), "-n")
    assert_failed_cleanly(result, tmp_path, "base_model.demo.logit_std=0")


def test_missing_fasta(tmp_path):
    result = run_workflow(tmp_path, deep_update(TINY, {"genome": {"fasta": str(tmp_path / "absent.fa")}}))
    assert_failed_cleanly(result, tmp_path, "genome.fasta=", "absent.fa", "file not found")


def test_held_out_chromosome_absent(tmp_path):
    fasta = random_genome(tmp_path)
    config = deep_update(TINY, {"genome": {"fasta": fasta}, "windows": {"validation_chroms": ["chr7"]}})
    result = run_workflow(tmp_path, config)  # found before any job (it used to stop the sampling job)
    assert_failed_cleanly(result, tmp_path, "windows.validation_chroms='chr7': chromosome not in the FASTA")
    assert_no_job_ran(tmp_path)


def test_all_n_held_out_chromosome(tmp_path):
    fasta = write_fasta(tmp_path / "genome.fa", {"chr1": "ACGT" * 500, "chr7": "N" * 3000, "chr8": "ACGT" * 500,
                                                  "chr9": "ACGT" * 500})
    result = run_workflow(tmp_path, deep_update(TINY, {"genome": {"fasta": fasta}}))
    assert_failed_cleanly(result, tmp_path, "error: ", "chr7 yielded no window")


def test_beluga_weights_that_do_not_fit(tmp_path):
    fasta = random_genome(tmp_path, names=("chr1", "chr7", "chr8", "chr9"))
    weights = tmp_path / "deepsea.beluga.pth"
    torch.save(BelugaFamily(length=2000, channels=(8, 8, 8), hidden=4, n_outputs=2).state_dict(), weights)
    config = deep_update(TINY, {"genome": {"fasta": fasta}, "windows": {"length": 2000},
                                "base_model": {"kind": "beluga", "weights": str(weights)}})
    result = run_workflow(tmp_path, config)
    assert_failed_cleanly(result, tmp_path, "error: ", "base_model.weights=",
                          "mis-shaped keys: model.0.0.bias (8,) != (320,)", products=PRODUCTS[2:])


@pytest.mark.parametrize("extra, fragment", [
    ({"kind": "custom", "module": "absent.py", "class": "Net"}, "base_model.module='absent.py': file not found"),
    ({"kind": "beluga"}, "base_model.weights='': required when base_model.kind=beluga"),
])
def test_base_model_files_checked_at_start(tmp_path, extra, fragment):
    result = run_workflow(tmp_path, deep_update(TINY, {"base_model": extra}), "-n")
    assert_failed_cleanly(result, tmp_path, fragment)


# ---- inputs checked where they enter; config errors before any job ---------------------------------

def assert_no_job_ran(workdir):
    """No job started: no log, no result, not even the demo genome."""
    for folder in ("logs", "results", "resources"):
        assert not (workdir / folder).exists(), folder


def read_fasta_plainly(path):
    """``{name: sequence}`` parsed line by line, without any index."""
    records, name = {}, None
    for line in open(path):
        if line.startswith(">"):
            name = line[1:].split()[0]
            records[name] = []
        elif line.strip():
            records[name].append(line.strip())
    return {k: "".join(v) for k, v in records.items()}


def test_stale_fasta_index_gives_the_fasta_bases(tmp_path):
    """A FASTA edited after it was indexed, its .fai still newer (a copy, a checkout): the run
    rebuilds the index and every window holds the FASTA's bases (it used to read through the
    stale offsets and exit 0)."""
    import os

    names = ("chr1", "chr2", "chr7", "chr8", "chr9")
    fasta = random_genome(tmp_path, names=names)
    open_fasta(fasta)  # writes genome.fa.fai
    rng = np.random.default_rng(1)
    edited = {n: "".join(rng.choice(list("ACGT"), 5000 - 700 * (n == "chr1"))) for n in names}
    with open(fasta, "w") as fh:  # 80 bases a line: every offset moves
        for n, seq in edited.items():
            fh.write(f">{n}\n" + "".join(seq[i:i + 80] + "\n" for i in range(0, len(seq), 80)))
    later = os.stat(fasta).st_mtime_ns + 10**9
    os.utime(fasta + ".fai", ns=(later, later))
    config = deep_update(TINY, {"genome": {"fasta": fasta}})
    result = run_workflow(tmp_path, config, "results/encoded/tokens.npy")
    assert result.returncode == 0, result.stderr[-3000:]
    truth = read_fasta_plainly(fasta)
    tokens = np.load(tmp_path / "results/encoded/tokens.npy")
    windows = read_windows(tmp_path / "results/windows/windows.bed")
    assert len(windows) == 10
    for w in windows:
        np.testing.assert_array_equal(tokens[w.window_id], tokenize(truth[w.chrom][w.start:w.end]))


def test_fasta_with_duplicate_names_leaves_no_index(tmp_path):
    """Duplicate names stop the run before any job and leave no .fai; once the FASTA is fixed the
    same command runs (the old .fai used to make it fail again)."""
    fasta = random_genome(tmp_path, names=("chr1", "chr7", "chr8", "chr9"))
    with open(fasta, "a") as fh:
        fh.write(">chr1\nACGT\n")
    config = deep_update(TINY, {"genome": {"fasta": fasta}})
    result = run_workflow(tmp_path, config)
    assert_failed_cleanly(result, tmp_path, "genome.fa: genome.fasta=", "not a readable FASTA: Duplicate key")
    assert_no_job_ran(tmp_path)
    assert not (tmp_path / "genome.fa.fai").exists()
    random_genome(tmp_path, names=("chr1", "chr7", "chr8", "chr9"))
    result = run_workflow(tmp_path, config, "-n")
    assert result.returncode == 0, result.stderr[-3000:]


def write_regions(tmp_path, text):
    (tmp_path / "regions.bed").write_text(text)
    return {"windows": {"regions": str(tmp_path / "regions.bed")}}


CONFIG_ERRORS = {
    "no training window": ({"windows": {"count": {"train": 0}}},
                           "config: windows.count.train=0: at least 1 training window(s) needed"),
    "beluga at 400 bp": ({"base_model": {"kind": "beluga", "weights": "WEIGHTS"}},
                         "config: windows.length=400: the beluga base model needs 2000"),
    "chromosome in both held-out lists": ({"windows": {"test_chroms": ["chr7", "chr8"]}},
                                          "windows.test_chroms='chr7': also listed in windows.validation_chroms"),
    "window longer than every chromosome": ({"windows": {"length": 50000}},
                                            "windows.validation_chroms='chr7': chromosome is 40000 bp, shorter "
                                            "than windows.length=50000"),
    "every chromosome held out": ({"windows": {"validation_chroms": [f"chr{i}" for i in range(1, 8)]}},
                                  "windows.count.train=6: every chromosome of the FASTA (9) is held out"),
    "window too short for the demo model": ({"windows": {"length": 100}},
                                            "windows.length=100: the demo base model needs at least 310 bp"),
    "CUDA device without CUDA": ({"targets": {"device": "cuda"}},
                                 "config: targets.device='cuda': CUDA is not available on this machine"),
    "regions start > end": ("chr2\t20000\t20100\nchr2\t5000\t4000\n",
                            "regions.bed:2: end=4000: BED end must be greater than start (5000)"),
    "regions negative start": ("chr2\t-10\t300\n", "regions.bed:1: start=-10: negative BED start"),
    "regions past the end": ("chr2\t39900\t40100\n", "regions.bed:1: end=40100: beyond the end of chr2 (40000 bp)"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_stop_the_run_before_any_job(tmp_path, case):
    """What the config and the input files' headers decide is checked at start: one line, exit 1,
    no job run (each used to fail after some or all of the jobs, or with a traceback)."""
    extra, fragment = CONFIG_ERRORS[case]
    if case == "CUDA device without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if isinstance(extra, str):
        extra = write_regions(tmp_path, extra)
    if case == "beluga at 400 bp":
        (tmp_path / "weights.pth").write_bytes(b"")
        extra["base_model"]["weights"] = str(tmp_path / "weights.pth")
    result = run_workflow(tmp_path, deep_update(TINY, extra))
    assert_failed_cleanly(result, tmp_path, fragment)
    assert "Traceback" not in result.stderr
    assert_no_job_ran(tmp_path)




@pytest.mark.parametrize("name, fragment", [
    ("Softplus", "base_model.class='Softplus': window "),
    ("NaNNet", "base_model.class='NaNNet': window "),
    ("Fails", "base_model.class='Fails': the model fails on a 400 bp window (windows.length): RuntimeError: boom"),
])
def test_unusable_base_model_outputs(tmp_path, name, fragment):
    """Outputs that are not probabilities in logfold mode (used to give finite, meaningless
    targets and exit 0), or NaN (a traceback and a leftover .tmp): one line, no target written."""
    module = tmp_path / "models.py"
    module.write_text(UNUSABLE_MODELS)
    config = deep_update(TINY, {"base_model": {"kind": "custom", "module": str(module), "class": name}})
    result = run_workflow(tmp_path, config)
    assert_failed_cleanly(result, tmp_path, "error: ", fragment, products=PRODUCTS[2:])
    assert "Traceback" not in result.stderr
    if name == "Fails":
        return
    assert "(targets.mode=logfold)" in result.stderr
    problem = "is nan: not finite" if name == "NaNNet" else "not a probability in [0, 1], which log-fold targets need"
    assert ") on the reference: output 0 " in result.stderr and problem in result.stderr
