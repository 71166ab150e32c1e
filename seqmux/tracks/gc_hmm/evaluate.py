"""GC-HMM track, evaluation: accuracy against the HMM's ceilings, calibration, random strings,
the summary over presets.
"""

import json
import logging
from pathlib import Path

import numpy as np

from ...outputs import write_json, write_tsv
from .data import COLUMNS, decode_states, encode_rows, preset_rng, read_hmm, read_sets
from .inference import forward_filter, hmmlearn_decode
from .model import MODELS, load_models, predict
from .train import nll

log = logging.getLogger(__name__)


def per_sequence_accuracy(pred, labels):
    """Fraction of correct states per sequence ``[n]`` (padding ignored)."""
    mask = labels >= 0
    return ((pred == labels) & mask).sum(1) / mask.sum(1)


def accuracy(pred, labels):
    """Per-base accuracy over all positions of all sequences (padding ignored)."""
    mask = labels >= 0
    return float(((pred == labels) & mask).sum() / mask.sum())


def standard_error(values, weights):
    """Standard error of a weighted mean of per-sequence values (weights = sequence lengths),
    over sequences (positions within a sequence are correlated; sequences are independent)."""
    values, weights = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    n = len(values)
    if n < 2:
        return float("nan")
    w = weights / weights.sum()
    mean = (w * values).sum()
    return float(np.sqrt(n / (n - 1) * ((w * (values - mean)) ** 2).sum()))


def random_match(labels, n_states, target_matches, draws, rng, chunk=50):
    """The source's simulation, vectorised: ``draws`` random state strings for the whole test set
    (each position uniform over the states). Returns ``(mean accuracy, P(matches >= target_matches))``."""
    truth = labels[labels >= 0].astype(np.int8)
    hits = []
    for i in range(0, draws, chunk):
        r = rng.integers(n_states, size=(min(chunk, draws - i), len(truth)), dtype=np.int8)
        hits.append((r == truth[None, :]).sum(1))
    hits = np.concatenate(hits)
    return float(hits.mean() / len(truth)), float((hits >= target_matches).mean())


def calibration(prob, labels, bins=10):
    """Reliability of probabilities ``[n, L, S]`` over every (position, state) pair: per bin of
    predicted probability, ``(mean predicted, observed frequency, count)`` arrays ``[bins]`` (NaN
    where empty), and the expected calibration error (count-weighted mean |predicted - observed|)."""
    mask = labels >= 0
    p = prob[mask]  # [N, S]
    hit = (np.arange(prob.shape[-1])[None, :] == labels[mask][:, None]).astype(np.float64)
    p, hit = p.ravel(), hit.ravel()
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / count
        freq = np.bincount(idx, weights=hit, minlength=bins) / count
    ok = count > 0
    ece = float((count[ok] * np.abs(mean_p[ok] - freq[ok])).sum() / count.sum())
    return mean_p, freq, count, ece


def plot_calibration(curves, out, title):
    """Two panels: left-to-right (GRU beside filtering) and whole-sequence (biGRU beside the
    posterior); ``curves``: ``{label: (mean_p, freq, count, ece)}`` with keys gru, filtering,
    bigru, posterior."""
    import matplotlib.pyplot as plt

    from ...plots import SERIES_COLOURS, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    panels = (("left-to-right", (("GRU", "gru"), ("forward filtering", "filtering"))),
              ("whole sequence", (("biGRU", "bigru"), ("posterior (forward-backward)", "posterior"))))
    for ax, (panel, items) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
        for (label, key), colour in zip(items, SERIES_COLOURS):
            mean_p, freq, _, ece = curves[key]
            ok = np.isfinite(mean_p)
            ax.plot(mean_p[ok], freq[ok], "o-", color=colour, ms=4, lw=1.3, label=f"{label} (ECE {ece:.4f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability of a state")
        ax.set_ylabel("observed frequency of that state")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    save_figure(fig, out)


def alignment_text(dna, truth, rows, width=100):
    """The source's alignment print of one sequence: blocks of ``width`` columns with the bases,
    the true states, each predictor's states (``rows``: ``{label: string}``) and ``|`` where the
    first predictor matches the truth."""
    label_w = max(len(k) for k in ["dna", "true", "match", *rows])
    first = next(iter(rows.values()))
    lines = []
    for i in range(0, len(dna), width):
        lines.append(f"{'dna':<{label_w}} {i + 1:>5} {dna[i:i + width]}")
        lines.append(f"{'true':<{label_w}} {'':>5} {truth[i:i + width]}")
        for k, v in rows.items():
            lines.append(f"{k:<{label_w}} {'':>5} {v[i:i + width]}")
        lines.append(f"{'match':<{label_w}} {'':>5} " + "".join("|" if a == b else " " for a, b in
                                                             zip(first[i:i + width], truth[i:i + width])))
        lines.append("")
    return "\n".join(lines)


def _prob_strings(prob, lengths, digits=4):
    return [",".join(f"{v:.{digits}f}" for v in prob[i, :lengths[i]]) for i in range(len(prob))]


def evaluate(set_paths, hmm_json, model_path, split_tsv, metrics_out, predictions_out, calibration_png,
             accuracy_png, preset, seed, random_draws=1000, device="cpu"):
    """Stage: both networks and the HMM's ceilings on the test rows (read here only).

    ``set_paths``: ``{train, validation, test}`` TSVs of the preset (the first two for the counts).
    Writes ``metrics.json`` (keys in docs/tracks.md), the test rows with the networks' states and
    per-base probabilities of every state, the calibration plot and the accuracy bar chart; logs the
    key figures and the source's alignment print of the first test sequence. ``selected_model``: the
    network with the lower validation NLL (recorded by the training stage).
    """
    import pandas as pd

    from ...plots import plot_bars
    from ...runtime import choose_device
    from ..splitting import linked_components, split_counts

    dev = choose_device(device, "config", "gc_hmm.device")
    hmm = read_hmm(hmm_json)
    test = read_sets(set_paths["test"], hmm)
    tokens, labels, lengths = encode_rows(test, hmm.states)
    S = len(hmm.states)
    filtered, loglik = forward_filter(tokens, lengths, hmm)
    posterior, viterbi = hmmlearn_decode(tokens, lengths, hmm)
    models, meta = load_models(model_path)
    probs = {name: predict(models[name], tokens, lengths, dev) for name in MODELS}
    probs.update(filtering=filtered, posterior=posterior)
    preds = {k: v.argmax(-1) for k, v in probs.items()}
    preds["viterbi"] = viterbi
    seq_acc = {k: per_sequence_accuracy(v, labels) for k, v in preds.items()}
    split = pd.read_csv(split_tsv, sep="\t")["split"].to_numpy()
    every = pd.concat([read_sets(set_paths[p], hmm) for p in ("train", "validation")] + [test]).sort_values("id")
    duplicates = int(every["dna"].duplicated().sum())
    m = {"preset": preset, "states": "".join(hmm.states),
         **split_counts(split, linked_components(list(every["dna"])), duplicates), "test_bases": int(lengths.sum())}
    training = meta["training"]
    for name in MODELS:
        f = training[name]
        m.update({f"{name}_validation_nll": f["best_validation_loss"], f"{name}_best_step": f["best_step"],
                  f"{name}_steps_done": f["steps_done"], f"{name}_converged": bool(f["converged"])})
    m["selected_model"] = min(MODELS, key=lambda name: training[name]["best_validation_loss"])
    m["converged"] = all(m[f"{name}_converged"] for name in MODELS)
    for k in ("gru", "bigru", "filtering", "posterior", "viterbi"):
        m[f"{k}_accuracy"] = accuracy(preds[k], labels)
        m[f"{k}_accuracy_se"] = standard_error(seq_acc[k], lengths)
    for net, ceiling in (("gru", "filtering"), ("bigru", "posterior")):
        m[f"{net}_{ceiling}_ratio"] = m[f"{net}_accuracy"] / m[f"{ceiling}_accuracy"]
        # paired: the same test bases, so the sampling error of the ratio is that of the difference
        m[f"{net}_{ceiling}_ratio_se"] = standard_error(seq_acc[net] - seq_acc[ceiling], lengths) / m[
            f"{ceiling}_accuracy"]
    for k in ("gru", "bigru", "filtering", "posterior"):
        m[f"{k}_nll"] = nll(probs[k], labels)
    cal = {k: calibration(probs[k], labels) for k in ("gru", "bigru", "filtering", "posterior")}
    for k, c in cal.items():
        m[f"{k}_calibration_error"] = c[3]
    m["loglik_per_base"] = float(loglik.sum() / lengths.sum())
    gru_hits = int(((preds["gru"] == labels) & (labels >= 0)).sum())
    rng = preset_rng(seed, preset, "random_match")
    m["baseline_random_accuracy"], m["baseline_random_match_p"] = random_match(labels, S, gru_hits, random_draws,
                                                                                rng)
    m["baseline_random_draws"] = int(random_draws)
    write_json(m, metrics_out)

    table = test[["id", *COLUMNS]].copy()
    for name in MODELS:
        table[f"{name}_state"] = [decode_states(preds[name][i, :lengths[i]], hmm.states) for i in range(len(test))]
    for name in MODELS:
        for j, s in enumerate(hmm.states):
            table[f"{name}_p_{s}"] = _prob_strings(probs[name][..., j], lengths)
    write_tsv(table, predictions_out)
    plot_calibration(cal, calibration_png, f"GC-HMM {preset}: calibration on {len(test)} test sequences")
    names = ["GRU", "biGRU", "filtering", "posterior", "Viterbi", "random"]
    values = [m["gru_accuracy"], m["bigru_accuracy"], m["filtering_accuracy"], m["posterior_accuracy"],
              m["viterbi_accuracy"], m["baseline_random_accuracy"]]
    plot_bars(names, values, accuracy_png, "per-base accuracy (test)", title=f"GC-HMM {preset}: GRU ratio "
              f"{m['gru_filtering_ratio']:.3f} of filtering, biGRU {m['bigru_posterior_ratio']:.3f} of posterior")

    row = 0
    shown = {k: table[f"{k}_state"][row] for k in MODELS}
    shown["posterior"] = decode_states(preds["posterior"][row, :lengths[row]], hmm.states)
    log.info("alignment of test sequence %d (%d bp), GRU first:\n%s", row, lengths[row],
             alignment_text(test["dna"][row], test["hidden_state"][row], shown))
    log.info("%s: GRU %.4f (filtering %.4f, ratio %.4f +- %.4f); biGRU %.4f (posterior %.4f, ratio %.4f +- %.4f); "
             "Viterbi %.4f; random %.4f (P(random >= GRU) = %.3g over %d draws)", preset, m["gru_accuracy"],
             m["filtering_accuracy"], m["gru_filtering_ratio"], m["gru_filtering_ratio_se"], m["bigru_accuracy"],
             m["posterior_accuracy"], m["bigru_posterior_ratio"], m["bigru_posterior_ratio_se"], m["viterbi_accuracy"],
             m["baseline_random_accuracy"], m["baseline_random_match_p"], random_draws)
    return m


def summarize(metrics_paths, out):
    """Stage: one row per preset (its metrics.json) in one TSV, for the report."""
    import pandas as pd

    rows = [json.loads(Path(p).read_text()) for p in metrics_paths]
    keys = ["preset", "states", "gru_accuracy", "filtering_accuracy", "gru_filtering_ratio", "bigru_accuracy",
            "posterior_accuracy", "bigru_posterior_ratio", "viterbi_accuracy", "baseline_random_accuracy",
            "baseline_random_match_p", "posterior_accuracy_se", "selected_model", "converged", "n_train",
            "n_validation", "n_test", "test_bases"]
    write_tsv(pd.DataFrame([{k: r.get(k) for k in keys} for r in rows]), out)
