"""circuitSNP track, evaluation: test metrics, ROC / PR plots, the simulated VCF and SNP scores.
"""

import json
import logging

import numpy as np
import pandas as pd

from ... import BASES
from ...encoding import tokenize
from ...errors import InputError
from ...outputs import atomic_path, write_json, write_tsv
from .data import MAX_LOGGED_SKIPS, P_CLIP, SPLITS, presence_of_tokens, read_feather_split, rng_of, true_probability
from .model import bce, load_network, logistic_probability, network_logit

log = logging.getLogger(__name__)


def scores(y, p):
    """``{bce, auroc, ap}`` of probabilities ``p`` for labels ``y``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"bce": bce(y, p), "auroc": float(roc_auc_score(y, p)), "ap": float(average_precision_score(y, p))}


def plot_roc_pr(y, predictors, out_roc, out_pr):
    """ROC and precision-recall curves of ``predictors`` (``{name: p}``) with the no-skill lines."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from ...plots import SERIES_COLOURS, save_figure

    fig, ax = plt.subplots(figsize=(5, 5))
    for (name, p), colour in zip(predictors.items(), SERIES_COLOURS):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=colour, lw=1.3, label=name)
    ax.plot([0, 1], [0, 1], color="#525252", ls="--", lw=1, label="no skill (AUROC 0.5)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC on test ({len(y)} windows, {int(np.sum(y))} open)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, out_roc)
    fig, ax = plt.subplots(figsize=(5, 5))
    for (name, p), colour in zip(predictors.items(), SERIES_COLOURS):
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, color=colour, lw=1.3, label=name, drawstyle="steps-post")
    frac = float(np.mean(y))
    ax.axhline(frac, color="#525252", ls="--", lw=1, label=f"no skill (AP = open fraction {frac:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall on test", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    save_figure(fig, out_pr)


def snp_metrics(snp_path, simulated_path):
    """Summary of the SNP scores (``score_snps``' table; ``simulated_path``: the simulated VCF's
    variant kinds, or ``""``)."""
    table = pd.read_csv(snp_path, sep="\t")
    out = {"snp_scored": int(len(table)),
           "snp_nonzero_fraction": float((table["score"] != 0).mean()) if len(table) else None}
    if "true_score" in table and len(table) > 1 and table["true_score"].std() > 0 and table["score"].std() > 0:
        out["snp_score_pearson_true"] = float(np.corrcoef(table["score"], table["true_score"])[0, 1])
    if simulated_path:
        kinds = pd.read_csv(simulated_path, sep="\t")
        merged = table.merge(kinds[["chrom", "pos", "ref", "alt", "kind"]], on=["chrom", "pos", "ref", "alt"])
        destroy = merged[merged["kind"] == "destroying"]["score"]
        background = merged[merged["kind"] == "background"]["score"]
        out.update({"snp_destroying_count": int(len(destroy)),
                    "snp_destroying_mean_score": float(destroy.mean()) if len(destroy) else None,
                    "snp_destroying_negative_fraction": float((destroy < 0).mean()) if len(destroy) else None,
                    "snp_background_count": int(len(background)),
                    "snp_background_zero_fraction": float((background == 0).mean()) if len(background) else None,
                    "snp_background_mean_abs_score": float(background.abs().mean()) if len(background) else None})
    return out


def evaluate(model_path, logistic_path, split_paths, true_path, snp_path, simulated_path, out_metrics,
             out_predictions, out_roc, out_pr, out_split=None):
    """Step: test-split metrics of the network, the logistic regression, no-skill and (when
    ``true_path``) the true model; ``selected_model`` (the lower validation BCE); predictions
    table, ``split.tsv`` (``id``: ``<split>:<1-based row of that split's file>``) and ROC / PR
    plots."""
    from scipy.special import expit

    net, payload = load_network(model_path)
    with open(logistic_path) as fh:
        logistic = json.load(fh)
    data = {s: read_feather_split(split_paths[s], f"{s} split") for s in SPLITS}
    x, y, names = data["test"]
    if names != payload["features"]:
        raise InputError(split_paths["test"], "feature columns", len(names), "differ from the model's")
    p_net = expit(network_logit(net, x))
    p_lr = logistic_probability(logistic, x)
    base = float(data["train"][1].mean())
    metrics = {"n_features": len(names)}
    for s in SPLITS:
        ys = data[s][1]
        metrics[f"n_{s}"] = int(len(ys))
        metrics[f"open_fraction_{s}"] = float(ys.mean())
        metrics[f"closed_per_open_{s}"] = float((1 - ys.mean()) / ys.mean())
    predictors = {"network": p_net, "logistic regression": p_lr}
    for key, p in (("network", p_net), ("logistic", p_lr)):
        metrics.update({f"{key}_{k}": v for k, v in scores(y, p).items()})
    metrics.update({"baseline_noskill_p_open": base, "baseline_noskill_bce": bce(y, np.full(len(y), base)),
                    "baseline_noskill_auroc": 0.5, "baseline_noskill_ap": float(y.mean())})
    xv, yv, _ = data["validation"]
    metrics["network_validation_bce"] = bce(yv, expit(network_logit(net, xv)))
    metrics["logistic_validation_bce"] = bce(yv, logistic_probability(logistic, xv))
    metrics["selected_model"] = min(("network", "logistic"), key=lambda m: metrics[f"{m}_validation_bce"])
    training = payload.get("training", {})
    metrics["converged"] = bool(training.get("converged", True))
    frame = pd.DataFrame({"id": np.arange(1, len(y) + 1), "label": y, "network": p_net, "logistic": p_lr})
    metrics.update({"true_bce": None, "true_auroc": None, "true_ap": None, "network_auroc_gap_to_true": None})
    if true_path:
        with open(true_path) as fh:
            true = json.load(fh)
        w = np.array([true["weights"].get(c, 0.0) for c in names])
        p_true = true_probability(x, w, true["intercept"])
        metrics.update({f"true_{k}": v for k, v in scores(y, p_true).items()})
        metrics["network_auroc_gap_to_true"] = metrics["true_auroc"] - metrics["network_auroc"]
        predictors["true model"] = p_true
        frame["true"] = p_true
    metrics.update({"network_c": training.get("c"), "best_epoch": training.get("best_epoch"),
                    "epochs_done": training.get("epochs_done"),
                    "best_validation_bce": training.get("best_validation_loss"),
                    "baseline_noskill_validation_bce": bce(yv, np.full(len(yv), base))})
    if snp_path:
        metrics.update(snp_metrics(snp_path, simulated_path))
    else:
        log.info("no SNP scoring in this run (features from feather files, or a user genome without circuitsnp.vcf)")
    for key in ("network", "logistic", "true", "baseline_noskill"):
        if metrics.get(f"{key}_auroc") is not None:
            log.info("test %-16s BCE %.4f  AUROC %.4f  AP %.4f", key, metrics[f"{key}_bce"], metrics[f"{key}_auroc"],
                     metrics[f"{key}_ap"])
    log.info("validation selected the %s (validation BCE: network %.5f, logistic %.5f)", metrics["selected_model"],
             metrics["network_validation_bce"], metrics["logistic_validation_bce"])
    write_tsv(frame, out_predictions)
    if out_split:
        ids = [f"{s}:{i}" for s in SPLITS for i in range(1, len(data[s][1]) + 1)]
        write_tsv(pd.DataFrame({"id": ids, "split": [s for s in SPLITS for _ in range(len(data[s][1]))]}), out_split)
    plot_roc_pr(y, predictors, out_roc, out_pr)
    write_json(metrics, out_metrics)
    return metrics


def read_sites(path, chroms=None):
    """Planted sites ``[(chrom, start, end, motif name, strand)]`` of a BED (BED coordinates);
    only on ``chroms`` when given."""
    out = []
    with open(path) as fh:
        for line in fh:
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\n").split("\t")
            if chroms is None or f[0] in chroms:
                out.append((f[0], int(f[1]), int(f[2]), f[3], f[5] if len(f) > 5 else "+"))
    return out


def snv_window(fasta, chrom, pos, length):
    """Tokens ``[L]`` of the window centred on 1-based ``pos`` and the SNV's offset in it."""
    from ...windows import window_bounds

    start, end = window_bounds(pos, length)
    return tokenize(fasta[chrom][start:end]), pos - 1 - start


def ref_alt_presence(fasta, snvs, motifs, threshold, length):
    """Motif presence ``(ref [n, M], alt [n, M])`` uint8 of the windows centred on SNVs
    ``[(chrom, pos, ref, alt, ...)]`` with the ref and with the alt base at the centre."""
    from ...variants import base_index

    ref = np.empty((len(snvs), length), dtype=np.uint8)
    for i, snv in enumerate(snvs):
        ref[i] = snv_window(fasta, snv[0], snv[1], length)[0]
    alt = ref.copy()
    alt[:, (length - 1) // 2] = [base_index(s[3]) for s in snvs]
    both = presence_of_tokens(np.concatenate([ref, alt]), motifs, threshold)
    return both[:len(snvs)], both[len(snvs):]


def destroying_snv(site_tokens, matrix):
    """``(column, alt token)`` of the substitution that lowers a site's score the most: the column
    where the site's base scores highest above that column's worst base (``matrix [4, k]``, oriented
    as the site reads on the + strand)."""
    cols = np.arange(matrix.shape[1])
    current = matrix[np.minimum(site_tokens, 3), cols]
    drop = np.where(site_tokens < 4, current - matrix.min(axis=0), -np.inf)
    j = int(np.argmax(drop))
    return j, int(np.argmin(matrix[:, j]))


def simulate_vcf(fasta_path, sites_bed, motifs_json, true_json, out_vcf, out_table, length, test_chroms,
                 threshold, n_destroying, n_background, min_distance, seed):
    """Step: the default VCF. ``n_destroying`` SNVs that destroy planted sites of the true model's
    positive-weight motifs (the most damaging substitution of the site, kept when the motif is then
    absent from the SNV's window), spread over those motifs; ``n_background`` SNVs at random
    positions at least ``min_distance`` bp from any planted site. All on ``test_chroms``."""
    from ...genome import chromosome_lengths, open_fasta
    from ...motifs import quantized_log_odds, read_motifs, reverse_complement
    from ...windows import window_bounds

    fasta = open_fasta(fasta_path)
    lengths = chromosome_lengths(fasta)
    motifs = read_motifs(motifs_json)
    with open(true_json) as fh:
        true = json.load(fh)
    rng = rng_of(seed, "vcf")
    by_id = {m.matrix_id: (i, m) for i, m in enumerate(motifs)}
    positive = [c for c, w in true["weights"].items() if w > 0]
    chroms = [c for c in test_chroms if c in lengths]
    sites = read_sites(sites_bed)

    def fits(chrom, pos):
        start, end = window_bounds(pos, length)
        return start >= 0 and end <= lengths[chrom]

    rows = []
    per_motif = {c: [s for s in sites if s[0] in chroms and s[3].split("_")[0] == c] for c in positive}
    queues = {c: list(rng.permutation(len(v))) for c, v in per_motif.items()}
    taken = set()
    while len(rows) < n_destroying and any(queues.values()):
        for c in positive:
            if len(rows) >= n_destroying or not queues[c]:
                continue
            chrom, start, end, _, strand = per_motif[c][queues[c].pop(0)]
            i, motif = by_id[c]
            matrix = quantized_log_odds(motif.counts)
            if strand == "-":
                matrix = reverse_complement(matrix)
            site = tokenize(fasta[chrom][start:end])
            if len(site) != motif.length:
                continue
            j, alt = destroying_snv(site, matrix)
            pos = start + j + 1
            if site[j] >= 4 or not fits(chrom, pos) or (chrom, pos) in taken:
                continue
            snv = (chrom, pos, BASES[site[j]], BASES[alt])
            ref_p, alt_p = ref_alt_presence(fasta, [snv], [motif], threshold, length)
            if ref_p[0, 0] == 1 and alt_p[0, 0] == 0:
                taken.add((chrom, pos))
                rows.append((*snv, "destroying", f"{c}_{motif.name}"))
    if len(rows) < n_destroying:
        log.warning("only %d site-destroying SNVs found (%d asked for)", len(rows), n_destroying)
    near = {c: np.zeros(lengths[c], dtype=bool) for c in chroms}
    for chrom, start, end, _, _ in sites:
        if chrom in near:
            near[chrom][max(0, start - min_distance):end + min_distance] = True
    n_bg, attempts = 0, 0
    while n_bg < n_background and attempts < 1000 * max(n_background, 1) and chroms:
        attempts += 1
        chrom = chroms[int(rng.integers(len(chroms)))]
        pos = int(rng.integers(1, lengths[chrom] + 1))
        base = fasta[chrom][pos - 1:pos].upper()
        if near[chrom][pos - 1] or base not in "ACGT" or not fits(chrom, pos) or (chrom, pos) in taken:
            continue
        alt = str(rng.choice([b for b in "ACGT" if b != base]))
        taken.add((chrom, pos))
        rows.append((chrom, pos, base, alt, "background", "."))
        n_bg += 1
    table = pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt", "kind", "motif"])
    order = {c: k for k, c in enumerate(lengths)}
    table = table.sort_values(["chrom", "pos"], key=lambda s: s.map(order) if s.name == "chrom" else s,
                              kind="stable").reset_index(drop=True)
    log.info("simulated VCF: %d site-destroying SNVs (motifs %s), %d background SNVs on %s",
             int((table["kind"] == "destroying").sum()), ", ".join(positive), n_bg, ", ".join(chroms))
    with atomic_path(out_vcf) as tmp:
        with open(tmp, "w") as fh:
            fh.write("##fileformat=VCFv4.2\n##source=seqmux circuitsnp simulate_vcf\n")
            fh.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
            for r in table.itertuples(index=False):
                fh.write(f"{r.chrom}\t{r.pos}\t{r.kind}:{r.motif}\t{r.ref}\t{r.alt}\t.\t.\t.\n")
    write_tsv(table, out_table)
    return table


def snp_score(logit_ref, logit_alt):
    """``(p_ref, p_alt, score)``: probabilities and ``logit(p_alt) - logit(p_ref)`` with p clipped to
    ``[P_CLIP, 1 - P_CLIP]`` (positive: the alt allele opens chromatin)."""
    from scipy.special import expit

    bound = np.log((1 - P_CLIP) / P_CLIP)
    zr = np.clip(np.asarray(logit_ref, dtype=np.float64), -bound, bound)
    za = np.clip(np.asarray(logit_alt, dtype=np.float64), -bound, bound)
    return expit(zr), expit(za), za - zr


def score_snps(vcf_path, fasta_path, model_path, motifs_json, true_json, out_scores, out_skipped, length, threshold,
               field="circuitsnp.vcf"):
    """Step: score the SNVs of a VCF (REF checked against the genome; mismatches and non-SNVs
    skipped and listed in ``out_skipped``). ``true_json`` (or ``""``): adds the true model's score."""
    from ...genome import chromosome_lengths, open_fasta
    from ...motifs import read_motifs
    from ...variants import check_refs, read_vcf
    from ...windows import check_window

    fasta = open_fasta(fasta_path)
    lengths = chromosome_lengths(fasta)
    motifs = read_motifs(motifs_json)
    net, payload = load_network(model_path)
    ids = [m.matrix_id for m in motifs]
    if ids != payload["features"]:
        raise InputError(model_path, "features", len(payload["features"]),
                         "the model's features are not the motifs scanned")
    snvs, skipped = read_vcf(vcf_path, field=field)
    for chrom, pos, _, _, where in snvs:
        check_window(chrom, pos, lengths, length, where, "CHROM", "POS")
    kept, mismatches = check_refs(snvs, fasta)
    skipped = skipped + mismatches
    for label, reason in skipped[:MAX_LOGGED_SKIPS]:
        log.warning("skipped %s: %s", label, reason)
    if len(skipped) > MAX_LOGGED_SKIPS:
        log.warning("... and %d more skipped VCF records", len(skipped) - MAX_LOGGED_SKIPS)
    log.info("VCF %s: %d SNVs scored, %d records skipped (%d REF mismatches)", vcf_path, len(kept), len(skipped),
             len(mismatches))
    ref_p, alt_p = ref_alt_presence(fasta, kept, motifs, threshold, length) if kept else (
        np.zeros((0, len(motifs)), np.uint8), np.zeros((0, len(motifs)), np.uint8))
    p_ref, p_alt, score = snp_score(network_logit(net, ref_p), network_logit(net, alt_p))
    label = [f"{m.matrix_id}_{m.name}" for m in motifs]
    lost = [",".join(label[j] for j in np.nonzero((r == 1) & (a == 0))[0]) for r, a in zip(ref_p, alt_p)]
    gained = [",".join(label[j] for j in np.nonzero((r == 0) & (a == 1))[0]) for r, a in zip(ref_p, alt_p)]
    table = pd.DataFrame({"chrom": [s[0] for s in kept], "pos": [s[1] for s in kept], "ref": [s[2] for s in kept],
                          "alt": [s[3] for s in kept], "p_ref": p_ref, "p_alt": p_alt, "score": score,
                          "motifs_lost": lost, "motifs_gained": gained})
    if true_json:
        with open(true_json) as fh:
            true = json.load(fh)
        w = np.array([true["weights"].get(c, 0.0) for c in ids])
        z_ref = ref_p.astype(np.float64) @ w + true["intercept"]
        z_alt = alt_p.astype(np.float64) @ w + true["intercept"]
        table["true_score"] = snp_score(z_ref, z_alt)[2]
    changed = int((table["score"] != 0).sum())
    log.info("%d of %d SNVs change the predicted accessibility (motif presence changed for %d)", changed, len(table),
             int(((ref_p != alt_p).any(axis=1)).sum()))
    write_tsv(table, out_scores)
    write_tsv(pd.DataFrame(skipped, columns=["variant", "reason"]), out_skipped)
    return table
