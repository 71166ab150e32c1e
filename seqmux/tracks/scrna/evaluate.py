"""The trained models against scikit-learn's LogisticRegression on the same split and features.

Metrics of every model on the three splits (accuracy at probability 0.5, BCE, AUROC), the no-skill
baselines (the training majority class; the training prevalence as a constant probability), the
torch model that validation selects, the genes with the largest logistic weights, and the figures.
The test cells are read here only.
"""

import logging

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ...errors import InputError
from ...outputs import write_json, write_tsv
from ...plots import SERIES_COLOURS, plot_bars, plt, save_figure
from .train import MODELS, TITLES, load_models

log = logging.getLogger(__name__)

REFERENCE = "sklearn"
REFERENCE_TITLE = "scikit-learn LogisticRegression"
LOG_FLOOR = -100.0  # torch's BCELoss clamps each log at -100; the same here for every model
SPLITS = ("train", "validation", "test")


def split_arrays(cells):
    """``{split: (x [cells, genes] float32, y [cells] int)}`` of a processed AnnData."""
    split = cells.obs["split"].astype(str).to_numpy()
    x = np.asarray(cells.X, dtype=np.float32)
    y = cells.obs["target"].to_numpy().astype(np.int64)
    return {part: (x[split == part], y[split == part]) for part in SPLITS}


@torch.no_grad()
def predict(model, x):
    """Probabilities of the positive class, ``[cells]`` float64, from a torch model on the CPU."""
    return model(torch.from_numpy(np.ascontiguousarray(x))).reshape(-1).double().numpy()


def fit_reference(x, y, c):
    """scikit-learn's LogisticRegression (lbfgs, L2 with ``C = c``; no penalty when ``c`` is 0)
    fitted on ``x [cells, genes]``, ``y [cells]``; deterministic."""
    kwargs = {"C": c} if c else {"penalty": None}
    return LogisticRegression(max_iter=10000, tol=1e-6, **kwargs).fit(x, y)


def binary_cross_entropy(prob, target):
    """Mean BCE of probabilities ``prob [cells]`` against 0/1 ``target [cells]`` (nats per cell),
    each log clamped at -100 like torch's BCELoss."""
    prob, target = np.asarray(prob, dtype=np.float64), np.asarray(target, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(prob), LOG_FLOOR)
        log_q = np.maximum(np.log1p(-prob), LOG_FLOOR)
    return float(-np.mean(target * log_p + (1 - target) * log_q))


def scores(prob, target):
    """``{"accuracy", "bce", "auroc"}`` of probabilities ``prob [cells]`` for 0/1 ``target``."""
    return {"accuracy": float(np.mean((prob > 0.5) == (target == 1))), "bce": binary_cross_entropy(prob, target),
            "auroc": float(roc_auc_score(target, prob))}


def baselines(y_train, y_test):
    """No-skill figures on the test split: accuracy of always answering the training majority
    class, BCE of always answering the training prevalence."""
    prevalence = float(np.mean(y_train))
    majority = 1 if prevalence >= 0.5 else 0
    return {"baseline_majority_test_accuracy": float(np.mean(y_test == majority)),
            "baseline_prevalence_test_bce": binary_cross_entropy(np.full(len(y_test), prevalence), y_test)}


def selected_torch_model(results):
    """The torch model validation selects: the highest validation accuracy (ties: the lower
    validation BCE, then ``MODELS`` order). The test figures play no part."""
    return max(MODELS, key=lambda m: (results[m]["validation"]["accuracy"], -results[m]["validation"]["bce"],
                                      -MODELS.index(m)))


def class_means(cells, is_train):
    """Mean log CPM of each gene in the positive and in the negative training cells, ``([genes], [genes])``."""
    log_cpm = cells.layers["log_cpm"]
    target = cells.obs["target"].to_numpy()
    out = []
    for value in (1, 0):
        rows = np.flatnonzero(is_train & (target == value))
        block = log_cpm[rows]
        out.append(np.asarray(block.mean(axis=0)).reshape(-1) if sp.issparse(block) else block.mean(axis=0))
    return out


def top_genes(weights, reference_weights, genes, classes, mean_positive, mean_negative, k):
    """The ``k`` genes with the largest ``|weight|`` of the torch logistic model (``[genes]``):
    rank, gene, weight, the reference's weight, the class a high value favours, mean log CPM of
    each class in the training cells."""
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-np.abs(weights), kind="stable")[:k]
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1), "gene": np.asarray(genes)[order], "weight": weights[order],
        "sklearn_weight": np.asarray(reference_weights, dtype=np.float64)[order],
        "favours": [classes[0] if w > 0 else classes[1] for w in weights[order]],
        "mean_log_cpm_positive": mean_positive[order], "mean_log_cpm_negative": mean_negative[order]})


def plot_top_genes(table, classes, out):
    """Horizontal bars of the top genes' logistic weights (largest at the top), coloured by the
    class a high value favours."""
    weights = table["weight"].to_numpy()
    k = len(weights)
    fig, ax = plt.subplots(figsize=(6.5, 0.26 * k + 1.3))
    colours = [SERIES_COLOURS[0] if w > 0 else SERIES_COLOURS[1] for w in weights]
    ax.barh(np.arange(k), weights, color=colours)
    ax.set_yticks(np.arange(k))
    ax.set_yticklabels(list(table["gene"]), fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#525252", lw=0.8)
    ax.set_xlabel("weight of the torch logistic model (per scaled log CPM)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=SERIES_COLOURS[i]) for i in (0, 1)]
    ax.legend(handles, [f"favours {classes[0]}", f"favours {classes[1]}"], fontsize=8, loc="best")
    ax.set_title(f"{k} genes with the largest |weight|", fontsize=10)
    save_figure(fig, out)


def flat_metrics(results, info):
    """The flat ``metrics.json`` dict: ``info`` first, then ``<model>_<split>_<score>``."""
    metrics = dict(info)
    for name, by_split in results.items():
        for part in SPLITS:
            for key, value in by_split[part].items():
                metrics[f"{name}_{part}_{key}"] = value
    return metrics


def metrics_table(results, hidden, base):
    """One row per model (and the no-skill baseline): train and test accuracy, BCE, AUROC."""
    rows = []
    for name, by_split in results.items():
        title = REFERENCE_TITLE if name == REFERENCE else TITLES[name].format(hidden=hidden)
        row = {"model": name, "description": title}
        for part in SPLITS:
            row.update({f"{part}_{k}": v for k, v in by_split[part].items()})
        rows.append(row)
    rows.append({"model": "baseline", "description": "training majority class / prevalence",
                 "test_accuracy": base["baseline_majority_test_accuracy"],
                 "test_bce": base["baseline_prevalence_test_bce"],
                 "test_auroc": 0.5})
    return pd.DataFrame(rows)


def closing_note(metrics, classes):
    """The lines the log ends with: every model's figures, the selected torch model against the reference."""
    lines = [f"{classes[0]!r} (positive) vs {classes[1]!r}: {metrics['n_train']} train / "
             f"{metrics['n_validation']} validation / {metrics['n_test']} test cells, {metrics['n_genes']} genes"]
    for name in (*MODELS, REFERENCE):
        lines.append(f"{name:>10}: accuracy train {metrics[f'{name}_train_accuracy']:.4f} validation "
                     f"{metrics[f'{name}_validation_accuracy']:.4f} test {metrics[f'{name}_test_accuracy']:.4f}; "
                     f"test AUROC {metrics[f'{name}_test_auroc']:.4f}; test BCE {metrics[f'{name}_test_bce']:.4f}")
    lines.append(f"validation selected {metrics['selected_model']}: test accuracy "
                 f"{metrics['selected_test_accuracy']:.4f}, scikit-learn {metrics['sklearn_test_accuracy']:.4f} "
                 f"(difference {metrics['selected_minus_sklearn_test_accuracy']:+.4f}); majority class "
                 f"{metrics['baseline_majority_test_accuracy']:.4f}")
    return lines


def evaluate_scrna(cells_h5ad, models_pt, out_metrics, out_table, out_top_genes, out_top_plot, out_accuracy_plot,
                   out_predictions, c, top_k, hidden, lr, epochs):
    """Stage ``evaluate_scrna``: metrics (json and table), test predictions, top genes (table and
    plot), the bars of every model's test accuracy."""
    cells = anndata.read_h5ad(cells_h5ad)
    models, state = load_models(models_pt)
    if list(state["genes"]) != list(cells.var_names):
        raise InputError(models_pt, "scrna model", str(models_pt), f"trained on other genes than {cells_h5ad}")
    data = split_arrays(cells)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    classes = [str(k) for k in cells.obs["label"].cat.categories]
    results = {}
    for name in MODELS:
        results[name] = {part: scores(predict(models[name], x), y) for part, (x, y) in data.items()}
    reference = fit_reference(x_train, y_train, c)
    log.info("scikit-learn LogisticRegression: %d lbfgs iterations", int(reference.n_iter_[0]))
    results[REFERENCE] = {part: scores(reference.predict_proba(x)[:, 1], y) for part, (x, y) in data.items()}

    uns = cells.uns["scrna"]
    best = selected_torch_model(results)
    training = state.get("training", {})
    base = baselines(y_train, y_test)
    logistic_w = models["logistic"][0].weight.detach().double().numpy().reshape(-1)
    reference_w = reference.coef_.reshape(-1)
    is_train = cells.obs["split"].astype(str).to_numpy() == "train"
    info = {
        "source": str(uns["source"]), "cell_type_key": str(uns["cell_type_key"]), "positive_class": classes[0],
        "negative_class": classes[1], "counts": str(uns["counts"]),
        "recovery_max_deviation": float(uns["recovery_max_deviation"]) if "recovery_max_deviation" in uns else None,
        "n_cells_input": int(uns["n_cells_input"]), "n_genes_input": int(uns["n_genes_input"]),
        "n_cells": int(cells.n_obs), "n_genes": int(cells.n_vars),
        "n_genes_constant_in_train": int(cells.var["train_constant"].sum()),
        "n_train": int(len(y_train)), "n_validation": int(len(data["validation"][1])), "n_test": int(len(y_test)),
        "group_column": str(uns.get("group_column", "")),
        "train_positive": int(y_train.sum()), "train_negative": int(len(y_train) - y_train.sum()),
        "test_positive": int(y_test.sum()), "test_negative": int(len(y_test) - y_test.sum()),
        "max_epochs": int(epochs), "lr": float(lr), "c": float(c), "hidden": int(hidden),
        **base,
        "selected_model": best, "selected_test_accuracy": results[best]["test"]["accuracy"],
        "selected_minus_sklearn_test_accuracy": results[best]["test"]["accuracy"]
        - results[REFERENCE]["test"]["accuracy"],
        "converged": all(bool(training.get(m, {}).get("converged", True)) for m in MODELS),
        **{f"{m}_best_epoch": training.get(m, {}).get("best_epoch") for m in MODELS},
        "logistic_sklearn_weight_pearson": float(np.corrcoef(logistic_w, reference_w)[0, 1]),
    }
    metrics = flat_metrics(results, info)
    mean_pos, mean_neg = class_means(cells, is_train)
    genes = top_genes(logistic_w, reference_w, cells.var_names, classes, mean_pos, mean_neg, top_k)
    write_tsv(metrics_table(results, hidden, base), out_table)
    is_test = cells.obs["split"].astype(str).to_numpy() == "test"
    predictions = pd.DataFrame({"id": cells.obs_names[is_test].to_numpy(),
                                "label": cells.obs["label"].astype(str).to_numpy()[is_test], "target": y_test})
    for name in MODELS:
        predictions[name] = predict(models[name], x_test)
    predictions[REFERENCE] = reference.predict_proba(x_test)[:, 1]
    write_tsv(predictions, out_predictions)
    write_tsv(genes, out_top_genes)
    plot_top_genes(genes, classes, out_top_plot)
    names = [*MODELS, REFERENCE]
    plot_bars(names, [results[n]["test"]["accuracy"] for n in names], out_accuracy_plot, "test accuracy",
              title=f"{classes[0]} vs {classes[1]}: {len(y_test)} test cells",
              reference=(base["baseline_majority_test_accuracy"], "majority class"))
    write_json(metrics, out_metrics)
    for line in closing_note(metrics, classes):
        log.info("%s", line)
    return metrics
