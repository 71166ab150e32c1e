"""circuitSNP track, input: config checks, features from sequence (the default), the user's
feather files in the source format.
"""

import logging
import re

import numpy as np
import pandas as pd

from ... import seeding
from ...encoding import N_TOKEN, one_hot, tokenize
from ...errors import InputError
from ...outputs import atomic_path, write_json, write_tsv

log = logging.getLogger(__name__)

TRACK = "circuitsnp"      # the track's name in every seed (seqmux.seeding)

LABELS = ("Y", "Y_alt")   # label columns of the files this track writes: open, closed

JASPAR_ID = r"^MA\d{4}\.\d+$"

P_CLIP = 1e-6             # SNP scores: p clipped to [P_CLIP, 1 - P_CLIP]

RATIO_TOLERANCE = 0.5     # warn when a split's closed:open ratio is off the training one by more than this fraction

SPLITS = ("train", "validation", "test")

MAX_LOGGED_SKIPS = 10     # skipped VCF records logged one by one


def check_config(section, planted=None):
    """Checks of the ``circuitsnp`` config section that need no data; InputError with source
    ``config``. ``planted``: number of planted demo motifs (None when the genome is the user's)."""
    def bad(key, value, problem):
        raise InputError("config", f"circuitsnp.{key}", value, problem)

    feats = section["features"]
    given = [s for s in SPLITS if feats[s]]
    if given and len(given) < 3:
        missing = [s for s in SPLITS if not feats[s]][0]
        bad(f"features.{missing}", "", "set all three of features.train, .validation, .test (or none)")
    try:
        re.compile(section["feature_columns"])
    except re.error as err:
        bad("feature_columns", section["feature_columns"], f"not a regular expression: {err}")
    labels = section["label_columns"]
    if len(labels) != 2 or labels[0] == labels[1]:
        bad("label_columns", labels, "two distinct column names are needed: [open, closed]")
    if re.search(section["feature_columns"], labels[0]) or re.search(section["feature_columns"], labels[1]):
        bad("label_columns", labels, f"a label column matches feature_columns={section['feature_columns']!r}")
    if given:
        return
    weights = section["true_model"]["weights"]
    if not any(w > 0 for w in weights):
        bad("true_model.weights", weights,
            "needs at least one positive weight (the simulated VCF destroys their sites)")
    if len(weights) > section["motifs"]:
        bad("true_model.weights", weights, f"more weights than motifs={section['motifs']}")
    if planted is not None:
        if section["motifs"] < planted:
            bad("motifs", section["motifs"], f"fewer than the {planted} motifs planted in the demo genome")
        if len(weights) > planted:
            bad("true_model.weights", weights, f"more weights than the {planted} motifs planted in the demo genome")


def rng_of(seed, stream):
    """A ``numpy.random.Generator`` of the track's named random stream."""
    return seeding.rng(seed, TRACK, stream)


def choose_feature_motifs(planted, total, min_bits, rng):
    """The motifs scanned: ``planted`` (the demo's, in their order) then JASPAR CORE vertebrate motifs
    of at least ``min_bits`` not among them, a seeded choice, up to ``total``; extras in id order."""
    from ...motifs import informative_motifs

    pool = informative_motifs(min_bits, exclude=[m.matrix_id for m in planted])
    need = total - len(planted)
    if need > len(pool):
        raise InputError("config", "circuitsnp.motifs", total,
                         f"only {len(pool) + len(planted)} JASPAR motifs of at least {min_bits} bits are available")
    picks = sorted(rng.choice(len(pool), size=need, replace=False)) if need > 0 else []
    return list(planted) + [pool[i] for i in picks]


def window_tokens(fasta, windows):
    """Tokens ``[N, L]`` uint8 of windows (``seqmux.windows.Window``) of one length."""
    length = windows[0].end - windows[0].start
    out = np.full((len(windows), length), N_TOKEN, dtype=np.uint8)
    for i, w in enumerate(windows):
        out[i] = tokenize(fasta[w.chrom][w.start:w.end])
    return out


def presence_of_tokens(tokens, motifs, threshold, batch_size=256):
    """Motif presence ``[N, M]`` uint8 of token windows ``[N, L]`` (best log-odds on either strand
    >= ``threshold`` x the motif's maximum score)."""
    from ...motifs import motif_presence

    parts = []
    for lo in range(0, len(tokens), 4096):  # one-hot in blocks: 4096 x 4 x L float32 at a time
        x = one_hot(tokens[lo:lo + 4096])
        parts.append(motif_presence(x, motifs, threshold, batch_size))
    return np.concatenate(parts) if parts else np.zeros((0, len(motifs)), dtype=np.uint8)


def true_model_weights(motifs, n_candidates, weights, rng):
    """Weights ``[M]`` of the sparse true model: ``weights`` put on a seeded choice of distinct motifs
    among the first ``n_candidates`` (the planted ones on the demo genome), 0 elsewhere."""
    w = np.zeros(len(motifs))
    picks = rng.choice(n_candidates, size=len(weights), replace=False)
    w[picks] = weights
    return w


def tune_intercept(presence, weights, open_fraction):
    """Intercept ``b`` with mean ``sigmoid(presence @ weights + b)`` = ``open_fraction`` over the
    windows (bisection; the mean is increasing in ``b``)."""
    from scipy.optimize import brentq
    from scipy.special import expit

    z = presence.astype(np.float64) @ weights
    return float(brentq(lambda b: expit(z + b).mean() - open_fraction, -60.0, 60.0, xtol=1e-12))


def true_probability(presence, weights, intercept):
    """P(open) ``[N]`` of the true model."""
    from scipy.special import expit

    return expit(presence.astype(np.float64) @ np.asarray(weights, dtype=np.float64) + intercept)


def split_frame(presence, open_labels, columns):
    """A split in the source format: one uint8 column per motif, then ``Y`` (open), ``Y_alt``."""
    frame = pd.DataFrame(presence.astype(np.uint8), columns=list(columns))
    frame[LABELS[0]] = open_labels.astype(np.int64)
    frame[LABELS[1]] = 1 - open_labels.astype(np.int64)
    return frame


def write_feather(frame, path):
    """A DataFrame as a feather file (uncompressed, whole or not at all)."""
    with atomic_path(path) as tmp:
        frame.reset_index(drop=True).to_feather(tmp, compression="uncompressed")


def log_ratios(labels_by_split):
    """Log each split's closed:open ratio; warn when one is far from the training ratio.
    Returns ``{split: (open fraction, closed per open)}``."""
    out = {}
    for split, y in labels_by_split.items():
        n_open = int(np.sum(y))
        frac = n_open / max(len(y), 1)
        ratio = (len(y) - n_open) / n_open if n_open else float("inf")
        out[split] = (frac, ratio)
        log.info("%s: %d windows, %d open, %d closed: closed:open = %.2f:1", split, len(y), n_open, len(y) - n_open,
                 ratio)
    base = out.get("train", (0, 0))[1]
    for split, (_, ratio) in out.items():
        if base and abs(ratio - base) > RATIO_TOLERANCE * base:
            log.warning("%s: closed:open ratio %.2f differs from the training split's %.2f by more than %d%%",
                        split, ratio, base, 100 * RATIO_TOLERANCE)
    return out


def features_from_sequence(fasta_path, planted_json, out_splits, out_motifs, out_table, out_true, out_windows,
                           length, max_n, counts, validation_chroms, test_chroms, seed, n_motifs, min_bits,
                           threshold, weights, closed_per_open):
    """Step: sample windows, scan motifs, draw labels from the true model; write the splits.

    ``out_splits``: ``{split: path}``. ``planted_json``: the demo's planted motifs (``""`` on a user
    genome: every motif is then a JASPAR choice and the true model's motifs are drawn among all).
    """
    from ...genome import open_fasta
    from ...motifs import read_motifs, write_motifs
    from ...windows import sample_windows, write_windows

    planted = read_motifs(planted_json) if planted_json else []
    motifs = choose_feature_motifs(planted, n_motifs, min_bits, rng_of(seed, "motifs"))
    log.info("%d motifs: %d planted in the demo genome, %d other JASPAR CORE vertebrate motifs", len(motifs),
             len(planted), len(motifs) - len(planted))
    try:
        windows = sample_windows(fasta_path, length, max_n, counts, validation_chroms, test_chroms, seed)
    except InputError as err:  # the sampler names the spine's keys; this track's count and max_n are its own
        if err.field.startswith(("windows.count", "windows.max_n")):
            raise InputError(err.source, f"circuitsnp.{err.field}", err.value, err.problem) from None
        raise
    fasta = open_fasta(fasta_path)
    presence = presence_of_tokens(window_tokens(fasta, windows), motifs, threshold)
    freq = presence.mean(axis=0)
    log.info("motif presence at threshold %.2f of the maximum score: mean %.3f per motif and window; "
             "%d motifs in fewer than 2%% of windows, %d in more than half", threshold, freq.mean(),
             int((freq < 0.02).sum()), int((freq > 0.5).sum()))
    w = true_model_weights(motifs, len(planted) or len(motifs), weights, rng_of(seed, "true_model"))
    intercept = tune_intercept(presence, w, 1.0 / (1.0 + closed_per_open))
    p = true_probability(presence, w, intercept)
    labels = (rng_of(seed, "labels").random(len(p)) < p).astype(np.int64)
    for i in np.nonzero(w)[0]:
        log.info("true model: %s %s weight %+.2f (present in %.1f%% of windows)", motifs[i].matrix_id,
                 motifs[i].name, w[i], 100 * freq[i])
    log.info("true model intercept %.4f (mean P(open) = 1 / (1 + %g))", intercept, closed_per_open)
    split = np.array([win.split for win in windows])
    log_ratios({s: labels[split == s] for s in SPLITS})
    columns = [m.matrix_id for m in motifs]
    for s in SPLITS:
        rows = split == s
        write_feather(split_frame(presence[rows], labels[rows], columns), out_splits[s])
    table = pd.DataFrame({"matrix_id": columns, "name": [m.name for m in motifs],
                          "planted": [i < len(planted) for i in range(len(motifs))],
                          "true_weight": w, "presence": freq})
    write_tsv(table, out_table)
    with atomic_path(out_motifs) as tmp:
        write_motifs(motifs, tmp)
    write_json({"intercept": intercept, "weights": {c: float(x) for c, x in zip(columns, w) if x},
                "threshold": threshold, "length": length, "closed_per_open": closed_per_open}, out_true)
    with atomic_path(out_windows) as tmp:
        write_windows(windows, tmp)
    return table


def _plain(value):
    """A numpy scalar as the Python value (for error messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _numeric(series, path, column):
    """``series`` as float64; InputError naming the first value that is not a number."""
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(path, f"{column}[row {row}]", _plain(series.iloc[row]), "not a finite number")
    return values


def read_feather_split(path, field, feature_pattern=None, label_columns=LABELS):
    """``(features [n, F] float32, open labels [n] int64, feature names)`` of a split in the source
    format, checked: feature columns are those matching ``feature_pattern`` (a regular expression;
    None: every column but the labels), numbers or strings of numbers; the two label columns
    (open, closed) are one-hot. ``field``: the config field that names the file, for errors."""
    import pyarrow

    try:
        frame = pd.read_feather(path)
    except FileNotFoundError:
        raise InputError(path, field, str(path), "file not found") from None
    except (pyarrow.ArrowInvalid, OSError) as err:
        raise InputError(path, field, str(path), f"not a readable feather file: {err}".splitlines()[0]) from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    for c in label_columns:
        if c not in columns:
            raise InputError(path, "circuitsnp.label_columns", c,
                             f"label column not in the file (columns: {', '.join(columns[:6])}"
                             f"{', ...' if len(columns) > 6 else ''})")
    if feature_pattern is None:
        names = [c for c in columns if c not in label_columns]
    else:
        regex = re.compile(feature_pattern)
        names = [c for c in columns if regex.search(c) and c not in label_columns]
    if not names:
        raise InputError(path, "circuitsnp.feature_columns", feature_pattern or "",
                         f"matches no column (columns: {', '.join(columns[:6])}{', ...' if len(columns) > 6 else ''})")
    x = np.empty((len(frame), len(names)), dtype=np.float32)
    for j, c in enumerate(names):
        x[:, j] = _numeric(frame[c], path, c)
    y_open = _numeric(frame[label_columns[0]], path, label_columns[0])
    y_closed = _numeric(frame[label_columns[1]], path, label_columns[1])
    onehot = ((y_open == 1) & (y_closed == 0)) | ((y_open == 0) & (y_closed == 1))
    if not onehot.all():
        row = int(np.argmin(onehot))
        raise InputError(path, f"{label_columns[0]},{label_columns[1]}[row {row}]",
                         (_plain(frame[label_columns[0]].iloc[row]), _plain(frame[label_columns[1]].iloc[row])),
                         "labels are not one-hot: exactly one of the two must be 1, the other 0")
    y = y_open.astype(np.int64)
    if len(y) == 0 or y.min() == y.max():
        what = "no rows" if len(y) == 0 else f"all {len(y)} rows {'open' if y[0] else 'closed'}"
        raise InputError(path, label_columns[0], int(y.sum()), f"split has a single class ({what})")
    return x, y, names


def read_user_splits(paths, feature_pattern, label_columns):
    """The three user splits, checked (``read_feather_split``) and with the same feature columns
    (validation and test reordered to the training file's order)."""
    out = {}
    for s in SPLITS:
        out[s] = list(read_feather_split(paths[s], f"circuitsnp.features.{s}", feature_pattern, label_columns))
    names = out["train"][2]
    for s in ("validation", "test"):
        other = out[s][2]
        extra, missing = sorted(set(other) - set(names)), sorted(set(names) - set(other))
        counts = f"({len(other)} feature columns here, {len(names)} in the train file)"
        if extra:
            raise InputError(paths[s], "circuitsnp.feature_columns", extra[0],
                             f"feature column in this file but not in the train file {paths['train']} {counts}")
        if missing:
            raise InputError(paths[s], "circuitsnp.feature_columns", missing[0],
                             f"feature column of the train file {paths['train']} missing from this file {counts}")
        if other != names:
            order = [other.index(c) for c in names]
            out[s][0] = out[s][0][:, order]
            out[s][2] = names
    return out


def import_features(paths, out_splits, out_table, feature_pattern, label_columns):
    """Step: the user's feather splits (source format) checked and written normalised (numeric
    features in the training file's column order, labels as ``Y`` / ``Y_alt``)."""
    splits = read_user_splits(paths, feature_pattern, label_columns)
    names = splits["train"][2]
    log.info("%d feature columns matching %r; labels %s (open), %s (closed)", len(names), feature_pattern,
             *label_columns)
    log_ratios({s: splits[s][1] for s in SPLITS})
    for s in SPLITS:
        x, y, _ = splits[s]
        frame = pd.DataFrame(x, columns=names)
        if np.all((x == 0) | (x == 1)):
            frame = frame.astype(np.uint8)
        frame[LABELS[0]] = y
        frame[LABELS[1]] = 1 - y
        write_feather(frame, out_splits[s])
    x = splits["train"][0]
    table = pd.DataFrame({"matrix_id": names, "name": names, "planted": False, "true_weight": 0.0,
                          "presence": (x != 0).mean(axis=0)})
    write_tsv(table, out_table)
    return table
