"""Single-cell track: counts recovery and checks, scanpy preprocessing and the train-only scaling,
the split, the three torch models against scikit-learn, bad inputs, and the track's target rule end
to end (the default, and an h5ad the test writes itself)."""

import hashlib
import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from conftest import TINY, deep_update, finished_run, run_workflow
from seqmux.errors import InputError
from seqmux.tracks import scrna
from seqmux.tracks.scrna import evaluate as ev
from seqmux.tracks.scrna import prepare as prep
from seqmux.tracks.scrna import train as tr

DEFAULT_CLASSES = ["Dendritic", "CD14+ Monocyte"]
# the default config (seed 1, as config/config.yaml), built by the track's target rule alone
DEFAULT_RUN = deep_update(TINY, {"seed": 1})
MAIN_OUTPUTS = ["cells.h5ad", "split.tsv", "model.pt", "training_log.tsv", "metrics.json", "metrics.tsv",
                "test_predictions.tsv", "top_genes.tsv", "loss_curve.png", "accuracy_curve.png", "test_accuracy.png",
                "top_genes.png"]
# the user's file: odd class names, counts in a layer, X something else, a third class to leave out
USER_CLASSES = ["T/NK+ cells", "B cells (naive)"]
USER_KEY = "cell type"


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_line_error(match):
    """pytest.raises for an InputError whose message is one line matching ``match``."""
    return pytest.raises(InputError, match=match)


def user_adata(seed=4, per_class=(70, 50, 30), genes=40, informative=8, raw=False):
    """An AnnData as a user might have it: integer counts in ``layers["umis"]`` (with ``raw``: in
    ``.raw.X`` instead, as CELLxGENE files keep them, and the cell types in ``author_cell_type``),
    log-normalised values in ``X``, the cell types in ``obs["cell type"]``, four donors; the first
    ``informative`` genes have a 3x higher rate in the first class (separable, not trivially)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([*USER_CLASSES, "Mono/Mac"], per_class)
    rates = rng.gamma(2.0, 2.0, size=genes)
    lam = np.tile(rates, (len(labels), 1))
    lam[labels == USER_CLASSES[0], :informative] *= 3.0
    counts = rng.poisson(lam).astype(np.int32)
    counts[:, -1] = 0  # a gene with no counts: filtered out
    obs = pd.DataFrame({USER_KEY: pd.Categorical(labels), "batch": rng.integers(0, 2, len(labels)),
                        "donor": [f"D{i % 8}" for i in range(len(labels))]},
                       index=[f"cell-{i:04d}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"GENE{i}" for i in range(genes)])
    adata = anndata.AnnData(X=np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32), obs=obs,
                            var=var)
    if raw:
        adata.raw = anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs.copy(), var=var.copy())
        adata.obs = adata.obs.rename(columns={USER_KEY: "author_cell_type"})
    else:
        adata.layers["umis"] = sp.csr_matrix(counts)
    return adata


def user_config(path, **extra):
    return {"h5ad": str(path), "cell_type_key": USER_KEY, "classes": USER_CLASSES, "counts": "umis", **extra}


# --- counts --------------------------------------------------------------------------------------

def test_recover_counts_inverts_log1p_of_normalised_counts():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(30, 50))).astype(np.float64)
    counts[0, :5] = [0, 1, 250, 3, 1]
    totals = counts.sum(1) * 3.0  # the normaliser is the cell's total over all genes, not only these
    log_norm = sp.csr_matrix(np.log1p(counts / totals[:, None] * 1e4).astype(np.float32))
    recovered, worst = prep.recover_counts(log_norm, totals.astype(np.float32))
    assert sp.isspmatrix_csr(recovered) and recovered.dtype == np.float32
    assert np.array_equal(recovered.toarray(), counts)
    assert 0 <= worst < 1e-4  # float32 storage: ~1e-7 relative
    with one_line_error(r"^scanpy.datasets.pbmc68k_reduced: raw.X=.*: recovered counts are not integers"):
        prep.recover_counts(log_norm * 1.01, totals)
    with one_line_error(r"raw.X=-.*: recovered counts are negative"):
        prep.recover_counts(-log_norm, totals)


def test_default_counts_are_integers_from_raw():
    adata, info = prep.load_default()
    assert adata.shape == (700, 765) and list(adata.var_names[:2]) == ["HES4", "TNFRSF4"]
    assert info["recovery_max_deviation"] < prep.RECOVERY_TOLERANCE
    x = adata.X.toarray()
    assert x.min() == 0 and np.array_equal(x, np.round(x)) and x.max() > 100
    # the recovered counts normalised back give .raw.X again (float32 rounding)
    bundled = sc.datasets.pbmc68k_reduced()
    again = np.log1p(x / bundled.obs["n_counts"].to_numpy()[:, None] * 1e4)
    assert np.abs(again - bundled.raw.X.toarray()).max() < 2e-3


@pytest.mark.parametrize("make", [np.asarray, sp.csr_matrix, sp.csc_matrix])
def test_check_counts_accepts_integers_dense_or_sparse(make):
    m = np.array([[0, 2, 0], [5, 0, 1]], dtype=np.float32)
    out = prep.check_counts(make(m), "f.h5ad", "X", ["a", "b"], ["g1", "g2", "g3"])
    assert sp.isspmatrix_csr(out) and np.array_equal(out.toarray(), m)
    assert np.array_equal(prep.check_counts(m.astype(np.int64), "f", "X", ["a", "b"], ["g1", "g2", "g3"]).toarray(), m)


@pytest.mark.parametrize("value,kind", [(-1.0, "negative"), (1.5, "not an integer"), (np.nan, "not an integer")])
@pytest.mark.parametrize("make", [np.asarray, sp.csr_matrix])
def test_check_counts_rejects_non_counts(value, kind, make):
    m = np.array([[0, 2, 0], [5, 0, 1]], dtype=np.float32)
    m[1, 2] = value
    with one_line_error(rf"^f.h5ad: scrna.counts='umis': not counts: value .* at cell 'b', gene 'g3' is {kind} "
                        r"\(1 such values"):
        prep.check_counts(make(m), "f.h5ad", "umis", ["a", "b"], ["g1", "g2", "g3"])


# --- preprocessing pieces ------------------------------------------------------------------------

def test_scaling_fitted_on_training_cells_only():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.5, size=(40, 6))
    x[:, 2] = 3.0            # constant everywhere
    x[:, 4] = 0.0
    x[30:, 4] = 7.0          # constant in the training cells (0..29), not in the test cells
    train = np.arange(40) < 30
    mean, std, constant = prep.fit_scaling(sp.csr_matrix(x[train]))
    assert list(constant) == [False, False, True, False, True, False]
    z = prep.apply_scaling(x, mean, std, constant)
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
    assert np.all(z[:, constant] == 0)
    live = ~constant
    assert np.allclose(z[train][:, live].mean(0), 0, atol=1e-6)
    assert np.allclose(z[train][:, live].std(0, ddof=1), 1, atol=1e-6)  # scanpy's convention: ddof=1
    expect = (x[~train][:, live] - x[train][:, live].mean(0)) / x[train][:, live].std(0, ddof=1)
    assert np.allclose(z[~train][:, live], expect, atol=1e-5)
    assert not np.allclose(z[~train][:, live].mean(0), 0, atol=0.05)  # test cells are not re-centred
    # the training cells get exactly what sc.pp.scale gives them
    ref = anndata.AnnData(x[train].astype(np.float32))
    sc.pp.scale(ref)
    assert np.allclose(z[train], ref.X, atol=1e-5)


def test_stratified_split_is_seeded_and_keeps_class_proportions():
    target = np.array([1] * 240 + [0] * 129)
    a, b, c = (prep.stratified_split(target, 0.3, s, 0.15) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for part, fraction in (("test", 0.3), ("validation", 0.15)):
        n = ((a == part) & (target == 1)).sum(), ((a == part) & (target == 0)).sum()
        assert abs(n[0] - fraction * 240) <= 1 and abs(n[1] - fraction * 129) <= 1
    assert (a == "test").sum() == 111 and (a == "validation").sum() == 55  # ceil(0.3 * 369), round(0.15 * 369)


def test_grouped_split_keeps_each_donor_on_one_side(tmp_path):
    path = tmp_path / "user.h5ad"
    user_adata().write_h5ad(path)
    cells = prep.preprocess(str(path), USER_KEY, USER_CLASSES, "umis", 1, 0.25, 3, 0.25, "donor")
    by_donor = cells.obs.groupby("donor", observed=True)["split"].nunique()
    assert by_donor.max() == 1 and set(cells.obs["split"]) == {"train", "validation", "test"}
    with one_line_error(r"scrna.split.group_column='donors': no such obs column"):
        prep.preprocess(str(path), USER_KEY, USER_CLASSES, "umis", 1, 0.25, 3, 0.25, "donors")


def test_cells_needed():
    assert prep.cells_needed(0.3, 0.3) == 7 and prep.cells_needed(0.25, 0.25) == 8
    assert prep.cells_needed(0.3, 0.15) == 14
    prep.check_class_sizes({"a": 14, "b": 100}, 0.3, 0.15, "f")
    with one_line_error(r"^f: scrna.classes='a': 13 cells: test_fraction=0.3, validation_fraction=0.15 needs at "
                        r"least 14"):
        prep.check_class_sizes({"a": 13, "b": 100}, 0.3, 0.15, "f")


def test_preprocess_a_user_h5ad(tmp_path):
    path = tmp_path / "user.h5ad"
    user_adata().write_h5ad(path)
    cells = prep.preprocess(str(path), USER_KEY, USER_CLASSES, "umis", 1, 0.25, seed=3)
    assert cells.n_obs == 120 and cells.n_vars == 39  # the third class left out, the empty gene filtered
    assert list(cells.obs["label"].cat.categories) == USER_CLASSES
    assert np.array_equal(cells.obs["target"].to_numpy(), (cells.obs[USER_KEY] == USER_CLASSES[0]).to_numpy())
    assert (cells.obs["split"] == "test").sum() == 30
    counts = cells.layers["counts"].toarray()
    raw = user_adata().layers["umis"].toarray()[:120, :39]
    assert np.array_equal(counts, raw)  # the layer, not X
    cpm = np.expm1(cells.layers["log_cpm"].toarray())
    assert np.allclose(cpm.sum(1), 1e6, rtol=1e-4)
    assert np.allclose(cpm, counts / counts.sum(1, keepdims=True) * 1e6, rtol=1e-4, atol=1e-2)
    assert cells.uns["scrna"]["counts"] == "layers[umis]" and "recovery_max_deviation" not in cells.uns["scrna"]


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "user.h5ad"
    user_adata().write_h5ad(path)
    return path


def test_bad_h5ad_missing_or_unreadable(tmp_path):
    with one_line_error(r"^.*nothere.h5ad: scrna.h5ad='.*nothere.h5ad': file not found$"):
        prep.read_h5ad(str(tmp_path / "nothere.h5ad"))
    bad = tmp_path / "bad.h5ad"
    bad.write_text("obs_name,cell type\n")
    with one_line_error(r"^.*bad.h5ad: scrna.h5ad='.*bad.h5ad': not a readable h5ad file \("):
        prep.read_h5ad(str(bad))


@pytest.mark.parametrize("change,match", [
    ({"cell_type_key": "celltype"},
     r"scrna.cell_type_key='celltype': no such obs column \(columns: 'cell type', 'batch', 'donor'\)"),
    ({"classes": ["T/NK+ cells", "B cells"]}, r"scrna.classes='B cells': no cell has obs\['cell type'\] == this class"),
    ({"counts": "counts"}, r"scrna.counts='counts': no such layer \(layers: 'umis'; or X\)"),
    ({"counts": "X"}, r"scrna.counts='X': not counts: value .* at cell 'cell-0000', gene 'GENE\d+' is not an integer"),
    ({"min_counts": 10**9}, r"scrna.min_counts=1000000000: no gene is left: none of the 40 genes has this many counts"),
    ({"test_fraction": 0.82}, r"scrna.classes='B cells \(naive\)': 50 cells: test_fraction=0.82, "
                              r"validation_fraction=0.15 needs at least 67"),
])
def test_bad_user_config(user_file, change, match):
    args = {"h5ad": str(user_file), "cell_type_key": USER_KEY, "classes": USER_CLASSES, "counts": "umis",
            "min_counts": 1, "test_fraction": 0.25, **change}
    with one_line_error(rf"^{user_file}: {match}") as info:
        prep.preprocess(args["h5ad"], args["cell_type_key"], args["classes"], args["counts"], args["min_counts"],
                        args["test_fraction"], seed=1)
    assert "\n" not in str(info.value)


def test_bad_small_class(tmp_path):
    path = tmp_path / "small.h5ad"
    user_adata(per_class=(70, 5, 3)).write_h5ad(path)
    with one_line_error(r"scrna.classes='B cells \(naive\)': 5 cells: test_fraction=0.25, validation_fraction=0.15 "
                        r"needs at least 14"):
        prep.preprocess(str(path), USER_KEY, USER_CLASSES, "umis", 1, 0.25, seed=1)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_bad_duplicate_cell_names(tmp_path):
    adata = user_adata()
    adata.obs_names = ["same"] + list(adata.obs_names[1:-1]) + ["same"]
    path = tmp_path / "dup.h5ad"
    adata.write_h5ad(path)
    with one_line_error(r"obs_names='same': cell names must be unique"):
        prep.preprocess(str(path), USER_KEY, USER_CLASSES, "umis", 1, 0.25, seed=1)


def test_config_checks(tmp_path):
    section = {"h5ad": "", "cell_type_key": "bulk_labels", "classes": DEFAULT_CLASSES, "counts": "X",
               "split": {"test_fraction": 0.3, "validation_fraction": 0.15, "group_column": ""}}
    scrna.check_config(section)
    for change, match in [({"classes": ["A", "A"]}, r"^config: scrna.classes=\['A', 'A'\]: the two classes must"),
                          ({"classes": ["A"]}, r"scrna.classes=\['A'\]: give exactly two"),
                          ({"h5ad": str(tmp_path / "x.h5ad")}, r"scrna.h5ad='.*x.h5ad': file not found"),
                          ({"cell_type_key": ""}, r"scrna.cell_type_key='': name an obs column"),
                          ({"split": {"test_fraction": 0.5, "validation_fraction": 0.5, "group_column": ""}},
                           r"scrna.split.validation_fraction=0.5: with test_fraction=0.5 nothing is left")]:
        with one_line_error(match):
            scrna.check_config({**section, **change})


# --- models --------------------------------------------------------------------------------------

def toy_data(seed=0, n=80, genes=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, genes, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.7 * torch.randn(n, generator=g) > 0).float()[:, None]
    return {"train": (x[:60], y[:60]), "validation": (x[60:], y[60:])}


def test_layer_list_is_the_same_network_as_the_mlp():
    data = toy_data()
    mlp, listed = tr.make_model("mlp", 12, 5, seed=2), tr.make_model("layer_list", 12, 5, seed=2)
    assert isinstance(listed.layers, torch.nn.ModuleList) and len(listed.layers) == 4
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), listed.parameters()))
    assert not torch.equal(tr.make_model("mlp", 12, 5, seed=3)[0].weight, mlp[0].weight)
    h_mlp, f_mlp = tr.train_model(mlp, data, lr=0.05, epochs=30, c=1.0)
    h_list, f_list = tr.train_model(listed, data, lr=0.05, epochs=30, c=1.0)
    assert f_mlp == f_list and f_mlp["epochs_done"] == 30
    for key in tr.HISTORY:
        assert np.array_equal(h_mlp[key], h_list[key]), key
    assert len(h_mlp["train_loss"]) == 31 and h_mlp["train_loss"][-1] < h_mlp["train_loss"][0] - 0.1


def test_history_matches_the_model_and_torch_state_is_untouched():
    data = toy_data(1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    model = tr.make_model("logistic", 12, 5, seed=1)
    assert torch.equal(torch.rand(1), before)  # make_model forks the global RNG
    h, facts = tr.train_model(model, data, lr=0.05, epochs=200, c=0.0, patience=10)
    best = facts["best_epoch"]
    assert facts["epochs_done"] == best + 10 < 200 and facts["converged"]  # stopped by patience
    assert len(h["train_loss"]) == facts["epochs_done"] + 1
    assert best == int(np.argmin(h["validation_loss"]))
    with torch.no_grad():
        p = model(data["validation"][0])  # the model holds the best validation epoch's weights
    assert h["validation_loss"][best] == pytest.approx(tr.bce(p, data["validation"][1]).item(), rel=1e-6)
    expect_acc = ((p > 0.5).float() == data["validation"][1]).float().mean().item()
    assert h["validation_accuracy"][best] == pytest.approx(expect_acc, abs=1e-7)
    assert h["train_accuracy"][best] > 0.8


@pytest.mark.parametrize("c", [1.0, 0.05])
def test_torch_objective_is_sklearns_divided_by_cells(c):
    """scikit-learn's optimum is a stationary point of the torch logistic objective with the same C
    (and not of the objective with another C)."""
    data = toy_data(2, n=200)
    x, y = data["train"][0].double(), data["train"][1].double()
    ref = ev.fit_reference(x.numpy(), y.numpy().ravel().astype(int), c)

    def gradient(c_torch):
        model = tr.build_model("logistic", 12, 1).double()
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(ref.coef_))
            model[0].bias.copy_(torch.from_numpy(ref.intercept_))
        loss = tr.bce(model(x), y) + tr.l2_penalty(model, c_torch, len(x))
        loss.backward()
        return max(model[0].weight.grad.abs().max().item(), model[0].bias.grad.abs().max().item())

    assert gradient(c) < 1e-5
    assert gradient(c * 4) > 1e-3


def test_scores_and_baselines():
    prob = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0])
    s = ev.scores(prob, y)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["auroc"] == pytest.approx(8 / 9)  # 8 of the 9 positive-negative pairs ordered right
    expect = torch.nn.functional.binary_cross_entropy(torch.tensor(prob), torch.tensor(y, dtype=torch.float64))
    assert s["bce"] == pytest.approx(expect.item(), rel=1e-12)
    assert ev.binary_cross_entropy(np.array([0.0]), np.array([1])) == pytest.approx(100.0)  # torch's clamp
    base = ev.baselines(np.array([1, 1, 0]), np.array([1, 0, 0, 0]))
    assert base["baseline_majority_test_accuracy"] == 0.25
    assert base["baseline_prevalence_test_bce"] == pytest.approx(-(np.log(2 / 3) + 3 * np.log(1 / 3)) / 4)


def test_top_genes_rank_by_absolute_weight():
    table = ev.top_genes(np.array([0.1, -0.5, 0.3, 0.0]), np.array([1, 2, 3, 4]), ["a", "b", "c", "d"], ["P", "N"],
                         np.zeros(4), np.ones(4), 3)
    assert list(table["gene"]) == ["b", "c", "a"] and list(table["favours"]) == ["N", "P", "P"]
    assert list(table["sklearn_weight"]) == [2, 3, 1] and list(table["rank"]) == [1, 2, 3]


# --- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("scrna_default"), DEFAULT_RUN, "scrna")


def test_default_run(default_run):
    out = default_run / "results/scrna"
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_cells_input"], m["n_genes_input"], m["n_cells"]) == (700, 765, 369)
    assert (m["positive_class"], m["negative_class"]) == tuple(DEFAULT_CLASSES)
    assert m["train_positive"] + m["test_positive"] <= 240 and m["train_negative"] + m["test_negative"] <= 129
    assert (m["n_train"], m["n_validation"], m["n_test"]) == (203, 55, 111) and 0 < m["n_genes"] <= 765
    assert m["recovery_max_deviation"] < 1e-3 and m["converged"] is True
    # a trained model: the torch model validation selects within 0.03 of scikit-learn on the same split
    assert abs(m["selected_minus_sklearn_test_accuracy"]) <= 0.03
    chosen = max(tr.MODELS, key=lambda k: (m[f"{k}_validation_accuracy"], -m[f"{k}_validation_bce"]))
    assert m["selected_model"] == chosen and m["selected_test_accuracy"] == m[f"{chosen}_test_accuracy"]
    for k in (*tr.MODELS, "sklearn"):
        assert m[f"{k}_test_accuracy"] > m["baseline_majority_test_accuracy"] + 0.15
        assert m[f"{k}_test_auroc"] > 0.9 and m[f"{k}_test_bce"] < m["baseline_prevalence_test_bce"]
    assert m["mlp_test_accuracy"] == m["layer_list_test_accuracy"] and m["mlp_test_bce"] == m["layer_list_test_bce"]
    assert m["logistic_sklearn_weight_pearson"] > 0.5  # early-stopped on validation, not at the L2 optimum
    # the AnnData opens in anndata / scanpy, with the split in obs, matching split.tsv
    cells = anndata.read_h5ad(out / "cells.h5ad")
    split = pd.read_csv(out / "split.tsv", sep="\t")
    assert list(split.columns) == ["id", "split", "label", "target"]
    assert list(split["id"]) == list(cells.obs_names)
    assert list(split["split"]) == list(cells.obs["split"].astype(str))
    assert list(split["label"]) == list(cells.obs["bulk_labels"].astype(str))
    assert set(split["label"]) == set(DEFAULT_CLASSES)
    assert cells.shape == (369, m["n_genes"]) and np.all(np.isfinite(cells.X))
    train = (cells.obs["split"] == "train").to_numpy()
    assert np.allclose(cells.X[train].mean(0), 0, atol=1e-5)
    curves = pd.read_csv(out / "training_log.tsv", sep="\t")
    for k in tr.MODELS:
        best = curves[(curves["model"] == k) & (curves["epoch"] == m[f"{k}_best_epoch"])].iloc[0]
        assert best["validation_loss"] == curves.loc[curves["model"] == k, "validation_loss"].min()
        assert best["validation_accuracy"] == pytest.approx(m[f"{k}_validation_accuracy"], abs=1e-6)
    predictions = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    assert list(predictions["id"]) == list(split.loc[split["split"] == "test", "id"])
    for k in (*tr.MODELS, "sklearn"):
        assert np.mean((predictions[k] > 0.5) == (predictions["target"] == 1)) == pytest.approx(m[f"{k}_test_accuracy"])
    genes = pd.read_csv(out / "top_genes.tsv", sep="\t")
    assert len(genes) == 20 and set(genes["gene"]) <= set(cells.var_names)
    assert np.all(np.diff(genes["weight"].abs()) <= 0)
    table = pd.read_csv(out / "metrics.tsv", sep="\t").set_index("model")
    assert table.loc["sklearn", "test_auroc"] == pytest.approx(m["sklearn_test_auroc"])
    log = (default_run / "logs/evaluate_scrna.log").read_text()
    assert "validation selected" in log and "sklearn: accuracy train" in log
    for name in MAIN_OUTPUTS:
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp"))


def test_same_config_same_bytes(default_run, tmp_path):
    result = run_workflow(tmp_path, DEFAULT_RUN, "scrna")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in MAIN_OUTPUTS:
        assert digest(default_run / "results/scrna" / name) == digest(tmp_path / "results/scrna" / name), name


def test_normalised_x_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "cellxgene.h5ad"
    user_adata(raw=True).write_h5ad(path)
    with one_line_error(r"scrna.counts='X': not counts: .* is not an integer .*the matrix looks normalised: set "
                        r"scrna.counts to where the integer counts are \(layers: none; or X, raw\)"):
        prep.preprocess(str(path), "author_cell_type", USER_CLASSES, "X", 1, 0.25, seed=1)
    with one_line_error(r"scrna.counts='raw': the file has no .raw \(layers: 'umis'; or X\)"):
        user_adata().write_h5ad(tmp_path / "plain.h5ad")
        prep.preprocess(str(tmp_path / "plain.h5ad"), USER_KEY, USER_CLASSES, "raw", 1, 0.25, seed=1)


def test_track_on_a_user_h5ad(tmp_path):
    """A CELLxGENE-style file (normalised X, integer counts in .raw, cell types in author_cell_type,
    its own class names): only h5ad, cell_type_key, classes and counts: raw are set."""
    path = tmp_path / "user data" / "cells.h5ad"
    path.parent.mkdir()
    user_adata(raw=True).write_h5ad(path)
    config = deep_update(TINY, {"scrna": {"h5ad": str(path), "cell_type_key": "author_cell_type",
                                          "classes": USER_CLASSES, "counts": "raw"}})
    result = run_workflow(tmp_path / "run", config, "scrna")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run/results/scrna"
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_cells_input"], m["n_cells"], m["n_genes"]) == (150, 120, 39)
    assert m["positive_class"] == USER_CLASSES[0] and m["counts"] == "raw"
    assert m["recovery_max_deviation"] is None and m["source"] == str(path)
    assert m["n_test"] == 36 and m["test_positive"] == 21  # ceil(0.3 * 120), stratified
    assert m["n_validation"] == 18
    # the toy classes are nearly separable: the logistic model's validation BCE may still fall at
    # max_epochs; then metrics and log say so
    warned = "had not converged" in (tmp_path / "run/logs/train_scrna.log").read_text()
    assert m["converged"] is not warned
    assert m["sklearn_test_auroc"] > 0.9 and m["mlp_test_auroc"] > 0.9
    genes = pd.read_csv(out / "top_genes.tsv", sep="\t")
    informative = {f"GENE{i}" for i in range(8)}
    # the planted genes lead the genes favouring the first class (the others' CPM falls when they
    # rise, so some uninformative genes get negative weights)
    assert set(genes.loc[genes["weight"] > 0, "gene"][:5]) <= informative
    assert set(genes.loc[genes["gene"].isin(informative), "favours"]) == {USER_CLASSES[0]}
    cells = anndata.read_h5ad(out / "cells.h5ad")
    assert set(cells.obs["author_cell_type"].astype(str)) == set(USER_CLASSES)
    assert np.array_equal(cells.layers["counts"].toarray(), user_adata(raw=True).raw.X.toarray()[:120, :39])


def test_bad_user_file_stops_the_run_in_one_line(tmp_path):
    adata = user_adata()
    counts = adata.layers["umis"].toarray()
    counts[3, 5] = -2
    adata.layers["umis"] = sp.csr_matrix(counts)
    path = tmp_path / "neg.h5ad"
    adata.write_h5ad(path)
    result = run_workflow(tmp_path / "run", deep_update(TINY, {"scrna": user_config(path)}), "scrna")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {path}: scrna.counts='umis': not counts: value -2 at cell 'cell-0003', gene 'GENE5' "
                     "is negative (1 such values; counts must be non-negative integers)"]
    out = tmp_path / "run/results/scrna"
    assert not out.exists() or not list(out.iterdir())


def test_config_error_at_start(tmp_path):
    config = deep_update(TINY, {"scrna": {"classes": ["Dendritic", "Dendritic"]}})
    result = run_workflow(tmp_path, config, "scrna", extra_args=["-n"])
    assert result.returncode != 0  # Snakemake prints a dry run's start-up error on stdout
    expect = "config: scrna.classes=['Dendritic', 'Dendritic']: the two classes must differ"
    assert expect in result.stdout + result.stderr
    config = deep_update(TINY, {"scrna": {"train": {"max_epochs": 0}}})
    result = run_workflow(tmp_path, config, "scrna", extra_args=["-n"])
    assert result.returncode != 0 and "scrna.train.max_epochs=0" in result.stdout + result.stderr
