"""sgRNA track: the package functions, the split of repeated guides and genes, bad inputs, a user's
own TSV, and the target rule end to end on a small config."""

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, deep_update, finished_run, run_workflow, track_section
from seqmux import BASES
from seqmux.errors import InputError
from seqmux.tracks.sgrna import data as D
from seqmux.tracks.sgrna import evaluate as E
from seqmux.tracks.sgrna import model as M
from seqmux.tracks.sgrna import train as T

DEFAULT = track_section("sgrna")
# the track on a small config: 600 simulated guides, 5,000 steps
SMALL = {"sgrna": {"simulate": {"guides": 600}, "train": {"steps": 5000, "record_every": 50}}}
FINAL = ["metrics.json", "base_effects.tsv", "ridge_effects.tsv", "test_predictions.tsv", "split.tsv",
         "base_effects.png", "training_log.tsv", "loss_curve.png"]
SPLIT = {"test_fraction": 0.2, "validation_fraction": 0.1, "group_column": ""}


def section(**extra):
    return deep_update(copy.deepcopy(DEFAULT), extra)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_guides(path, sequences, outcomes, seq_col="seq", out_col="mixture_probs"):
    with open(path, "w") as fh:
        fh.write(f"{seq_col}\t{out_col}\n")
        for s, y in zip(sequences, outcomes):
            fh.write(f"{s}\t{y}\n")
    return str(path)


# ---- encoding -----------------------------------------------------------------------------------

def test_onehot_keeps_bases_in_place_when_one_never_occurs(tmp_path):
    """Position 2 holds only A and C, position 3 is constant: explicit per-base columns keep every
    base where it is (the source's get_dummies + 'four columns at a time' shifted them)."""
    seqs = ["AAGT", "CCGA", "GAGC", "TCGG"]
    path = write_guides(tmp_path / "g.tsv", seqs, [0.1, 0.2, 0.3, 0.4])
    read, y, groups = D.read_guides(path, "seq", "mixture_probs")
    assert groups is None
    onehot = D.encode_onehot(read)
    assert onehot.shape == (4, 4, 4) and onehot.dtype == np.uint8
    for n, s in enumerate(seqs):
        for p, b in enumerate(s):
            assert onehot[n, BASES.index(b), p] == 1 and onehot[n, :, p].sum() == 1
    assert D.variable_positions(onehot).tolist() == [True, True, False, True]
    np.testing.assert_array_equal(y, [0.1, 0.2, 0.3, 0.4])


def test_lower_case_and_n_when_allowed(tmp_path):
    path = write_guides(tmp_path / "g.tsv", ["acgN", "ACGT"], [1, 2])
    seqs, _, _ = D.read_guides(path, "seq", "mixture_probs", allow_n=True)
    assert seqs == ["ACGN", "ACGT"]
    onehot = D.encode_onehot(seqs)
    assert onehot[0, :, 3].sum() == 0 and D.variable_positions(onehot).tolist() == [False, False, False, True]


def test_split_is_seeded_and_sized():
    seqs = [f"{i:012b}".replace("0", "A").replace("1", "C") for i in range(2073)]
    (a, _), (b, _), (c, _) = (D.split_guides(seqs, 0.2, 0.1, seed) for seed in (1, 1, 2))
    assert (a == "test").sum() == round(2073 * 0.2) == 415 and (a == "validation").sum() == 207
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def screens(n_genes=60, per_gene=8, seed=0):
    """Two screens of the same tiling guides (each guide listed twice, once per screen, as public
    screens list them): ``per_gene`` guides per gene, each the previous one shifted by 2 nt along the
    gene (they overlap), with a gene column. Returns ``(sequences, outcomes, genes)``."""
    rng = np.random.default_rng(seed)
    seqs, genes = [], []
    for g in range(n_genes):
        gene = "".join(rng.choice(list("ACGT"), size=20 + 2 * per_gene))
        for k in range(per_gene):
            seqs.append(gene[2 * k:2 * k + 20])
            genes.append(f"GENE{g}")
    outcome = rng.uniform(0, 1, size=2 * len(seqs))
    return seqs * 2, outcome, genes * 2


def test_repeated_guides_and_genes_stay_on_one_side(tmp_path):
    """A real-screen layout (every guide twice, overlapping guides of one gene): with the gene column
    no sequence and no gene is in two splits, and the metrics count the duplicates and genes."""
    seqs, y, genes = screens()
    path = tmp_path / "screens.tsv"
    pd.DataFrame({"seq": seqs, "score": y, "Target gene": genes}).to_csv(path, sep="\t", index=False)
    split = dict(SPLIT, group_column="Target gene")
    D.encode(path, tmp_path / "e.npz", tmp_path / "split.tsv", "seq", "score", False, split, 5)
    table = pd.read_csv(tmp_path / "split.tsv", sep="\t")
    assert table["id"].tolist() == list(range(1, len(seqs) + 1))
    table["seq"], table["gene"] = seqs, genes
    assert table.groupby("seq")["split"].nunique().max() == 1
    assert table.groupby("gene")["split"].nunique().max() == 1
    assert set(table["split"]) == {"train", "validation", "test"}
    assert abs((table["split"] == "test").mean() - 0.2) < 0.05
    data = D.load_encoded(tmp_path / "e.npz")
    counts = dict(zip(data["count_names"].tolist(), data["count_values"].tolist()))
    assert counts["n_duplicate_items"] == 480 and counts["n_groups"] == 60 and counts["n_linked_components"] == 60
    assert counts["n_test"] == (table["split"] == "test").sum()
    # without the gene column, identical sequences still stay together (a row split would leak them)
    D.encode(path, tmp_path / "e2.npz", tmp_path / "split2.tsv", "seq", "score", False, SPLIT, 5)
    rows = pd.read_csv(tmp_path / "split2.tsv", sep="\t").assign(seq=seqs)
    assert rows.groupby("seq")["split"].nunique().max() == 1


def test_npz_same_arrays_same_bytes(tmp_path):
    arrays = dict(x=np.arange(12, dtype=np.uint8).reshape(3, 4), y=np.linspace(0, 1, 3))
    D.write_npz(tmp_path / "a.npz", **arrays)
    D.write_npz(tmp_path / "b.npz", **arrays)
    assert digest(tmp_path / "a.npz") == digest(tmp_path / "b.npz")
    loaded = D.load_encoded(tmp_path / "a.npz")
    assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())


# ---- simulation -----------------------------------------------------------------------------------

def test_simulation_layout_and_truth_is_representable():
    """The source's layout (43 nt, the guide's G and the PAM's GG fixed: 40 variable positions); with
    no noise, each unclipped outcome is the mean plus the sum of the true centred effects of its
    bases, so the truth is exactly what the network can represent."""
    sec = section(simulate={"guides": 500, "noise_sd": 0.0})
    seqs, y, effects, positions, clipped = D.simulate_guides(sec, seed=4)
    assert len(seqs) == 500 and {len(s) for s in seqs} == {43}
    assert {s[10] for s in seqs} == {"G"} and {s[31:33] for s in seqs} == {"GG"}
    assert len({s[30] for s in seqs}) == 4  # the PAM's N varies
    assert positions.tolist() == [p for p in range(1, 44) if p not in (11, 32, 33)]
    assert effects.shape == (4, 40) and np.abs(effects.sum(axis=0)).max() < 1e-12
    assert y.min() >= 0 and y.max() <= 1 and clipped < 0.01
    onehot = D.encode_onehot(seqs)[:, :, positions - 1].astype(np.float64)
    expected = 0.5 + np.einsum("nbp,bp->n", onehot, effects)
    inside = (y > 0) & (y < 1)
    np.testing.assert_allclose(y[inside], expected[inside], atol=1e-12)
    # the effects grow towards the PAM (Rule-Set-like, scale 0.88-1 against 0.25): over five random
    # maps the last 5 guide positions beat the upstream flank
    near, flank = [], []
    for seed in range(5):
        size = np.abs(D.simulate_guides(sec, seed=seed)[2]).sum(axis=0)
        near.append(size[[positions.tolist().index(p) for p in range(26, 31)]].mean())
        flank.append(size[:10].mean())
    assert np.mean(near) > 2 * np.mean(flank)


def test_simulation_is_seeded():
    a, b, c = (D.simulate_guides(section(simulate={"guides": 50}), seed=s) for s in (1, 1, 2))
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[0] != c[0]


# ---- the network ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 5])
def test_sgd_step_equals_autograd(batch):
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.one_hot(torch.randint(4, (batch, 7), generator=gen), 4).float().transpose(1, 2)
    y = torch.randn(batch, generator=gen)
    model = M.PositionNetwork(7, init=0.3)
    with torch.no_grad():
        model.weight += 0.5 * torch.randn(7, 4, generator=gen)  # some negative: inactive through the ReLU
    reference = copy.deepcopy(model)
    loss = ((reference(x) - y) ** 2).mean()
    loss.backward()
    returned = T.sgd_step(model, x, y, lr=0.1)
    assert float(returned) == pytest.approx(float(loss.detach()), rel=1e-6)
    for name, p in reference.named_parameters():
        # float32 sums of a few terms of size ~1: agreement to a few ulps
        np.testing.assert_allclose(getattr(model, name).detach(), (p - 0.1 * p.grad).detach(), atol=1e-6)


def test_effects_pass_through_the_relu():
    """``beta_i relu(w_ib)``, centred: a negative weight contributes 0 (not beta * w)."""
    model = M.PositionNetwork(2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
        model.beta.copy_(torch.tensor([2.0, -1.0]))
    contrib = np.array([2.0, 0.0, 6.0, 0.0])
    np.testing.assert_allclose(model.effects()[:, 0], contrib - contrib.mean())
    np.testing.assert_allclose(model.effects()[:, 1], 0.0)


def test_initial_prediction_is_zero_and_fast_mse_agrees():
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.one_hot(torch.randint(4, (30, 9), generator=gen), 4).float().transpose(1, 2)
    model = M.PositionNetwork(9, init=0.4)
    assert float(model(x).detach().abs().max()) < 1e-6
    y = torch.randn(30, generator=gen)
    with torch.no_grad():
        model.weight += torch.randn(9, 4, generator=gen)
    fast = T.mse_position_major(model, x.permute(2, 0, 1).contiguous(), y)
    assert fast == pytest.approx(T.mse(model, x, y), rel=1e-5)


def test_training_recovers_simulated_effects():
    """Small simulation (500 guides, 3,000 steps of one guide): the learned map correlates with the
    truth and the test MSE beats predicting the training mean."""
    seqs, y, effects, positions, _ = D.simulate_guides(section(simulate={"guides": 500}), seed=2)
    x = D.encode_onehot(seqs)[:, :, positions - 1]
    test = D.split_guides(seqs, 0.2, 0.0001, 2)[0] == "test"
    model, scaling, curve, facts = T.train_network(x[~test], y[~test], x[test], y[test], steps=3000, eps=0.05,
                                                   batch_size=1, record_every=100, target_sd=2.0, seed=2)
    assert [c[0] for c in curve] == list(range(0, 3001, 100)) and facts["steps_done"] == 3000
    assert facts["best_step"] == min(curve, key=lambda c: c[2])[0]
    learned = model.effects() * scaling["sd"] / scaling["target_sd"]
    assert E.effect_correlation(learned, effects) > 0.9
    pred = M.predict(model, scaling, x[test])
    assert np.mean((pred - y[test]) ** 2) == pytest.approx(min(c[2] for c in curve), rel=1e-4)
    assert curve[-1][2] < 0.5 * np.mean((y[test] - y[~test].mean()) ** 2)


def test_minibatch_option_and_correlation_helpers():
    seqs, y, effects, positions, _ = D.simulate_guides(section(simulate={"guides": 300}), seed=3)
    x = D.encode_onehot(seqs)[:, :, positions - 1]
    test = D.split_guides(seqs, 0.2, 0.0001, 3)[0] == "test"
    model, scaling, curve, _ = T.train_network(x[~test], y[~test], x[test], y[test], steps=500, eps=0.05,
                                               batch_size=16, record_every=1000, target_sd=2.0, seed=3)
    assert [c[0] for c in curve] == [0, 500] and curve[1][1] < curve[0][1]
    shifted = effects + np.arange(effects.shape[1])[None, :]  # a per-position constant is not identifiable
    assert E.effect_correlation(shifted, effects) == pytest.approx(1.0)
    assert np.isnan(E.effect_correlation(np.ones((4, 3)), effects[:, :3]))
    masked = effects.copy()
    masked[0, 0] = np.nan  # left out of both, the rest re-centred
    assert E.effect_correlation(masked, shifted) == pytest.approx(1.0)
    seen = np.ones((4, 2), dtype=bool)
    seen[3, 1] = False
    centred = M.centre_effects(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [6.0, 9.0]]), seen)
    np.testing.assert_allclose(centred[:, 0], [-2, -1, 0, 3])
    np.testing.assert_allclose(centred[:3, 1], [-1, 0, 1])
    assert np.isnan(centred[3, 1])
    assert E.correlations([1, 2, 3], [2, 4, 7])[1] == pytest.approx(1.0)


def test_divergence_and_absent_cuda_are_one_line_errors(tmp_path):
    seqs, y, _, positions, _ = D.simulate_guides(section(simulate={"guides": 100}), seed=1)
    x = D.encode_onehot(seqs)[:, :, positions - 1]
    with pytest.raises(InputError, match=r"sgrna.train.lr=50.0: SGD diverged \(non-finite loss by step"):
        T.train_network(x[:80], y[:80], x[80:], y[80:], steps=200, eps=50.0, batch_size=1, record_every=10,
                        target_sd=2.0, seed=1)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="config: sgrna.device='cuda': CUDA is not available"):
            T.train(tmp_path / "absent.npz", tmp_path / "m.pt", tmp_path / "c.tsv", tmp_path / "c.png", 10, 0.05, 1,
                    5, 2.0, 1, device="cuda")


def test_ridge_on_the_same_onehot():
    seqs, y, effects, positions, _ = D.simulate_guides(section(simulate={"guides": 800}), seed=5)
    x = D.encode_onehot(seqs)[:, :, positions - 1]
    ridge, coef, loss = E.fit_ridge(x[:600], y[:600], x[600:], y[600:], [0.1, 1.0, 10.0])
    assert coef.shape == (4, 40) and ridge.alpha in (0.1, 1.0, 10.0)
    assert loss == pytest.approx(np.mean((ridge.predict(x[600:].reshape(200, -1).astype(float)) - y[600:]) ** 2))
    assert E.effect_correlation(coef, effects) > 0.95


def test_stages_twice_same_bytes(tmp_path):
    """simulate -> encode -> train -> evaluate, twice in the same config: the same bytes."""
    sec = section(simulate={"guides": 200})
    for run in ("a", "b"):
        d = tmp_path / run
        D.simulate(sec, 7, d / "guides.tsv", d / "true.tsv")
        D.encode(d / "guides.tsv", d / "encoded.npz", d / "split.tsv", "seq", "mixture_probs", False, SPLIT, 7)
        T.train(d / "encoded.npz", d / "model.pt", d / "curve.tsv", d / "curve.png", 400, 0.05, 1, 20, 2.0, 7,
                patience=5)
        E.evaluate(d / "encoded.npz", d / "model.pt", d / "metrics.json", d / "effects.tsv", d / "ridge.tsv",
                   d / "pred.tsv", d / "map.png", sec, d / "true.tsv")
    for name in ("guides.tsv", "true.tsv", "encoded.npz", "split.tsv", "model.pt", "curve.tsv", "metrics.json",
                 "effects.tsv", "ridge.tsv", "pred.tsv"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name


# ---- bad input (in the package: one InputError naming file, field, value) ----------------------------

GOOD = ["ACGTACGT", "CCGTAGGT", "GAGTCCGA", "TTGAACGC", "ACGAATGT"]


@pytest.mark.parametrize("header, rows, fragments", [
    ("sequence\tmixture_probs", [f"{s}\t0.5" for s in GOOD], ["sgrna.sequence_column='seq'", "no such column",
                                                               "sequence, mixture_probs"]),
    ("seq\tscore", [f"{s}\t0.5" for s in GOOD], ["sgrna.outcome_column='mixture_probs'", "no such column"]),
    ("seq\tmixture_probs", [f"{s}\t0.5" for s in GOOD[:2]] + ["ACGTACG\t0.5"],
     ["seq (row 3)='ACGTACG'", "length 7, but the first guide's is 8"]),
    ("seq\tmixture_probs", ["ACGTACGT\t0.5", "ACGXACGT\t0.5"], ["seq (row 2)='ACGXACGT'", "'X' at position 4"]),
    ("seq\tmixture_probs", ["ACGTACGT\t0.5", "ACGNACGT\t0.5"], ["'N' at position 4", "sgrna.allow_n: true"]),
    ("seq\tmixture_probs", [f"{GOOD[0]}\t0.5", f"{GOOD[1]}\t"], ["mixture_probs (row 2)=''", "missing outcome"]),
    ("seq\tmixture_probs", [f"{GOOD[0]}\t0.5", f"{GOOD[1]}\thigh"], ["mixture_probs (row 2)='high'", "not a number"]),
    ("seq\tmixture_probs", [f"{GOOD[0]}\tinf"], ["mixture_probs (row 1)='inf'", "not a finite number"]),
    ("seq\tmixture_probs", [f"{s}\t0.5" for s in GOOD], ["guides=", "split: fewer than 2"]),
])
def test_bad_guides(tmp_path, header, rows, fragments):
    path = tmp_path / "guides.tsv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "encoded.npz"
    with pytest.raises(InputError) as err:
        D.encode(path, out, tmp_path / "split.tsv", "seq", "mixture_probs", False, SPLIT, 1)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_empty_file(tmp_path):
    (tmp_path / "g.tsv").write_text("")
    with pytest.raises(InputError, match="empty file"):
        D.read_guides(tmp_path / "g.tsv", "seq", "mixture_probs")


@pytest.mark.parametrize("extra, fragment", [
    ({"outcome_column": "seq"}, "sgrna.outcome_column='seq': the same column as sgrna.sequence_column"),
    ({"layout": {"pam": "NXG"}}, "sgrna.layout.pam='NXG'"),
    ({"simulate": {"first_base": "U"}}, "sgrna.simulate.first_base='U'"),
    ({"data": "absent.tsv"}, "sgrna.data='absent.tsv': file not found"),
    ({"simulate": {"guides": 5}}, "sgrna.simulate.guides=5: too few for the split"),
    ({"split": {"group_column": "gene"}}, "sgrna.split.group_column='gene': the simulated default has no group"),
    ({"split": {"validation_fraction": 0.8}}, "sgrna.split.validation_fraction=0.8: with test_fraction=0.2"),
])
def test_check_config(extra, fragment):
    with pytest.raises(InputError) as err:
        D.check_config(section(**extra))
    assert str(err.value) == f"config: {fragment}" or str(err.value).startswith(f"config: {fragment}")


# ---- the target rule end to end ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def sgrna_run(tmp_path_factory):
    """`snakemake sgrna` on the simulated default, smaller (600 guides, 5,000 steps)."""
    return finished_run(tmp_path_factory.mktemp("sgrna_run"), deep_update(TINY, SMALL), "sgrna")


def test_target_rule_on_the_simulated_default(sgrna_run):
    out = sgrna_run / "results/sgrna"
    for name in FINAL + ["true_effects.tsv", "model.pt", "encoded.npz", "simulated_guides.tsv"]:
        assert (out / name).exists(), name
    guides = pd.read_csv(out / "simulated_guides.tsv", sep="\t")
    assert list(guides.columns) == ["seq", "mixture_probs"] and len(guides) == 600
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_guides"] == 600 and metrics["n_test"] == 120 and metrics["n_validation"] == 60
    assert metrics["n_train"] == 420 and metrics["n_positions"] == 40 and metrics["converged"] is True
    assert metrics["sequence_length"] == 43 and metrics["n_constant_positions"] == 3
    assert metrics["true_effect_pearson"] > 0.9 and metrics["ridge_true_effect_pearson"] > 0.9
    assert metrics["network_vs_ridge_effect_pearson"] > 0.9
    assert metrics["network_test_mse"] < 0.5 * metrics["baseline_mean_test_mse"]
    assert metrics["selected_model"] in ("network", "ridge")
    assert metrics["network_test_spearman"] > 0.5 and metrics["ridge_test_spearman"] > 0.5
    effects = pd.read_csv(out / "base_effects.tsv", sep="\t", index_col=0)
    truth = pd.read_csv(out / "true_effects.tsv", sep="\t", index_col=0)
    assert list(effects.index) == list("ACGT") == list(truth.index)
    assert list(effects.columns) == list(truth.columns) == [str(p) for p in range(1, 44) if p not in (11, 32, 33)]
    np.testing.assert_allclose(effects.sum(axis=0), 0, atol=1e-9)
    test = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    split = pd.read_csv(out / "split.tsv", sep="\t")
    assert list(test.columns) == ["id", "outcome", "network", "ridge"] and len(test) == 120
    assert test["id"].tolist() == split.loc[split["split"] == "test", "id"].tolist()
    assert test["outcome"].tolist() == guides["mixture_probs"].iloc[test["id"] - 1].tolist()
    assert np.mean((test["network"] - test["outcome"]) ** 2) == pytest.approx(metrics["network_test_mse"], rel=1e-9)
    curve = pd.read_csv(out / "training_log.tsv", sep="\t")
    assert list(curve.columns) == ["step", "train_loss", "validation_loss"] and curve["step"].iloc[0] == 0
    best = curve["validation_loss"].idxmin()
    assert curve["step"].iloc[best] == metrics["best_step"]  # the weights kept are the best validation record's
    assert curve["validation_loss"].iloc[best] == pytest.approx(metrics["network_validation_mse"], rel=1e-4)
    for rule in ("simulate_sgrna", "encode_sgrna", "train_sgrna", "evaluate_sgrna"):
        assert (sgrna_run / f"logs/{rule}.log").exists() and (sgrna_run / f"results/benchmarks/{rule}.tsv").exists()
    assert "recovery of the true effects" in (sgrna_run / "logs/evaluate_sgrna.log").read_text()


def test_users_tsv_with_other_columns_and_length(tmp_path):
    """A user's file: other column names, 30 nt, lower case, a constant position (5) and a position
    where T never occurs (8); only sgrna.data and the two column names change."""
    rng = np.random.default_rng(0)
    n, length = 400, 30
    tokens = rng.integers(0, 4, size=(n, length))
    tokens[:, 4] = 2
    tokens[:, 7] = rng.integers(0, 3, size=n)
    true = rng.normal(0, 0.3, size=(length, 4))
    score = true[np.arange(length), tokens].sum(axis=1) + rng.normal(0, 0.1, size=n)
    seqs = ["".join("ACGT"[t] for t in row).lower() for row in tokens]
    data = write_guides(tmp_path / "my_guides.tsv", seqs, np.round(score, 6), "sequence", "log2fc")
    frame = pd.read_csv(data, sep="\t")
    frame["gene"] = [f"g{i // 4}" for i in range(n)]  # four guides a gene
    frame.to_csv(data, sep="\t", index=False)
    config = deep_update(TINY, {"sgrna": {"data": data, "sequence_column": "sequence", "outcome_column": "log2fc",
                                          "split": {"group_column": "gene"},
                                          "train": {"steps": 3000, "record_every": 100}}})
    result = run_workflow(tmp_path, config, "sgrna")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results/sgrna"
    assert not (out / "true_effects.tsv").exists() and not (out / "simulated_guides.tsv").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["true_effect_pearson"] is None and metrics["sequence_length"] == 30
    assert metrics["n_positions"] == 29 and metrics["n_guides"] == n
    effects = pd.read_csv(out / "base_effects.tsv", sep="\t", index_col=0)
    assert list(effects.columns) == [str(p) for p in range(1, 31) if p != 5]
    ridge = pd.read_csv(out / "ridge_effects.tsv", sep="\t", index_col=0)
    # T never at position 8: no effect (empty), the others centred among themselves
    assert np.isnan(effects.loc["T", "8"]) and np.isnan(ridge.loc["T", "8"]) and metrics["unseen_bases"] == 1
    assert effects["8"].sum() == pytest.approx(0, abs=1e-9) and effects.notna().sum().sum() == 4 * 29 - 1
    truth = true.T.copy()  # [4, L], rows A, C, G, T
    truth[3, 7] = np.nan
    keep = [p - 1 for p in range(1, 31) if p != 5]
    assert E.effect_correlation(effects.to_numpy(), truth[:, keep]) > 0.9
    assert E.effect_correlation(ridge.to_numpy(), truth[:, keep]) > 0.9
    assert metrics["network_test_mse"] < metrics["baseline_mean_test_mse"] and metrics["n_groups"] == 100
    split = pd.read_csv(out / "split.tsv", sep="\t").assign(gene=frame["gene"])
    assert split.groupby("gene")["split"].nunique().max() == 1


def test_bad_user_file_stops_with_one_line(tmp_path):
    data = write_guides(tmp_path / "g.tsv", ["ACGTACGTAC"] * 5 + ["ACGTACGTA"] + ["ACGTACGTAC"] * 6, [0.5] * 12)
    result = run_workflow(tmp_path, deep_update(TINY, {"sgrna": {"data": data}}), "sgrna")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {data}: seq (row 6)='ACGTACGTA': length 9, but the first guide's is 10"]
    assert not list((tmp_path / "results").glob("sgrna/*"))


def test_config_checked_at_start(tmp_path):
    result = run_workflow(tmp_path, deep_update(TINY, {"sgrna": {"data": "absent.tsv"}}), "sgrna", "-n")
    assert result.returncode != 0
    assert "config: sgrna.data='absent.tsv': file not found" in result.stderr + result.stdout
    result = run_workflow(tmp_path, deep_update(TINY, {"sgrna": {"train": {"lr": 0}}}), "sgrna", "-n")
    assert result.returncode != 0 and "sgrna.train.lr=0" in result.stderr + result.stdout
