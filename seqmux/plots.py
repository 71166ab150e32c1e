"""Figures of the Multiplexer stages (matplotlib, Agg backend; one PNG per function)."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from . import BASES  # noqa: E402

BASE_COLOURS = {"A": "#2ca02c", "G": "#ff7f0e", "C": "#1f77b4", "T": "#d62728", "N": "#bbbbbb"}


def _save(fig, out):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_loss_curve(csv_path, out):
    """Training loss per step (and its running mean) and validation loss, log scale."""
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        step = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["train_loss"]) for r in rows])
        ax.plot(step, loss, color="#9ecae1", lw=0.6, label="train (per step)")
        k = max(1, min(50, len(loss) // 10))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1:], smooth, color="#08519c", lw=1.5, label=f"train (mean of {k} steps)")
        val = [(int(r["step"]), float(r["validation_loss"])) for r in rows if r["validation_loss"]]
        if val:
            vs, vl = zip(*val)
            ax.plot(vs, vl, "o-", color="#d94801", ms=4, label="validation")
            best = int(np.argmin(vl))
            ax.axvline(vs[best], color="#d94801", ls=":", lw=1)
            ax.annotate(f"best {vl[best]:.4g}\nstep {vs[best]}", (vs[best], vl[best]), textcoords="offset points",
                        xytext=(5, 10), fontsize=8)
        if np.all(loss > 0):
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_title("Multiplexer training")
    ax.legend(fontsize=8)
    _save(fig, out)


def plot_hexbin(pred, exact, out, title="", max_points=2_000_000, seed=0):
    """Predicted vs exact effects (non-identity entries, flat arrays), hexbin with log counts."""
    pred, exact = np.asarray(pred, dtype=np.float32).ravel(), np.asarray(exact, dtype=np.float32).ravel()
    if len(pred) > max_points:
        idx = np.random.default_rng(seed).choice(len(pred), max_points, replace=False)
        pred, exact = pred[idx], exact[idx]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(pred):
        lo = float(min(exact.min(), pred.min()))
        hi = float(max(exact.max(), pred.max()))
        hb = ax.hexbin(exact, pred, gridsize=80, norm=LogNorm(), cmap="viridis", mincnt=1,
                       extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=ax, label="substitutions")
        ax.plot([lo, hi], [lo, hi], color="#d62728", lw=0.8, ls="--")
    ax.set_xlabel("exact ISM effect")
    ax.set_ylabel("Multiplexer prediction")
    ax.set_title(title, fontsize=9)
    _save(fig, out)


def plot_profile_histogram(model_r, out, baselines=None):
    """Histogram of per-profile weighted Pearson correlations; ``baselines``: ``{name: r [F]}``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    series = [("Multiplexer", np.asarray(model_r), "#08519c")]
    colours = ["#d94801", "#238b45", "#6a51a3"]
    for (name, r), colour in zip((baselines or {}).items(), colours):
        series.append((name, np.asarray(r), colour))
    finite = np.concatenate([r for _, r, _ in series])
    bins = np.linspace(min(-0.05, float(finite.min())), 1.0, 41)
    for name, r, colour in series:
        ax.hist(r, bins=bins, alpha=0.6 if name == "Multiplexer" else 0.4, color=colour,
                label=f"{name} (mean {r.mean():.3f})")
        ax.axvline(r.mean(), color=colour, ls="--", lw=1)
    ax.set_xlabel("per-profile Pearson correlation, weighted by |exact effect|")
    ax.set_ylabel("profiles")
    ax.set_title(f"{len(model_r)} profiles")
    ax.legend(fontsize=8)
    _save(fig, out)


def _base_strip(ax, sequence):
    codes = np.array([("AGCTN".index(b) if b in "AGCT" else 4) for b in sequence])[None, :]
    cmap = ListedColormap([BASE_COLOURS[b] for b in "AGCTN"])
    ax.imshow(codes, aspect="auto", cmap=cmap, vmin=-0.5, vmax=4.5, interpolation="nearest")
    ax.set_yticks([])
    ax.set_xticks([])


def plot_effect_heatmap(exact, pred, sequence, out, title="", start=0, zoom=60):
    """Exact and predicted ``[4, L]`` effects of one profile side by side, the reference sequence
    along the top (a colour strip over the whole window; letters over a zoom of ``zoom`` bp
    centred on the largest exact effect). ``start``: genomic start of the window (BED)."""
    exact, pred = np.asarray(exact, dtype=np.float32), np.asarray(pred, dtype=np.float32)
    length = exact.shape[1]
    vmax = float(max(np.abs(exact).max(), np.abs(pred).max(), 1e-6))
    centre = int(np.argmax(np.abs(exact).max(axis=0)))
    zoom = min(zoom, length)
    z0 = min(max(centre - zoom // 2, 0), length - zoom)
    fig = plt.figure(figsize=(14, 7))
    grid = fig.add_gridspec(5, 3, height_ratios=[0.22, 1, 0.4, 0.3, 1], width_ratios=[1, 1, 0.03],
                            hspace=0.08, wspace=0.08)
    image = None
    for col, (name, values) in enumerate((("exact ISM", exact), ("Multiplexer", pred))):
        for row, (lo, hi) in ((0, (0, length)), (3, (z0, z0 + zoom))):
            ax_seq = fig.add_subplot(grid[row, col])
            ax = fig.add_subplot(grid[row + 1, col])
            if row == 0:
                _base_strip(ax_seq, sequence[lo:hi])
                ax_seq.set_title(f"{name}: whole window", fontsize=10)
            else:
                ax_seq.set_xlim(-0.5, hi - lo - 0.5)
                ax_seq.set_xticks([])
                ax_seq.set_yticks([])
                for i, b in enumerate(sequence[lo:hi]):
                    ax_seq.text(i, 0.5, b, ha="center", va="center", fontsize=7, family="monospace",
                                color=BASE_COLOURS.get(b, "black"), fontweight="bold")
                ax_seq.set_title(f"{name}: positions {lo}-{hi - 1} (largest effect)", fontsize=10)
                for spine in ax_seq.spines.values():
                    spine.set_visible(False)
            image = ax.imshow(values[:, lo:hi], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                              interpolation="nearest")
            if row == 0:  # where the zoom below is
                ax.add_patch(Rectangle((z0 - 0.5, -0.5), zoom, 4, fill=False, ec="black", lw=0.8, ls="--"))
            ax.set_yticks(range(4))
            ax.set_yticklabels(list(BASES) if col == 0 else [])
            ticks = ax.get_xticks()
            ticks = [t for t in ticks if 0 <= t < hi - lo]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{int(t) + lo}" for t in ticks], fontsize=7)
            ax_seq.set_xlim(-0.5, hi - lo - 0.5)
            if row == 3:
                ax.set_xlabel(f"position in window (window start {start:,}, 0-based)", fontsize=8)
    cax = fig.add_subplot(grid[1:, 2])
    fig.colorbar(image, cax=cax, label="effect of the substitution")
    fig.suptitle(title, fontsize=11)
    _save(fig, out)
