"""circuitSNP track: motif scanning, the true model, the user's feather files (and their bad inputs),
SNP scores, and the track's target rule end to end on small configs."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, deep_update, finished_run, run_workflow, track_section
from seqmux.encoding import one_hot, tokenize
from seqmux.errors import InputError
from seqmux.motifs import (Motif, max_score, motif_filters, motif_presence, quantized_log_odds, reverse_complement,
                           scan_best)
from seqmux.tracks.circuitsnp import data as cd
from seqmux.tracks.circuitsnp import evaluate as ce
from seqmux.tracks.circuitsnp import model as cm
from seqmux.tracks.circuitsnp import train as ct

# the track on the tiny genome (9 x 40 kb): enough windows to learn the 5-motif true model
SMALL = {"windows": {"count": {"train": 1500, "validation": 500, "test": 800}}, "motifs": 24,
         "train": {"lr": 0.003, "max_epochs": 1500}, "simulate_vcf": {"destroying": 12, "background": 12}}
TRACK_CONFIG = deep_update(TINY, {"circuitsnp": SMALL})
MAIN_OUTPUTS = ["train.feather", "validation.feather", "test.feather", "features.tsv", "true_model.json",
                "model.pt", "logistic_regression.json", "training_log.tsv", "simulated.vcf", "snp_scores.tsv",
                "metrics.json", "test_predictions.tsv"]


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def random_motif(rng, k, name="m"):
    return Motif(f"MA{rng.integers(1000, 9999)}.1", name, rng.integers(0, 20, size=(4, k)).astype(np.float64))


# --- motif scanning ------------------------------------------------------------------------------

def brute_best(tokens, matrix):
    """Best score of a [4, k] matrix on either strand of tokens [L] (N scores 0), by loops."""
    k, length = matrix.shape[1], len(tokens)
    best = -np.inf
    for m in (matrix, reverse_complement(matrix)):
        for p in range(length - k + 1):
            best = max(best, sum(m[tokens[p + j], j] if tokens[p + j] < 4 else 0.0 for j in range(k)))
    return best


def test_scan_best_equals_loops_and_is_batch_invariant():
    rng = np.random.default_rng(0)
    motifs = [random_motif(rng, k) for k in (4, 7, 12, 9)]
    tokens = rng.integers(0, 5, size=(9, 30)).astype(np.uint8)  # 4 = N, about one base in five
    weights, lengths = motif_filters(motifs)
    best = scan_best(one_hot(tokens), weights, lengths, batch_size=4)
    for n in range(len(tokens)):
        for m, motif in enumerate(motifs):
            assert best[n, m] == brute_best(tokens[n], quantized_log_odds(motif.counts))  # integers: exact
    # integer milli-bits: the same scores in any batch, even one sequence at a time
    alone = np.concatenate([scan_best(one_hot(tokens[i:i + 1]), weights, lengths) for i in range(len(tokens))])
    assert np.array_equal(alone, best)
    # a motif longer than the sequence cannot be placed
    assert np.all(scan_best(one_hot(tokens[:, :5]), weights, lengths)[:, 2] == -np.inf)


def test_presence_of_a_planted_consensus_on_either_strand():
    rng = np.random.default_rng(1)
    motif = random_motif(rng, 8)
    q = quantized_log_odds(motif.counts)
    consensus = "".join("AGCT"[i] for i in q.argmax(axis=0))
    background = "".join(rng.choice(list("ACGT"), size=40))
    rc = consensus[::-1].translate(str.maketrans("ACGT", "TGCA"))
    seqs = [background[:10] + consensus + background[18:], background[:20] + rc + background[28:]]
    x = one_hot(np.stack([tokenize(s) for s in seqs]))
    weights, lengths = motif_filters([motif])
    assert np.all(scan_best(x, weights, lengths)[:, 0] == max_score(q))
    assert np.all(motif_presence(x, [motif], 1.0) == 1)
    # the same windows without it: below the maximum (a random 40 bp rarely holds the consensus)
    plain = one_hot(tokenize(background)[None])
    assert scan_best(plain, weights, lengths)[0, 0] < max_score(q)


def test_destroying_snv_lowers_the_site_below_threshold():
    rng = np.random.default_rng(2)
    motif = random_motif(rng, 10)
    q = quantized_log_odds(motif.counts)
    site = q.argmax(axis=0).astype(np.uint8)
    j, alt = ce.destroying_snv(site, q)
    drops = q[site, np.arange(10)] - q.min(axis=0)
    assert j == int(np.argmax(drops)) and alt == int(np.argmin(q[:, j])) and alt != site[j]
    mutated = site.copy()
    mutated[j] = alt
    assert max_score(q) - sum(q[mutated[i], i] for i in range(10)) == pytest.approx(drops.max())


# --- the true model and scores ---------------------------------------------------------------------

def test_tune_intercept_hits_the_open_fraction():
    rng = np.random.default_rng(3)
    presence = (rng.random((2000, 8)) < 0.2).astype(np.uint8)
    w = np.array([3.0, 2.0, -2.0, 0, 0, 0, 0, 0])
    b = cd.tune_intercept(presence, w, 1 / 12)
    assert cd.true_probability(presence, w, b).mean() == pytest.approx(1 / 12, abs=1e-9)


def test_snp_score_sign_and_clipping():
    p_ref, p_alt, score = ce.snp_score([0.0, 0.0, 50.0, -3.0], [1.0, -2.0, 60.0, -3.0])
    assert score[0] == 1.0 and score[1] == -2.0 and score[3] == 0.0
    assert p_ref[0] == 0.5 and p_alt[1] == pytest.approx(1 / (1 + np.exp(2)))
    # both beyond 1 - 1e-6: clipped to the same value, score 0
    assert score[2] == 0.0 and p_ref[2] == pytest.approx(1 - 1e-6, abs=1e-15)


def test_bce_and_scores_against_sklearn():
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.1).astype(int)
    p = rng.random(300)
    assert cm.bce(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    # the no-skill BCE at 11:1 is the entropy of 1/12, the ~0.287 of the issue
    frac = 1 / 12
    assert cm.bce([1] + [0] * 11, np.full(12, frac)) == pytest.approx(0.2868, abs=1e-4)


# --- the user's feather files --------------------------------------------------------------------

def source_frames(rng, n_features=12, rows=(400, 150, 200), as_strings=True):
    """Three splits in the source format: M00001... presence columns (strings when asked) and Y, Y_alt,
    labels from a logistic model on the first three features."""
    names = [f"M{i:05d}" for i in range(1, n_features + 1)]
    frames = []
    for n in rows:
        x = (rng.random((n, n_features)) < 0.25).astype(int)
        z = -2.5 + 2.5 * x[:, 0] + 2.0 * x[:, 1] - 2.0 * x[:, 2]
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
        frame = pd.DataFrame(x, columns=names)
        if as_strings:
            frame = frame.astype(str)
        frame.insert(3, "other", "x")  # a column the pattern does not match
        frame["Y"], frame["Y_alt"] = y, 1 - y
        frames.append(frame)
    return dict(zip(cd.SPLITS, frames))


def write_frames(frames, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, frame in frames.items():
        paths[split] = str(folder / f"{split}.feather")
        frame.to_feather(paths[split])
    return paths


def test_feather_strings_are_read_as_numbers(tmp_path):
    frames = source_frames(np.random.default_rng(5))
    paths = write_frames(frames, tmp_path)
    splits = cd.read_user_splits(paths, r"^M\d{5}$", ["Y", "Y_alt"])
    x, y, names = splits["train"]
    assert names == [f"M{i:05d}" for i in range(1, 13)]
    assert np.array_equal(x, frames["train"][names].astype(int).to_numpy())
    assert np.array_equal(y, frames["train"]["Y"].to_numpy())


def test_feature_columns_in_another_order_are_aligned(tmp_path):
    frames = source_frames(np.random.default_rng(6))
    expected = frames["test"].copy()
    frames["test"] = frames["test"][list(frames["test"].columns[::-1])]
    splits = cd.read_user_splits(write_frames(frames, tmp_path), r"^M\d{5}$", ["Y", "Y_alt"])
    names = splits["train"][2]
    assert splits["test"][2] == names
    assert np.array_equal(splits["test"][0], expected[names].astype(int).to_numpy())


def bad_input(tmp_path, edit, pattern=r"^M\d{5}$", labels=("Y", "Y_alt")):
    frames = source_frames(np.random.default_rng(7))
    edit(frames)
    with pytest.raises(InputError) as err:
        cd.read_user_splits(write_frames(frames, tmp_path), pattern, list(labels))
    return str(err.value)


def test_bad_pattern(tmp_path):
    msg = bad_input(tmp_path, lambda f: None, pattern=r"^motif_\d+$")
    assert "train.feather: circuitsnp.feature_columns='^motif_\\\\d+$': matches no column" in msg


def test_bad_missing_label_column(tmp_path):
    msg = bad_input(tmp_path, lambda f: f["validation"].drop(columns="Y_alt", inplace=True))
    assert "validation.feather: circuitsnp.label_columns='Y_alt': label column not in the file" in msg


@pytest.mark.parametrize("pair", [(1, 1), (0, 0)])
def test_bad_labels_not_one_hot(tmp_path, pair):
    def edit(frames):
        frames["test"].loc[5, "Y"], frames["test"].loc[5, "Y_alt"] = pair

    msg = bad_input(tmp_path, edit)
    assert f"test.feather: Y,Y_alt[row 5]={pair!r}: labels are not one-hot" in msg


def test_bad_non_numeric_feature(tmp_path):
    def edit(frames):
        frames["train"].loc[17, "M00004"] = "0.5x"

    msg = bad_input(tmp_path, edit)
    assert "train.feather: M00004[row 17]='0.5x': not a finite number" in msg


def test_bad_single_class(tmp_path):
    def edit(frames):
        frames["validation"]["Y"], frames["validation"]["Y_alt"] = 0, 1

    msg = bad_input(tmp_path, edit)
    assert "validation.feather: Y=0: split has a single class (all 150 rows closed)" in msg


def test_bad_different_feature_columns(tmp_path):
    msg = bad_input(tmp_path, lambda f: f["test"].rename(columns={"M00012": "M00099"}, inplace=True))
    assert "test.feather: circuitsnp.feature_columns='M00099': feature column in this file but not in the " \
        "train file" in msg
    msg = bad_input(tmp_path, lambda f: f["validation"].drop(columns="M00007", inplace=True))
    assert "validation.feather: circuitsnp.feature_columns='M00007': feature column of the train file" in msg
    assert "missing from this file (11 feature columns here, 12 in the train file)" in msg


def test_config_checks():
    from seqmux.config import config_error  # noqa: F401  (the schema fills the section in the workflow)

    section = {"features": {"train": "a.feather", "validation": "", "test": ""}, "feature_columns": "^M",
               "label_columns": ["Y", "Y_alt"], "true_model": {"weights": [1.0]}, "motifs": 60}
    with pytest.raises(InputError, match=r"^config: circuitsnp.features.validation='': set all three"):
        cd.check_config(section)
    section["features"] = {"train": "", "validation": "", "test": ""}
    section["true_model"]["weights"] = [-1.0, -2.0]
    with pytest.raises(InputError, match=r"circuitsnp.true_model.weights=\[-1.0, -2.0\]: needs at least one positive"):
        cd.check_config(section, planted=12)
    section["true_model"]["weights"] = [1.0]
    section["label_columns"] = ["Y", "Y"]
    with pytest.raises(InputError, match="two distinct column names"):
        cd.check_config(section)


def test_cuda_asked_for_without_cuda_is_a_config_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match=r"^config: circuitsnp.device='cuda': CUDA is not available"):
        ct.train(tmp_path / "a.feather", tmp_path / "b.feather", *(tmp_path / n for n in "cdef"), [5, 5], 1e-3, 2,
                 1.0, 1, device="cuda")


def test_sampler_errors_name_this_tracks_keys(demo_dir, tmp_path):
    """A validation chromosome that is all N: the error names circuitsnp.windows.max_n, and nothing
    is written."""
    rng = np.random.default_rng(10)
    fasta = tmp_path / "user.fa"
    fasta.write_text("".join(f">chr{i}\n" + ("N" * 2000 if i == 7 else "".join(rng.choice(list("ACGT"), 2000))) + "\n"
                             for i in range(1, 10)))
    out = tmp_path / "out"
    outs = {s: out / f"{s}.feather" for s in cd.SPLITS}
    with pytest.raises(InputError, match=r"user.fa: circuitsnp.windows.max_n=10: chromosome chr7 yielded no window"):
        cd.features_from_sequence(fasta, demo_dir / "motifs.json", outs, *(out / n for n in "abcd"), 200, 10,
                                  {"train": 5, "validation": 5, "test": 5}, ["chr7"], ["chr8", "chr9"], 1, 12, 9.0,
                                  0.75, [1.0], 11.0)
    assert not out.exists() or not list(out.iterdir())


# --- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def track_run(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("circuitsnp_run"), TRACK_CONFIG, "circuitsnp")


def test_track_learns_and_beats_no_skill(track_run):
    out = track_run / "results/circuitsnp"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 1500 and m["n_validation"] == 500 and m["n_test"] == 800 and m["n_features"] == 24
    assert m["baseline_noskill_auroc"] == 0.5
    assert m["baseline_noskill_ap"] == pytest.approx(m["open_fraction_test"])
    assert m["converged"] is True and m["best_epoch"] < m["epochs_done"] <= 1500
    assert m["selected_model"] == min(("network", "logistic"), key=lambda k: m[f"{k}_validation_bce"])
    assert m["true_auroc"] > 0.75
    assert m["network_auroc"] > m["true_auroc"] - 0.06
    assert m["network_bce"] < m["baseline_noskill_bce"] - 0.03
    assert m["logistic_auroc"] > 0.7
    for split in ("train", "validation", "test"):
        assert 4 < m[f"closed_per_open_{split}"] < 25
    # the splits are in the source format, with the motif table beside them
    test = pd.read_feather(out / "test.feather")
    table = pd.read_csv(out / "features.tsv", sep="\t")
    assert list(test.columns) == list(table["matrix_id"]) + ["Y", "Y_alt"]
    assert ((test["Y"] + test["Y_alt"]) == 1).all() and set(np.unique(test.iloc[:, :-2])) <= {0, 1}
    assert table["planted"].sum() == TINY["genome"]["demo"].get("motifs", 12)
    assert (table["true_weight"] != 0).sum() == 5 and table.loc[table["true_weight"] != 0, "planted"].all()
    # one prediction per test row, in the file's order
    pred = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    assert list(pred.columns) == ["id", "label", "network", "logistic", "true"]
    assert list(pred["id"]) == list(range(1, len(test) + 1)) and np.array_equal(pred["label"], test["Y"])
    assert pred["network"].between(0, 1).all()
    split = pd.read_csv(out / "split.tsv", sep="\t")
    assert split["split"].value_counts().to_dict() == {"train": 1500, "test": 800, "validation": 500}
    log = pd.read_csv(out / "training_log.tsv", sep="\t")
    assert log["validation_loss"].idxmin() + 1 == m["best_epoch"] and len(log) == m["epochs_done"]
    for name in ("loss_curve.png", "roc_curve.png", "pr_curve.png"):
        assert (out / name).stat().st_size > 10000
    for rule in ("features_circuitsnp", "train_circuitsnp", "evaluate_circuitsnp", "score_snps_circuitsnp"):
        assert (track_run / f"logs/{rule}.log").exists() and (track_run / f"results/benchmarks/{rule}.tsv").exists()
    log = (track_run / "logs/features_circuitsnp.log").read_text()
    assert "closed:open = " in log and "true model intercept" in log


def test_destroying_snvs_score_negative_background_zero(track_run):
    out = track_run / "results/circuitsnp"
    scores = pd.read_csv(out / "snp_scores.tsv", sep="\t", keep_default_na=False)
    kinds = pd.read_csv(out / "simulated_variants.tsv", sep="\t")
    table = pd.read_csv(out / "features.tsv", sep="\t")
    positive = {f"{r.matrix_id}_{r.name}" for r in table.itertuples() if r.true_weight > 0}
    merged = scores.merge(kinds, on=["chrom", "pos", "ref", "alt"])
    assert len(merged) == len(scores) == 24
    destroy = merged[merged["kind"] == "destroying"]
    assert len(destroy) == 12
    for r in destroy.itertuples():  # each removes its own positive-weight motif from the window
        assert r.motif in r.motifs_lost.split(",") and r.motif in positive
    # the network learned that: clearly negative scores, as the true model's
    assert (destroy["score"] < -0.3).mean() >= 0.9 and destroy["score"].mean() < -1.0
    # the true model's score is negative unless the SNV also creates a site of another positive motif
    # (seen at seed 3: 2 of the 12 score 0, and some -1.0: a loss partly offset by a gain)
    assert (destroy["true_score"] <= 0).all() and (destroy["true_score"] < 0).mean() >= 0.8
    background = merged[merged["kind"] == "background"]
    unchanged = background[(background["motifs_lost"] == "") & (background["motifs_gained"] == "")]
    assert len(unchanged) >= 8 and (unchanged["score"] == 0).all() and (unchanged["p_ref"] == unchanged["p_alt"]).all()
    # score = logit(p_alt) - logit(p_ref)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert np.allclose(scores["score"], logit(scores["p_alt"]) - logit(scores["p_ref"]), atol=1e-6)
    m = json.loads((out / "metrics.json").read_text())
    assert m["snp_destroying_negative_fraction"] >= 0.9 and m["snp_scored"] == 24


def test_user_vcf_ref_mismatch_is_skipped(track_run, tmp_path):
    """A user VCF on the same genome, scored with the run's model: the REF mismatch is listed and
    skipped, as `seqmux predict --vcf` does; the good SNV is scored."""
    from seqmux.genome import open_fasta

    out = track_run / "results/circuitsnp"
    fasta = open_fasta(track_run / "resources/demo/genome.fa")
    base = fasta["chr8"][20000 - 1:20000].upper()
    wrong = "A" if base != "A" else "C"
    alt = "G" if base != "G" else "T"
    vcf = tmp_path / "calls.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"chr8\t20000\t.\t{base}\t{alt}\t.\t.\t.\nchr8\t20000\t.\t{wrong}\tT,G\t.\t.\t.\n"
                   "chr8\t21000\t.\tAC\tA\t.\t.\t.\n")
    table = ce.score_snps(vcf, track_run / "resources/demo/genome.fa", out / "model.pt", out / "motifs.json", "",
                          tmp_path / "scores.tsv", tmp_path / "skipped.tsv", 200, 0.75)
    assert len(table) == 1 and table.loc[0, "pos"] == 20000 and table.loc[0, "alt"] == alt
    skipped = pd.read_csv(tmp_path / "skipped.tsv", sep="\t")
    assert len(skipped) == 3 and skipped["reason"].str.startswith("REF mismatch").sum() == 2
    # a window that leaves the chromosome is an error naming the line
    vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"  # a VCF needs its header line
                   "chr8\t50\t.\tA\tC\t.\t.\t.\n")  # checked before the REF (here an N)
    with pytest.raises(InputError, match=r"calls.vcf:2: POS=50: the 200 bp window around it leaves chr8"):
        ce.score_snps(vcf, track_run / "resources/demo/genome.fa", out / "model.pt", out / "motifs.json", "",
                      tmp_path / "s2.tsv", tmp_path / "k2.tsv", 200, 0.75)
    assert not (tmp_path / "s2.tsv").exists()


def test_same_config_same_bytes(track_run, tmp_path):
    result = run_workflow(tmp_path, TRACK_CONFIG, "circuitsnp")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in MAIN_OUTPUTS:
        assert digest(track_run / "results/circuitsnp" / name) == digest(tmp_path / "results/circuitsnp" / name), name


def test_track_on_user_feather_files(tmp_path):
    """The source format (strings) with no other config change: trained and evaluated, no genome
    built, no SNP scoring."""
    frames = source_frames(np.random.default_rng(8), rows=(1200, 300, 600))
    paths = write_frames(frames, tmp_path / "user")
    config = deep_update(TINY, {"circuitsnp": {"features": paths}})
    result = run_workflow(tmp_path / "run", config, "circuitsnp")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run/results/circuitsnp"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 1200 and m["n_test"] == 600 and m["n_features"] == 12
    assert m["true_auroc"] is None and "snp_scored" not in m
    assert m["logistic_auroc"] > 0.75 and m["network_bce"] < m["baseline_noskill_bce"]
    assert not (tmp_path / "run/resources/demo/genome.fa").exists() and not (out / "snp_scores.tsv").exists()
    assert list(pd.read_feather(out / "train.feather").columns) == [f"M{i:05d}" for i in range(1, 13)] + ["Y", "Y_alt"]
    assert "no SNP scoring" in (tmp_path / "run/logs/evaluate_circuitsnp.log").read_text()


def test_bad_user_file_stops_the_run_in_one_line(tmp_path):
    frames = source_frames(np.random.default_rng(9))
    frames["test"].loc[3, "Y"] = 1
    frames["test"].loc[3, "Y_alt"] = 1
    paths = write_frames(frames, tmp_path / "user")
    result = run_workflow(tmp_path / "run", deep_update(TINY, {"circuitsnp": {"features": paths}}), "circuitsnp")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {paths['test']}: Y,Y_alt[row 3]=(1, 1): labels are not one-hot: exactly one of the "
                     "two must be 1, the other 0"]
    assert not list((tmp_path / "run/results/circuitsnp").glob("*.feather"))


def test_config_error_at_start(tmp_path):
    config = deep_update(TINY, {"circuitsnp": {"true_model": {"weights": [-1.0]}}})
    result = run_workflow(tmp_path, config, "circuitsnp", extra_args=["-n"])
    assert result.returncode != 0
    assert "config: circuitsnp.true_model.weights=[-1.0]: needs at least one positive weight" in \
        result.stderr + result.stdout


def test_dag_on_a_user_genome(tmp_path, demo_dir):
    """Features from sequence on the user's FASTA: no demo genome, no SNP scoring without a VCF;
    with a VCF, scoring without simulation."""
    config = deep_update(TINY, {"genome": {"fasta": str(demo_dir / "genome.fa")}})
    result = run_workflow(tmp_path, config, "circuitsnp", extra_args=["-n"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "features_circuitsnp" in result.stdout and "demo_genome" not in result.stdout
    assert "score_snps_circuitsnp" not in result.stdout
    vcf = tmp_path / "calls.vcf"
    vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\n")
    config = deep_update(config, {"circuitsnp": {"vcf": str(vcf)}})
    result = run_workflow(tmp_path, config, "circuitsnp", extra_args=["-n"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "score_snps_circuitsnp" in result.stdout and "simulate_vcf_circuitsnp" not in result.stdout


# --- convergence on a source-format case ----------------------------------------------------------

def test_default_schedule_converges_to_the_logistic_regression():
    """A source-format case (binary presence of 100 motifs, 4,500 windows, labels from a sparse
    logistic model): with the default settings (scikit-learn's L2 on the weights, its strength
    circuitsnp.model.c chosen on validation) the network stops on its own (converged) at its best
    validation epoch, and its test AUROC is within 0.03 of scikit-learn's logistic regression on the
    same split (measured: 0.816 with C = 0.01 against 0.818; without the penalty, 0.770: the 5-unit
    network overfits); with training disabled it sits at chance.
    benchmarks/circuitsnp_convergence.py measures the 12,000 x 300 case."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from circuitsnp_convergence import source_case
    from scipy.special import expit
    from sklearn.metrics import roc_auc_score

    train, c = track_section("circuitsnp")["train"], track_section("circuitsnp")["model"]["c"]
    x, y, _ = source_case(seed=3, n=4500, features=100, active=15, open_fraction=0.2)
    tr, va, te = slice(0, 3000), slice(3000, 3750), slice(3750, 4500)
    fits = [ct.fit_network(x[tr], y[tr], x[va], y[va], [5, 5], train["lr"], train["max_epochs"], 1,
                           patience=train["patience"], min_improvement=train["min_improvement"], c=v) for v in c]
    net, history, facts = min(fits, key=lambda fit: fit[2]["best_validation_loss"])  # as the training stage
    assert facts["converged"] and facts["epochs_done"] < train["max_epochs"]
    assert facts["best_epoch"] == int(history["validation_loss"].idxmin()) + 1
    logistic = cm.fit_logistic(x[tr], y[tr], train["logistic_c"])
    auc_lr = roc_auc_score(y[te], cm.logistic_probability(logistic, x[te]))
    auc_net = roc_auc_score(y[te], expit(cm.network_logit(net, x[te])))
    assert auc_lr > 0.8 and auc_net >= auc_lr - 0.03, (auc_net, auc_lr)

