"""Evaluating a trained Multiplexer against exact ISM on held-out windows.

The evaluation split is the test split, or the validation split when the test split is empty.
Figures (see ``seqmux.metrics`` for the definitions) for the Multiplexer and two baselines:

- ``zero``: predict 0 for every substitution (correlations undefined, reported as 0; its MSE is
  the mean squared target);
- ``train_mean``: for each profile, the mean over the training windows of each (base, position)
  entry, a ``[4, L]`` map per profile (identity entries set to 0, their exact value).

Speed: on the first ``speed_windows`` windows of the evaluation split, in one run and on one
device, the Multiplexer's forward time (batched, after a warm-up pass) against the two exact ISMs
of the base model (``seqmux.ism.window_targets``): naive (one forward pass per substitution,
batched; ratio ``speedup``) and fast (``seqmux.fast_ism``, the fastest exact answer; ratio
``speedup_vs_fast_ism``). Both recomputed targets are compared with the stored ones
(``ism_check_max_abs_diff``, ``fast_ism_check_max_abs_diff``; float16 storage rounds them).
"""

import logging
import time

import numpy as np
import pandas as pd
import torch

from .errors import InputError
from .metrics import Metrics, r2_score, summary_table
from .multiplexer import load_multiplexer
from .outputs import write_json, write_tsv
from .runtime import choose_device
from .splits import SplitDataset, check_split

log = logging.getLogger(__name__)


def evaluation_split(test_path, validation_path):
    """``(name, table, info, path)`` of the test split, or of the validation split when the test
    split is empty."""
    table, info = check_split(test_path, "test split")
    if table.num_rows:
        return "test", table, info, test_path
    log.warning("test split %s is empty: evaluating on the validation split", test_path)
    table, info = check_split(validation_path, "validation split")
    if not table.num_rows:
        raise InputError(validation_path, "rows", 0, f"both the test split ({test_path}) and the validation split "
                         "are empty: nothing to evaluate on")
    return "validation", table, info, validation_path


def training_mean(train_ds, batch_size=64):
    """``[F, 4, L]`` float64 mean target over the training windows."""
    total = np.zeros((train_ds.n_outputs, 4, train_ds.length))
    for i in range(0, len(train_ds), batch_size):
        for j in range(i, min(i + batch_size, len(train_ds))):
            total += train_ds.target(j)
    return total / max(len(train_ds), 1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(model, ds, rows, device, batch_size):
    """Predictions ``[n, F, 4, L]`` float32 (numpy) for dataset rows ``rows``, in batches."""
    out = []
    for i in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.stack([ds.onehot(r) for r in rows[i:i + batch_size]])).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, ds.n_outputs, 4, ds.length), np.float32)


def split_batches(model, ds, rows, device, batch_size):
    """Per batch of ``rows``: ``(pred, exact, onehot)`` numpy arrays ``[n, F, 4, L]``, ``[n, F, 4, L]``
    and ``[n, 4, L]`` (the Multiplexer's predictions, the split's targets and windows)."""
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        yield (predict(model, ds, chunk, device, batch_size), np.stack([ds.target(r) for r in chunk]),
               np.stack([ds.onehot(r) for r in chunk]))


@torch.no_grad()
def time_speed(model, base_model, ds, rows, device, batch_size, ism_batch_size, mode):
    """Seconds for the Multiplexer and for exact ISM (naive and fast) on the same windows, and
    each ISM's largest deviation from the stored targets: ``dict``."""
    from .encoding import tokenize
    from .ism import window_targets
    from .variants import substitutions

    onehots = [torch.from_numpy(ds.onehot(r)) for r in rows]
    tokens = [tokenize(ds.sequence(r)) for r in rows]
    model(onehots[0][None].to(device))  # warm-up (allocations, kernel choice)
    base_model(onehots[0][None].to(device))
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        x = torch.stack(onehots[i:i + batch_size]).to(device)
        model(x).float().cpu()
    _sync(device)
    mux_s = time.perf_counter() - t0
    out = dict(multiplexer=mux_s)
    for method in ("naive", "fast"):
        offsets, alts = substitutions(tokens[0])     # warm-up (the fast plan is built once per model)
        window_targets(base_model, tokens[0], offsets[:8], alts[:8], mode, method, ism_batch_size, device)
        _sync(device)
        t0 = time.perf_counter()
        targets = []
        for tok in tokens:
            offsets, alts = substitutions(tok)
            targets.append(window_targets(base_model, tok, offsets, alts, mode, method, ism_batch_size, device)[1])
        _sync(device)
        out[method] = time.perf_counter() - t0
        out[f"{method}_diff"] = max(float(np.abs(t - ds.target(r)).max()) for r, t in zip(rows, targets))
    return out


def pick_example(ds, rows):
    """``(row, profile)`` for the heatmap: the profile with the largest total |exact effect| over
    the split, and the window where it is largest."""
    per_window = []
    for r in rows:
        per_window.append(np.abs(ds.target(r)).sum(axis=(1, 2)))
    per_window = np.stack(per_window)  # [n, F]
    profile = int(np.argmax(per_window.sum(axis=0)))
    return rows[int(np.argmax(per_window[:, profile]))], profile


def plot_strongest(pred, exact, out, title=""):
    """Predicted against exact effects of the strongest substitutions (flat arrays), one dot each,
    with the line ``y = x``."""
    from .plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(exact):
        lo, hi = float(min(exact.min(), pred.min(), 0)), float(max(exact.max(), pred.max(), 0))
        ax.scatter(exact, pred, s=4, alpha=0.35, color="#08519c", linewidths=0)
        ax.plot([lo, hi], [lo, hi], color="#d62728", lw=0.8, ls="--", label="y = x")
        ax.axhline(0, color="#969696", lw=0.6)
        ax.axvline(0, color="#969696", lw=0.6)
        ax.legend(fontsize=8)
    ax.set_xlabel("exact ISM effect")
    ax.set_ylabel("Multiplexer prediction")
    ax.set_title(title, fontsize=9)
    save_figure(fig, out)


def plot_by_distance(by_distance, out, title=""):
    """Weighted Pearson (mean over outputs) and r2 against distance from the window centre (bin
    centres, bp); r2 below -1 (near the ends, where the exact effects are close to 0) is drawn at -1."""
    from .plots import plot_curves

    centres = (np.array(by_distance["distance_from_bp"]) + np.array(by_distance["distance_to_bp"])) / 2
    plot_curves(centres, {}, out, "distance of the substitution from the window centre (bp, bin centre)",
                ["weighted Pearson, mean over outputs", "r2"], title=title,
                panels={"weighted Pearson": {"Multiplexer": by_distance["weighted_pearson_mean"]},
                        "r2 (1 - MSE / MSE of predicting 0; below -1 drawn at -1)":
                            {"Multiplexer": np.maximum(by_distance["r2"], -1.0)}})


def evaluate_multiplexer(model_path, train_path, validation_path, test_path, base_model, out_metrics, out_table,
                         out_hexbin, out_histogram, out_heatmap, out_strongest=None, out_distance=None, batch_size=16,
                         speed_windows=10, ism_batch_size=512, device="auto", seed=1, distance_bins=10):
    """Stage: metrics.json, its summary table (TSV, for the report) and the evaluation plots of a
    trained Multiplexer (``out_strongest``: the top-1% effects, ``out_distance``: accuracy by
    distance from the window centre, each written when given).

    ``base_model``: the config's base_model section with resolved paths (for the speed run).
    """
    from .models import build_base_model
    from .plots import plot_effect_heatmap, plot_hexbin, plot_profile_histogram

    model, minfo = load_multiplexer(model_path)
    split, table, info, split_path = evaluation_split(test_path, validation_path)
    for key in ("length", "n_outputs"):
        if info[key] != minfo[key]:
            raise InputError(split_path, key, info[key], f"the multiplexer {model_path} was trained with {minfo[key]}")
    train_table, tinfo = check_split(train_path, "train split")
    ds, train_ds = SplitDataset(table), SplitDataset(train_table)
    dev = choose_device(device, "config", "multiplexer.evaluate.device")
    model.to(dev).eval()
    n_out, length = info["n_outputs"], info["length"]
    log.info("evaluating %s on %d %s windows (%d bp, %d outputs) on %s", model_path, len(ds), split, length, n_out,
             dev)

    mean_map = training_mean(train_ds).astype(np.float32)
    metrics = {name: Metrics(n_out, seed=seed, distance_bins=distance_bins)
               for name in ("multiplexer", "zero", "train_mean")}
    rows = list(range(len(ds)))
    for pred, exact, onehot in split_batches(model, ds, rows, dev, batch_size):
        metrics["multiplexer"].update(pred, exact, onehot)
        metrics["zero"].update(np.zeros_like(exact), exact, onehot)
        baseline = mean_map[None] * (1 - onehot)[:, None]  # identity entries: exactly 0
        metrics["train_mean"].update(baseline, exact, onehot)
    mux = metrics["multiplexer"]
    results = {name: m.result() for name, m in metrics.items()}

    speed_rows = rows[:max(0, min(speed_windows, len(rows)))]
    speed = None
    if speed_rows:
        base = build_base_model(base_model["kind"], base_model.get("weights", ""), base_model.get("module", ""),
                                base_model.get("class", ""), length,
                                output=base_model.get("output")).to(dev)
        from .fast_ism import analysable
        from .ism import logit_model

        t = time_speed(model, base, ds, speed_rows, dev, batch_size, ism_batch_size, info["mode"])
        n, mux_s = len(speed_rows), max(t["multiplexer"], 1e-9)
        fast_ok, fast_plan = analysable(logit_model(base, length) or base, length)
        speed = dict(windows=n, device=str(dev), multiplexer_seconds=round(t["multiplexer"], 6),
                     ism_seconds=round(t["naive"], 6), multiplexer_ms_per_window=round(1000 * t["multiplexer"] / n, 3),
                     ism_ms_per_window=round(1000 * t["naive"] / n, 3), speedup=round(t["naive"] / mux_s, 2),
                     ism_method="naive", ism_check_max_abs_diff=t["naive_diff"],
                     fast_ism_seconds=round(t["fast"], 6), fast_ism_ms_per_window=round(1000 * t["fast"] / n, 3),
                     speedup_vs_fast_ism=round(t["fast"] / mux_s, 2), fast_ism_check_max_abs_diff=t["fast_diff"],
                     fast_ism_plan=fast_plan if fast_ok else f"naive ISM ({fast_plan})")
        log.info("speed on %d windows: multiplexer %.3f s, exact ISM naive %.3f s (%.1fx), fast %.3f s (%.1fx)", n,
                 t["multiplexer"], t["naive"], t["naive"] / mux_s, t["fast"], t["fast"] / mux_s)

    out = {k: v for k, v in results["multiplexer"].items() if k not in ("per_profile", "by_distance")}
    out.update(split=split, windows=len(ds), n_outputs=n_out, length=length, mode=info["mode"],
               accuracy_by_distance=results["multiplexer"]["by_distance"],
               baselines={name: {k: v for k, v in results[name].items() if k not in ("per_profile", "by_distance")}
                          for name in ("zero", "train_mean")},
               per_profile=dict(zip(info["output_names"], results["multiplexer"]["per_profile"])),
               speed=speed, model=str(model_path), preset=minfo["preset"])
    write_json(out, out_metrics)
    write_tsv(pd.DataFrame(summary_table(out)), out_table)
    log.info("weighted Pearson mean %.4f (median %.4f, p10 %.4f); baselines: zero %.4f, train mean %.4f",
             out["weighted_pearson_mean"], out["weighted_pearson_median"], out["weighted_pearson_p10"],
             out["baselines"]["zero"]["weighted_pearson_mean"], out["baselines"]["train_mean"]["weighted_pearson_mean"])
    log.info("r2 %.4f, top1pct_recall %.4f; weighted Pearson by distance from the centre: %s", out["r2"],
             out["top1pct_recall"], ", ".join(f"{a:g}-{b:g} bp {r:.3f}" for a, b, r in zip(
                 *(out["accuracy_by_distance"][k] for k in ("distance_from_bp", "distance_to_bp",
                                                            "weighted_pearson_mean")))))

    sample_pred, sample_exact = (np.concatenate(s) for s in mux.samples)
    plot_hexbin(sample_pred, sample_exact, out_hexbin,
                title=f"{split} split, {len(ds)} windows, non-identity substitutions: "
                      f"Pearson {out['pearson']:.3f}, Spearman {out['spearman']:.3f}")
    plot_profile_histogram(np.array(results["multiplexer"]["per_profile"]), out_histogram,
                           baselines={"training mean": np.array(results["train_mean"]["per_profile"]),
                                      "predict 0": np.array(results["zero"]["per_profile"])})
    if out_strongest:
        top_pred, top_exact, _ = mux.strongest(0.01)
        plot_strongest(top_pred, top_exact, out_strongest,
                       title=f"the top 1% |exact effect| of each output ({len(top_exact):,} substitutions, {split} "
                             f"split): top1pct_recall {out['top1pct_recall']:.3f}, r2 of these "
                             f"{r2_score(np.sum((top_pred - top_exact) ** 2.0), np.sum(top_exact ** 2.0)):.3f}")
    if out_distance:
        plot_by_distance(out["accuracy_by_distance"], out_distance,
                         title=f"{split} split, {len(ds)} windows of {length} bp")
    row, profile = pick_example(ds, rows)
    pred = predict(model, ds, [row], dev, 1)[0, profile]
    window = table.select(["window_id", "chrom", "start", "end"]).slice(row, 1).to_pylist()[0]
    plot_effect_heatmap(ds.target(row)[profile], pred, ds.sequence(row), out_heatmap, start=window["start"],
                        title=f"{info['output_names'][profile]} on {window['chrom']}:{window['start']:,}-"
                              f"{window['end']:,} ({split} window {window['window_id']}); weighted Pearson of this "
                              f"profile over the split: {results['multiplexer']['per_profile'][profile]:.3f}")
    return out
