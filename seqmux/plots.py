"""Figures of the workflow (matplotlib, Agg backend; one PNG per function).

The Multiplexer's figures, and the generic ones every track uses: ``plot_curves`` (training curves
and any other y-against-x series), ``plot_bars`` (one value per named bar) and ``save_figure``
(the one way a figure is written: whole or not at all).
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from . import BASES  # noqa: E402
from .outputs import atomic_path  # noqa: E402

BASE_COLOURS = {"A": "#2ca02c", "G": "#ff7f0e", "C": "#1f77b4", "T": "#d62728", "N": "#bbbbbb"}


MAX_LETTERS = 120  # wider sequences are drawn as a colour strip
SERIES_COLOURS = ["#08519c", "#d94801", "#238b45", "#6a51a3", "#a50f15", "#525252"]


def save_figure(fig, out, dpi=120):
    """Write ``fig`` to ``out`` (format from the file's suffix) whole or not at all, and close it."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(out).suffix.lower().lstrip(".") or "png")
    plt.close(fig)


def plot_curves(x, series, out, xlabel, ylabel, title="", logy=False, best=None, panels=None):
    """Lines of ``series`` (``{label: y}``, each y as long as ``x``) against ``x``.

    ``logy``: log-scaled y axis (only when every value is positive). ``best``: ``(x, label)`` of a
    point to mark with a dotted vertical line (e.g. the epoch whose weights were kept).
    ``panels``: ``{panel title: {label: y}}`` draws several panels side by side instead, sharing
    ``x`` (``series`` then gives the first panel); ``ylabel`` may then be a list, one per panel.
    """
    groups = {title or ylabel: series} if panels is None else {**({title: series} if series else {}), **panels}
    ylabels = ylabel if isinstance(ylabel, (list, tuple)) else [ylabel] * len(groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4), squeeze=False)
    x = np.asarray(x)
    for ax, (name, lines), label_y in zip(axes[0], groups.items(), ylabels):
        values = []
        for (label, y), colour in zip(lines.items(), SERIES_COLOURS * 4):
            y = np.asarray(y, dtype=np.float64)
            ax.plot(x[:len(y)], y, color=colour, lw=1.3, label=label)
            values.append(y[np.isfinite(y)])
        flat = np.concatenate(values) if values else np.array([])
        if logy and flat.size and np.all(flat > 0):
            ax.set_yscale("log")
        if best is not None:
            ax.axvline(best[0], color="#525252", ls=":", lw=1, label=best[1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label_y)
        if len(groups) > 1 or title:
            ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    save_figure(fig, out)


def plot_bars(labels, values, out, ylabel, title="", colours=None, reference=None, fmt="{:.3f}"):
    """One bar per label with its value written above it; ``reference``: ``(value, label)`` drawn
    as a dashed horizontal line (a baseline or a ceiling)."""
    values = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(labels) + 1.5), 4))
    colours = colours or [SERIES_COLOURS[i % len(SERIES_COLOURS)] for i in range(len(labels))]
    bars = ax.bar(range(len(labels)), values, color=colours)
    for bar, v in zip(bars, values):
        if np.isfinite(v):
            ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, v), ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=8, xytext=(0, 2 if v >= 0 else -2),
                        textcoords="offset points")
    if reference is not None:
        ax.axhline(reference[0], color="#525252", ls="--", lw=1, label=reference[1])
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if max(map(len, labels), default=0) > 8 else 0, ha="right"
                       if max(map(len, labels), default=0) > 8 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    save_figure(fig, out)


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
    save_figure(fig, out)


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
    save_figure(fig, out)


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
    save_figure(fig, out)


def draw_sequence(ax, span, letters, max_letters=MAX_LETTERS, fontsize=7):
    """The reference bases at x positions ``span`` on ``ax``: coloured letters when there are at most
    ``max_letters``, else a colour strip; ``""`` for a base not known (left blank)."""
    ax.set_yticks([])
    ax.tick_params(axis="x", bottom=False, labelbottom=False)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if len(span) <= max_letters:
        for x, letter in zip(span, letters):
            if letter:
                ax.text(x, 0.5, letter, ha="center", va="center", fontsize=fontsize, family="monospace",
                        color=BASE_COLOURS.get(letter, "black"), fontweight="bold")
        ax.set_ylim(0, 1)
    else:
        codes = np.array([((BASES + "N").index(c) if c and c in BASES + "N" else 5) for c in letters])[None, :]
        strip = ListedColormap([BASE_COLOURS[b] for b in BASES + "N"] + ["#ffffff"])
        ax.imshow(codes, aspect="auto", cmap=strip, vmin=-0.5, vmax=5.5, interpolation="nearest",
                  extent=(span[0] - 0.5, span[-1] + 0.5, 1, 0))
        ax.set_ylim(1, 0)
    ax.set_xlim(span[0] - 0.5, span[-1] + 0.5)


def draw_effects(ax, matrix, span, vmax):
    """A ``[4, n]`` effect matrix (rows in ``BASES`` order; NaN: not scored, grey) at x positions
    ``span`` on ``ax``, in diverging colours centred at 0 (+-``vmax``). Returns the image, for a
    colour bar."""
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#e6e6e6")
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax,
                      interpolation="nearest", extent=(span[0] - 0.5, span[-1] + 0.5, 3.5, -0.5))
    ax.set_yticks(range(4), list(BASES))
    return image


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
            span = np.arange(lo, hi)
            ax_seq = fig.add_subplot(grid[row, col])
            ax = fig.add_subplot(grid[row + 1, col])
            draw_sequence(ax_seq, span, sequence[lo:hi], max_letters=zoom)  # letters in the zoom only
            image = draw_effects(ax, values[:, lo:hi], span, vmax)
            if row == 0:
                ax_seq.set_title(f"{name}: whole window", fontsize=10)
                ax.add_patch(Rectangle((z0 - 0.5, -0.5), zoom, 4, fill=False, ec="black", lw=0.8, ls="--"))
            else:
                ax_seq.set_title(f"{name}: positions {lo}-{hi - 1} (largest effect)", fontsize=10)
                ax.set_xlabel(f"position in window (window start {start:,}, 0-based)", fontsize=8)
            if col:
                ax.set_yticklabels([])
            ax.tick_params(axis="x", labelsize=7)
    cax = fig.add_subplot(grid[1:, 2])
    fig.colorbar(image, cax=cax, label="effect of the substitution")
    fig.suptitle(title, fontsize=11)
    save_figure(fig, out)
