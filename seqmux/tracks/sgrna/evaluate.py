"""sgRNA track, evaluation: test metrics of the network and the ridge baseline (alpha chosen on
validation), the base-effect maps and their heatmap."""

import logging

import numpy as np
import pandas as pd

from ...outputs import write_json, write_tsv
from ...plots import save_figure
from .data import _ROW_INDEX, ROWS, effects_frame, layout_of, load_encoded, read_effects, split_arrays
from .model import centre_effects, load_model, predict

log = logging.getLogger(__name__)


def correlations(pred, y):
    """``(Pearson, Spearman)`` of predictions and outcomes; NaN when either is constant."""
    from scipy.stats import pearsonr, spearmanr

    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) < 2 or np.ptp(pred) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(pearsonr(pred, y)[0]), float(spearmanr(pred, y)[0])


def effect_correlation(a, b):
    """Pearson correlation of two effect maps ``[4, P]`` over the entries finite in both, after
    centring each per position over those entries (NaN when one is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    a, b = centre_effects(np.where(both, a, 0.0), both), centre_effects(np.where(both, b, 0.0), both)
    a, b = a[both], b[both]
    if len(a) < 2 or not a.any() or not b.any():
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def fit_ridge(x_train, y_train, x_val, y_val, alphas):
    """Ridge regression (scikit-learn ``Ridge`` with an intercept) on the flattened one-hot
    ``[N, 4 * P]`` of the training guides, ``alpha`` the one of ``alphas`` with the lowest
    validation MSE (ties: the first). Returns ``(model, coefficients [4, P], validation MSE)``."""
    from sklearn.linear_model import Ridge

    x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    xv = np.asarray(x_val, dtype=np.float64).reshape(len(x_val), -1)
    best = None
    for alpha in alphas:
        ridge = Ridge(alpha=float(alpha)).fit(x, y_train)
        loss = float(np.mean((ridge.predict(xv) - y_val) ** 2))
        if best is None or loss < best[2]:
            best = (ridge, alpha, loss)
    ridge, _, loss = best
    return ridge, ridge.coef_.reshape(np.shape(x_train)[1], np.shape(x_train)[2]), loss


def guide_layout(section, length):
    """``[(label, first, last)]`` 1-based spans of the guide and the PAM inside ``length`` (cut to it)."""
    upstream, guide, pam = layout_of(section)
    spans = [("guide", upstream + 1, upstream + guide), ("PAM", upstream + guide + 1, upstream + guide + pam)]
    return [(label, a, min(b, length)) for label, a, b in spans if a <= length]


def plot_effect_map(maps, positions, length, spans, out):
    """Heatmap of base effects: one panel per ``{title: effects [4, P] (A,G,C,T)}``, rows A, C, G, T,
    x = 1-based positions ``1..length`` (dropped constant positions blank), the guide and PAM
    spans (``[(label, first, last)]``) marked above each panel, a diverging colour map centred at 0
    with one colour bar."""
    import matplotlib.pyplot as plt

    vmax = max(float(np.nanmax(np.abs(m))) for m in maps.values()) or 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#e0e0e0")
    fig, axes = plt.subplots(len(maps), 1, figsize=(max(7.0, 0.2 * length + 2), 2.2 * len(maps) + 0.6),
                             squeeze=False, sharex=True, gridspec_kw=dict(hspace=0.75))
    image = None
    for ax, (title, effects) in zip(axes[:, 0], maps.items()):
        grid = np.full((4, length), np.nan)
        grid[:, np.asarray(positions) - 1] = np.asarray(effects)[_ROW_INDEX]
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest",
                          extent=(0.5, length + 0.5, 3.5, -0.5))
        ax.set_yticks(range(4))
        ax.set_yticklabels(list(ROWS))
        ax.set_title(title, fontsize=9, loc="left", pad=24)
        for label, a, b in spans:
            ax.axvline(a - 0.5, color="black", lw=0.8)
            ax.axvline(b + 0.5, color="black", lw=0.8)
            ax.annotate("", (a - 0.5, -0.75), (b + 0.5, -0.75), annotation_clip=False,
                        arrowprops=dict(arrowstyle="|-|", lw=0.8, shrinkA=0, shrinkB=0))
            ax.text((a + b) / 2, -0.95, label, ha="center", va="bottom", fontsize=7)
    step = 1 if length <= 50 else 5
    axes[-1, 0].set_xticks(range(step, length + 1, step) if step > 1 else range(1, length + 1))
    axes[-1, 0].tick_params(axis="x", labelsize=6)
    axes[-1, 0].set_xlabel("position in the sequence (1-based; grey: constant in every guide, dropped)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="effect on the outcome (centred per position)", shrink=0.9)
    save_figure(fig, out)


def evaluate(encoded_path, model_path, metrics_out, effects_out, ridge_out, predictions_out, heatmap_out,
             section, truth_path=None):
    """Stage: the network's and the ridge baseline's test figures, base effects and their
    correlation (and, with the simulated truth, the recovery correlation); writes ``metrics.json``,
    ``base_effects.tsv``, ``ridge_effects.tsv``, ``test_predictions.tsv`` and the heatmap.

    The ridge alpha and ``selected_model`` (the lower validation MSE) are chosen on validation; the
    test guides are read here only."""
    data = load_encoded(encoded_path)
    model, scaling, positions, facts = load_model(model_path)
    x, y = data["onehot"], data["outcome"]
    masks = split_arrays(data)
    tr, va, te = masks["train"], masks["validation"], masks["test"]
    net = predict(model, scaling, x)
    ridge, ridge_coef, _ = fit_ridge(x[tr], y[tr], x[va], y[va], section["ridge_alphas"])
    lin = ridge.predict(x.reshape(len(x), -1).astype(np.float64))
    seen = x[tr | va].any(axis=0)  # [4, P]: bases that occur at each position in the guides fitted or chosen on
    effects = model.effects(seen) * (scaling["sd"] / scaling["target_sd"])  # outcome units
    ridge_effects = centre_effects(ridge_coef, seen)
    metrics = dict(zip(data["count_names"].tolist(), data["count_values"].tolist()))
    metrics.update({"n_guides": int(len(y)), "sequence_length": int(data["length"]),
                    "n_positions": int(len(positions)),
                    "n_constant_positions": int(data["length"]) - int(len(positions))})
    for name, pred in (("network", net), ("ridge", lin)):
        metrics[f"{name}_test_mse"] = float(np.mean((pred[te] - y[te]) ** 2))
        metrics[f"{name}_test_pearson"], metrics[f"{name}_test_spearman"] = correlations(pred[te], y[te])
        metrics[f"{name}_validation_mse"] = float(np.mean((pred[va] - y[va]) ** 2))
        metrics[f"{name}_train_mse"] = float(np.mean((pred[tr] - y[tr]) ** 2))
    metrics["baseline_mean_test_mse"] = float(np.mean((y[te] - y[tr].mean()) ** 2))
    metrics["selected_model"] = min(("network", "ridge"), key=lambda m: metrics[f"{m}_validation_mse"])
    metrics["converged"] = bool(facts.get("converged", True))
    metrics["best_step"], metrics["steps_done"] = facts.get("best_step"), facts.get("steps_done")
    metrics["ridge_alpha"] = float(ridge.alpha)
    metrics["network_inactive_weights"] = int((model.weight.detach().numpy().T[seen] <= 0).sum())
    metrics["unseen_bases"] = int((~seen).sum())
    metrics["network_vs_ridge_effect_pearson"] = effect_correlation(effects, ridge_effects)
    maps = {"network: beta_i relu(w_ib), centred per position": effects,
            f"ridge (alpha {ridge.alpha:g}): coefficients, centred per position": ridge_effects}
    metrics["true_effect_pearson"] = metrics["ridge_true_effect_pearson"] = None
    if truth_path:
        truth, truth_pos = read_effects(truth_path)
        aligned = align_effects(truth, truth_pos, positions)
        metrics["true_effect_pearson"] = effect_correlation(effects, aligned)
        metrics["ridge_true_effect_pearson"] = effect_correlation(ridge_effects, aligned)
        maps["simulated truth, centred per position"] = aligned
    write_tsv(effects_frame(effects, positions), effects_out, index=True)
    write_tsv(effects_frame(ridge_effects, positions), ridge_out, index=True)
    rows = np.flatnonzero(te)
    write_tsv(pd.DataFrame({"id": rows + 1, "outcome": y[te], "network": net[te], "ridge": lin[te]}), predictions_out)
    plot_effect_map(maps, positions, int(data["length"]), guide_layout(section, int(data["length"])), heatmap_out)
    write_json(metrics, metrics_out)
    log.info("test MSE: network %.5f, ridge %.5f, training mean %.5f; validation selected %s",
             metrics["network_test_mse"], metrics["ridge_test_mse"], metrics["baseline_mean_test_mse"],
             metrics["selected_model"])
    log.info("test Spearman: network %.3f, ridge %.3f; effects network vs ridge r = %.3f",
             metrics["network_test_spearman"], metrics["ridge_test_spearman"],
             metrics["network_vs_ridge_effect_pearson"])
    if truth_path:
        log.info("recovery of the true effects: network r = %.3f, ridge r = %.3f", metrics["true_effect_pearson"],
                 metrics["ridge_true_effect_pearson"])
    if not metrics["converged"]:
        log.warning("the network had not converged (best validation MSE at the last step): raise sgrna.train.steps")
    return metrics


def align_effects(effects, from_positions, to_positions):
    """Columns of ``effects [4, P]`` at ``from_positions`` picked at ``to_positions`` (0 where a
    position has no entry)."""
    out = np.full((4, len(to_positions)), np.nan)
    where = {int(p): k for k, p in enumerate(from_positions)}
    for k, p in enumerate(to_positions):
        if int(p) in where:
            out[:, k] = effects[:, where[int(p)]]
    return out
