"""Agreement between predicted and exact substitution effects ``[N, F, 4, L]``.

Definitions (``exact`` = the ISM targets of the split, ``pred`` = a prediction of them):

- **weighted per-profile Pearson** (the published Multiplexer metric): for each output ``f`` (a
  "profile"), the Pearson correlation between ``pred[:, f]`` and ``exact[:, f]`` over every window
  and every (base, position) entry, each entry weighted by ``w = |exact|``::

      m_x = sum(w x) / sum(w),   cov(x, y) = sum(w (x - m_x)(y - m_y)) / sum(w),
      r_f = cov(p, e) / sqrt(cov(p, p) cov(e, e))

  Identity substitutions (the reference base) have an exact target of 0, so weight 0: they do not
  count, whatever is predicted there. ``weighted_pearson_mean`` / ``_median`` / ``_p10`` are the
  mean, median and 10th percentile of ``r_f`` over profiles.
- **pearson**, **spearman**: one correlation over all non-identity entries of every profile and
  window, unweighted (identity entries are excluded because they are exactly 0 by construction).
- **position_pearson**: per-position averaged effect: the mean effect of the three substitutions
  at each position gives a track ``[N, F, L]``; Pearson correlation of the pooled tracks.
- **mse**: mean squared error over non-identity entries.
- **r2**: ``1 - mse / mean(exact ** 2)`` over the same entries: the share of the exact effects'
  variance around 0 that the prediction explains (predicting 0 everywhere scores 0; a perfect
  prediction 1; a prediction worse than 0 is negative).
- **top1pct_recall**: for each output, the substitutions whose ``|exact|`` is in the top 1% of the
  split (the ``k = ceil(n / 100)`` largest of its ``n`` non-identity entries) against the ``k``
  largest ``|pred|``: the fraction of the first set that is in the second (ties broken by position
  in the split); mean over outputs. A prediction with one ``|pred|`` everywhere ranks nothing and
  scores 0. Computed on the same entries as Spearman (every entry of a window with at most
  ``spearman_per_window`` of them, as the demo's; a seeded sample of each larger window).
- **accuracy by distance** (``by_distance``): the window's positions are grouped by their distance
  from the window centre, ``|p + 0.5 - L / 2|`` bp, into ``distance_bins`` bins of equal width; per
  bin the mean over outputs of the weighted Pearson above, ``r2`` and the number of substitutions.

A constant prediction (e.g. all zeros) has no variance: its correlations are undefined and are
reported as 0 (it carries no information about which substitution matters more).
"""

import numpy as np

from . import seeding


def _safe_corr(cov, var_x, var_y):
    denom = np.sqrt(var_x * var_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
    return r


class PearsonAccumulator:
    """Weighted Pearson correlations of ``G`` groups, fed batch by batch: ``update(x, y, w)`` with
    arrays ``[G, ...]`` (``w`` broadcastable). Sums of weighted moments in float64, shifted by the
    first batch's weighted means for numerical stability, so a whole split never has to be in
    memory. ``result()``: ``r [G]`` (0 where undefined).
    """

    def __init__(self, groups):
        self.sums = np.zeros((6, groups))  # w, wx, wy, wxx, wyy, wxy
        self.shift = None

    def update(self, x, y, w=1.0):
        shape = np.shape(x)
        w = np.broadcast_to(np.asarray(w, dtype=np.float64), shape).reshape(self.sums.shape[1], -1)
        x = np.asarray(x, dtype=np.float64).reshape(w.shape)
        y = np.asarray(y, dtype=np.float64).reshape(w.shape)
        if self.shift is None:
            sw = w.sum(1)
            safe = np.where(sw > 0, sw, 1.0)
            self.shift = ((w * x).sum(1) / safe)[:, None], ((w * y).sum(1) / safe)[:, None]
        x, y = x - self.shift[0], y - self.shift[1]
        self.sums += np.stack([w.sum(1), (w * x).sum(1), (w * y).sum(1), (w * x * x).sum(1), (w * y * y).sum(1),
                               (w * x * y).sum(1)])

    def result(self):
        sw, sx, sy, sxx, syy, sxy = self.sums
        safe = np.where(sw > 0, sw, 1.0)
        mx, my = sx / safe, sy / safe
        var_x, var_y, cov = sxx / safe - mx * mx, syy / safe - my * my, sxy / safe - mx * my
        r = _safe_corr(cov, np.maximum(var_x, 0), np.maximum(var_y, 0))
        return np.where(sw > 0, r, 0.0)


def profile_major(values):
    """``[N, F, 4, L] -> [F, N * 4 * L]``."""
    values = np.asarray(values)
    return np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)


def per_profile_weighted_pearson(pred, exact):
    """``r [F]`` of arrays ``[N, F, 4, L]`` (see the module docstring)."""
    acc = PearsonAccumulator(np.asarray(exact).shape[1])
    e = profile_major(exact)
    acc.update(profile_major(pred), e, np.abs(e.astype(np.float64)))
    return acc.result()


def pearson(x, y):
    """Unweighted Pearson of two 1-d arrays; 0 when undefined."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    dx, dy = x - x.mean(), y - y.mean()
    return float(_safe_corr((dx * dy).sum(), (dx * dx).sum(), (dy * dy).sum()))


def average_ranks(x):
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.concatenate([[True], xs[1:] != xs[:-1], [True]])
    starts = np.flatnonzero(boundaries)
    avg = (starts[:-1] + starts[1:] - 1) / 2.0 + 1.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, np.diff(starts))
    return ranks


def spearman(x, y):
    """Spearman rank correlation (average ranks for ties); 0 when undefined."""
    return pearson(average_ranks(x), average_ranks(y))


def non_identity_mask(onehot):
    """``[N, 1, 4, L]`` bool: True for the three substitutions of each position (not the reference
    base). An N position (all-zero one-hot) has four substitutions."""
    return (np.asarray(onehot) == 0)[:, None]


def position_tracks(values, onehot):
    """Mean effect of the substitutions at each position: ``[N, F, L]``."""
    mask = non_identity_mask(onehot)
    return (np.asarray(values, dtype=np.float64) * mask).sum(axis=2) / mask.sum(axis=2)


def summarise_profiles(r):
    """Mean, median and 10th percentile of per-profile correlations."""
    r = np.asarray(r, dtype=np.float64)
    return dict(weighted_pearson_mean=float(r.mean()), weighted_pearson_median=float(np.median(r)),
                weighted_pearson_p10=float(np.percentile(r, 10)))


def r2_score(sq_err, sq_exact):
    """``1 - sum((pred - exact)^2) / sum(exact^2)``; 0 when every exact effect is 0."""
    return float(1.0 - sq_err / sq_exact) if sq_exact > 0 else 0.0


def top_fraction(values, fraction=0.01):
    """Indices of the ``ceil(fraction * n)`` largest ``values`` (ties: the earlier entry first)."""
    values = np.asarray(values)
    k = int(np.ceil(fraction * len(values)))
    return np.argsort(-values, kind="stable")[:k]


def top_recall(pred, exact, profile, n_outputs, fraction=0.01):
    """Mean over outputs of the fraction of the top ``fraction`` ``|exact|`` entries that are also
    among the top ``fraction`` ``|pred|`` entries (flat arrays; ``profile``: each entry's output).
    An output whose ``|pred|`` is one value everywhere scores 0; outputs without entries are left out."""
    recalls = []
    for f in range(n_outputs):
        sel = profile == f
        if not sel.any():
            continue
        p, e = np.abs(pred[sel]), np.abs(exact[sel])
        if p.max() == p.min():
            recalls.append(0.0)
            continue
        true_top, pred_top = top_fraction(e, fraction), top_fraction(p, fraction)
        recalls.append(len(np.intersect1d(true_top, pred_top, assume_unique=True)) / len(true_top))
    return float(np.mean(recalls)) if recalls else 0.0


def distance_bin_of(length, bins):
    """``[L]`` int: the bin of each position's distance from the window centre, ``|p + 0.5 - L/2|``
    bp, in ``bins`` bins of equal width over ``[0, L/2]``."""
    dist = np.abs(np.arange(length) + 0.5 - length / 2)
    return np.minimum((dist / (length / 2) * bins).astype(np.int64), bins - 1)


class Metrics:
    """Every figure of the module docstring, fed batch by batch with ``update(pred, exact, onehot)``
    (``[n, F, 4, L]``, ``[n, F, 4, L]``, ``[n, 4, L]``). Spearman needs ranks of all entries: it is
    computed on a sample of at most ``spearman_per_window`` non-identity entries per window (all of
    them when a window has fewer), drawn from the ``seqmux.seeding`` stream ``(seed, "multiplexer",
    "spearman_sample")``."""

    def __init__(self, n_outputs, spearman_per_window=20000, seed=0, distance_bins=10):
        self.n_outputs = n_outputs
        self.profiles = PearsonAccumulator(n_outputs)
        self.overall = PearsonAccumulator(1)
        self.position = PearsonAccumulator(1)
        self.sq_err, self.sq_exact, self.count = 0.0, 0.0, 0
        self.per_window = spearman_per_window
        self.rng = seeding.rng(seed, "multiplexer", "spearman_sample")
        self.samples = ([], [])
        self.sample_profiles = []
        self.distance_bins = int(distance_bins)
        self.by_distance = None  # (bin of each position [L], per-bin accumulators and sums), set by update

    def _distance_state(self, length):
        if self.by_distance is None:
            bins = distance_bin_of(length, self.distance_bins)
            self.by_distance = dict(bin=bins, length=length, pearson=[PearsonAccumulator(self.n_outputs)
                                                                      for _ in range(self.distance_bins)],
                                    sums=np.zeros((3, self.distance_bins)))  # sq_err, sq_exact, count
        return self.by_distance

    def update(self, pred, exact, onehot):
        pred = np.asarray(pred, dtype=np.float32)
        exact = np.asarray(exact, dtype=np.float32)
        e = profile_major(exact)
        self.profiles.update(profile_major(pred), e, np.abs(e))
        mask = np.broadcast_to(non_identity_mask(onehot), exact.shape)
        self.overall.update(pred, exact, mask)
        self.position.update(position_tracks(pred, onehot), position_tracks(exact, onehot))
        diff = (pred.astype(np.float64) - exact)[mask]
        self.sq_err += float((diff * diff).sum())
        self.sq_exact += float((exact.astype(np.float64)[mask] ** 2).sum())
        self.count += diff.size
        self._update_distance(pred, exact, mask)
        per_profile = exact[0].size // exact.shape[1] if len(exact) else 1
        for i in range(len(pred)):
            idx = np.flatnonzero(mask[i])
            if len(idx) > self.per_window:
                idx = np.sort(self.rng.choice(idx, self.per_window, replace=False))
            self.samples[0].append(pred[i].ravel()[idx])
            self.samples[1].append(exact[i].ravel()[idx])
            self.sample_profiles.append((idx // per_profile).astype(np.int32))

    def _update_distance(self, pred, exact, mask):
        state = self._distance_state(exact.shape[-1])
        for b, acc in enumerate(state["pearson"]):
            cols = state["bin"] == b
            if not cols.any():
                continue
            p, e, m = pred[..., cols], exact[..., cols], mask[..., cols]
            ep = profile_major(e)
            acc.update(profile_major(p), ep, np.abs(ep))
            d = (p.astype(np.float64) - e)[m]
            state["sums"][:, b] += [float((d * d).sum()), float((e.astype(np.float64)[m] ** 2).sum()), d.size]

    def strongest(self, fraction=0.01):
        """``(pred, exact, profile)`` of the sampled substitutions whose ``|exact|`` is in the top
        ``fraction`` of their output (the set ``top1pct_recall`` scores), flat arrays."""
        if not self.samples[0]:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
        pred, exact = np.concatenate(self.samples[0]), np.concatenate(self.samples[1])
        prof = np.concatenate(self.sample_profiles)
        keep = [np.flatnonzero(prof == f) for f in range(self.n_outputs)]
        keep = np.concatenate([idx[top_fraction(np.abs(exact[idx]), fraction)] for idx in keep]).astype(np.int64)
        return pred[keep], exact[keep], prof[keep]

    def distance_result(self):
        """``{distance_from_bp, distance_to_bp, weighted_pearson_mean, r2, substitutions}``, one
        entry a bin (lists), or None before any update."""
        state = self.by_distance
        if state is None:
            return None
        half = state["length"] / 2
        edges = np.linspace(0.0, half, self.distance_bins + 1)
        sq_err, sq_exact, count = state["sums"]
        return dict(distance_from_bp=[float(v) for v in edges[:-1]], distance_to_bp=[float(v) for v in edges[1:]],
                    weighted_pearson_mean=[float(acc.result().mean()) for acc in state["pearson"]],
                    r2=[float(r2_score(a, b)) for a, b in zip(sq_err, sq_exact)],
                    substitutions=[int(c) for c in count])

    def result(self):
        r = self.profiles.result()
        out = summarise_profiles(r)
        sp = (spearman(np.concatenate(self.samples[0]), np.concatenate(self.samples[1]))
              if self.samples[0] else 0.0)
        recall = (top_recall(np.concatenate(self.samples[0]), np.concatenate(self.samples[1]),
                             np.concatenate(self.sample_profiles), self.n_outputs) if self.samples[0] else 0.0)
        out.update(pearson=float(self.overall.result()[0]), spearman=sp,
                   position_pearson=float(self.position.result()[0]), mse=self.sq_err / max(self.count, 1),
                   r2=r2_score(self.sq_err, self.sq_exact), top1pct_recall=recall,
                   by_distance=self.distance_result(), per_profile=[float(v) for v in r])
        return out


def all_metrics(pred, exact, onehot, spearman_per_window=None):
    """``Metrics`` of whole arrays in one go (every entry in the Spearman correlation by default)."""
    pred = np.asarray(pred)
    m = Metrics(pred.shape[1], spearman_per_window or pred[0].size)
    m.update(pred, exact, onehot)
    return m.result()


# the figures of metrics.json a reader of the report sees first, with what each one measures
SUMMARY_ROWS = [
    ("weighted_pearson_mean", "per-output Pearson r of predicted vs exact effects, each substitution weighted "
                              "by |exact effect|; mean over outputs (the published Multiplexer metric)"),
    ("weighted_pearson_median", "the same, median over outputs"),
    ("weighted_pearson_p10", "the same, 10th percentile over outputs (the worst-predicted outputs)"),
    ("pearson", "Pearson r over every non-identity substitution of every output, unweighted"),
    ("spearman", "Spearman rank correlation over a seeded sample of the same substitutions"),
    ("position_pearson", "Pearson r of the mean effect of the three substitutions at each position"),
    ("mse", "mean squared error of the effects (non-identity substitutions)"),
    ("r2", "1 - MSE / MSE of predicting 0: the share of the exact effects' variance (around 0) explained"),
    ("top1pct_recall", "per output, the fraction of the substitutions with the top 1% |exact effect| that are "
                       "also in the top 1% |prediction|; mean over outputs"),
]


def summary_table(metrics):
    """Rows ``{metric, multiplexer, predict_zero, training_mean, meaning}`` of an evaluation's
    ``metrics`` (the metrics.json dict): the quality figures of the Multiplexer beside its two
    baselines, then its speed against exact ISM when it was measured (baseline columns empty)."""
    zero, mean = metrics["baselines"]["zero"], metrics["baselines"]["train_mean"]
    rows = [dict(metric=key, multiplexer=f"{metrics[key]:.4g}", predict_zero=f"{zero[key]:.4g}",
                 training_mean=f"{mean[key]:.4g}", meaning=meaning) for key, meaning in SUMMARY_ROWS]
    speed = metrics.get("speed")
    if speed:
        where = f"{speed['windows']} windows on {speed['device']}"
        for metric, key, meaning in [
                ("ms_per_window", "multiplexer_ms_per_window",
                 f"Multiplexer forward pass, milliseconds per window ({where})"),
                ("exact_ism_ms_per_window", "ism_ms_per_window",
                 f"exact {speed['ism_method']} ISM of the base model, milliseconds per window "
                 "(same windows, same run)"),
                ("speedup", "speedup", "exact naive ISM time / Multiplexer time"),
                ("fast_exact_ism_ms_per_window", "fast_ism_ms_per_window",
                 "fast exact ISM of the base model (seqmux.fast_ism), milliseconds per window "
                 "(same windows, same run)"),
                ("speedup_vs_fast_ism", "speedup_vs_fast_ism", "fast exact ISM time / Multiplexer time")]:
            if key not in speed:
                continue
            rows.append(dict(metric=metric, multiplexer=f"{speed[key]:.4g}", predict_zero="", training_mean="",
                             meaning=meaning))
    return rows
