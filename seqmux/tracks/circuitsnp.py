"""circuitSNP track: chromatin accessibility (open / closed) from motif presence, evaluated against
honest baselines, and SNP scoring (after circuitSNP, Shanku et al.).

Data flow (one package function per workflow step):

- ``features_from_sequence``: windows of the genome (the spine's sampler and held-out chromosomes)
  scanned with JASPAR motifs (the demo genome's planted motifs plus other CORE vertebrate ones) into a
  binary window x motif matrix; labels drawn from a known sparse logistic model (the "true model")
  whose intercept gives the configured closed:open ratio. Written as ``{train,validation,test}.feather``
  in the source format (motif columns named by JASPAR matrix id, ``Y`` = open, ``Y_alt`` = closed).
- ``import_features``: the user's feather files in the source format (features may be strings of
  numbers), checked and written in the same normalised form.
- ``train``: the source's network (Linear(n, 5) - ReLU - Linear(5, 5) - ReLU - Linear(5, 2) - softmax,
  Xavier-uniform weights, BCE on both columns, Adam, full batch), keeping the lowest-validation-loss
  weights; and a scikit-learn logistic regression on the same features.
- ``simulate_vcf``: on the default, SNVs that destroy planted sites of positive-weight motifs and
  background SNVs far from any planted site.
- ``score_snps``: ``logit(p_alt) - logit(p_ref)`` of each SNV from the motif presence of its ref and
  alt windows, with the motifs lost and gained.
- ``evaluate``: BCE, AUROC and average precision on test of the network, the logistic regression,
  the no-skill baseline and (default) the true model; ROC / PR plots.

Every random draw comes from ``seqmux.seeding`` (track ``"circuitsnp"``, streams ``motifs``,
``true_model``, ``labels``, ``vcf``, ``init``).
"""

import json
import logging
import re

import numpy as np
import pandas as pd

from .. import BASES, checkpoint, seeding
from ..encoding import N_TOKEN, one_hot, tokenize
from ..errors import InputError
from ..outputs import atomic_path, write_json, write_tsv
from .stopping import EarlyStopping

log = logging.getLogger(__name__)

TRACK = "circuitsnp"      # the track's name in every seed (seqmux.seeding)
LABELS = ("Y", "Y_alt")   # label columns of the files this track writes: open, closed
JASPAR_ID = r"^MA\d{4}\.\d+$"
P_CLIP = 1e-6             # SNP scores: p clipped to [P_CLIP, 1 - P_CLIP]
RATIO_TOLERANCE = 0.5     # warn when a split's closed:open ratio is off the training one by more than this fraction
SPLITS = ("train", "validation", "test")
MAX_LOGGED_SKIPS = 10     # skipped VCF records logged one by one


# --- config ------------------------------------------------------------------------------------

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


# --- features from sequence ---------------------------------------------------------------------

def choose_feature_motifs(planted, total, min_bits, rng):
    """The motifs scanned: ``planted`` (the demo's, in their order) then JASPAR CORE vertebrate motifs
    of at least ``min_bits`` not among them, a seeded choice, up to ``total``; extras in id order."""
    from ..motifs import informative_motifs

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
    from ..motifs import motif_presence

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
    from ..genome import open_fasta
    from ..motifs import read_motifs, write_motifs
    from ..windows import sample_windows, write_windows

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


# --- features from the user's feather files -----------------------------------------------------

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


# --- the network and its training ----------------------------------------------------------------

def build_network(n_features, hidden, generator=None, bias_init="default"):
    """The source's network: ``Linear(n, h1) - ReLU - ... - Linear(h_last, 2) - softmax`` as an
    ``nn.Sequential`` whose output ``[batch, 2]`` is (P(open), P(closed)); Xavier-uniform weights
    (from ``generator``); biases as PyTorch's default (uniform in +-1/sqrt(fan_in), from
    ``generator``: the source leaves them so) or ``zero``."""
    import torch
    from torch import nn

    layers, width = [], n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers += [nn.Linear(width, 2), nn.Softmax(dim=1)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                if bias_init == "zero":
                    layer.bias.zero_()
                else:
                    bound = 1.0 / layer.in_features ** 0.5
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return net


def open_logit(net, x):
    """``logit(P(open))`` ``[batch]`` of the network: the difference of its two pre-softmax outputs
    (exact where the float32 probability would round to 1)."""
    z = net[:-1](x)
    return z[:, 0] - z[:, 1]


def fit_network(x_train, y_train, x_val, y_val, hidden, lr, epochs, seed, device="cpu", patience=0,
                min_improvement=0.0, bias_init="default"):
    """Full-batch Adam on BCE of both softmax columns against (Y, Y_alt) for at most ``epochs``; the
    weights of the epoch with the lowest validation loss are kept, and training stops after
    ``patience`` epochs without a loss lower by more than the fraction ``min_improvement``
    (``seqmux.tracks.stopping``; 0: never). Returns ``(net on the CPU, history, facts)``;
    ``history`` is a DataFrame of epoch (1-based), train_loss (before that epoch's step) and
    validation_loss (after it); ``facts``: ``best_epoch``, ``epochs_done``, ``converged``,
    ``best_validation_loss``."""
    import torch

    from ..runtime import progress

    gen = seeding.torch_generator(seed, TRACK, "init")
    net = build_network(x_train.shape[1], hidden, gen, bias_init).to(device)

    def tensors(x, y):
        y = np.asarray(y, dtype=np.float32)
        return (torch.as_tensor(np.asarray(x, dtype=np.float32), device=device),
                torch.as_tensor(np.stack([y, 1 - y], axis=1), device=device))

    xt, yt = tensors(x_train, y_train)
    xv, yv = tensors(x_val, y_val)
    loss_fn = torch.nn.BCELoss()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    train_loss, val_loss = [], []
    stopper = EarlyStopping(patience, min_improvement)
    for epoch in progress(range(1, epochs + 1), epochs, "train circuitsnp network"):
        opt.zero_grad()
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        with torch.no_grad():
            v = loss_fn(net(xv), yv).item()
        train_loss.append(loss.item())
        val_loss.append(v)
        stop = stopper.update(epoch, v, net)
        if epoch % max(1, epochs // 10) == 0 or stop:
            log.info("epoch %d: train BCE %.5f, validation BCE %.5f (best %.5f at epoch %d)", epoch,
                     train_loss[-1], v, stopper.best_loss, stopper.best_step)
        if stop:
            break
    stopper.restore(net)
    history = pd.DataFrame({"epoch": np.arange(1, len(train_loss) + 1), "train_loss": train_loss,
                            "validation_loss": val_loss})
    facts = dict(stopper.facts("epoch"), best_validation_loss=stopper.best_loss)
    return net.cpu(), history, facts


def fit_logistic(x, y, c):
    """scikit-learn ``LogisticRegression(C=c)`` (L2, lbfgs) on the same features: the reference a
    user would try first. Returns ``{coef, intercept, C}`` (plain lists, for JSON)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=5000).fit(np.asarray(x, dtype=np.float64), y)
    return {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]), "C": c}


def logistic_probability(model, x):
    """P(open) ``[n]`` of a ``fit_logistic`` model."""
    from scipy.special import expit

    return expit(np.asarray(x, dtype=np.float64) @ np.asarray(model["coef"]) + model["intercept"])


def save_network(net, path, names, hidden, facts):
    """``model.pt`` (``seqmux.checkpoint``, kind ``circuitsnp``): the weights with the sizes, the
    feature names and the training facts."""
    checkpoint.save(path, TRACK, net, n_features=len(names), hidden=[int(h) for h in hidden],
                    features=[str(n) for n in names], training=dict(facts))


def load_network(path):
    """``(net, meta)`` from ``save_network``'s file; an InputError naming the file when it is not one."""
    state, meta = checkpoint.load(path, TRACK, field="circuitsnp model")
    net = checkpoint.load_into(build_network(meta["n_features"], meta["hidden"]), state, path, TRACK,
                               "circuitsnp model")
    return net, meta


def network_logit(net, x):
    """``logit(P(open))`` ``[n]`` float64 of feature rows ``x [n, F]``."""
    import torch

    with torch.no_grad():
        return open_logit(net, torch.as_tensor(np.asarray(x, dtype=np.float32))).double().numpy()


def plot_losses(history, best_epoch, noskill, out):
    """Training and validation BCE per epoch, the no-skill validation BCE (the training open
    fraction for every window) as a flat line, the kept epoch marked."""
    from ..plots import plot_curves

    series = {"train": history["train_loss"], "validation": history["validation_loss"],
              f"no skill, validation ({noskill:.3f})": np.full(len(history), noskill)}
    plot_curves(history["epoch"], series, out, "epoch", "BCE", title="circuitSNP network (full batch)",
                best=(best_epoch, f"kept: epoch {best_epoch}"))


def train(train_path, val_path, out_model, out_logistic, out_history, out_plot, hidden, lr, epochs, logistic_c,
          seed, device="cpu", patience=0, min_improvement=0.0, bias_init="default"):
    """Step: train the network (early stopping on the validation split) and the logistic regression
    on the training split."""
    from ..runtime import choose_device

    dev = choose_device(device, "config", "circuitsnp.device")
    x, y, names = read_feather_split(train_path, "train split")
    xv, yv, names_v = read_feather_split(val_path, "validation split")
    if names_v != names:
        raise InputError(val_path, "feature columns", len(names_v), f"differ from the training split's ({len(names)})")
    log.info("training on %d windows x %d features (%d open), validating on %d, at most %d epochs (patience %d), "
             "lr %g, device %s", len(y), len(names), int(y.sum()), len(yv), epochs, patience, lr, dev)
    net, history, facts = fit_network(x, y, xv, yv, hidden, lr, epochs, seed, dev, patience, min_improvement,
                                      bias_init)
    best_epoch = facts["best_epoch"]
    base_bce = bce(yv, np.full(len(yv), y.mean()))
    log.info("kept epoch %d of %d: validation BCE %.5f (no-skill %.5f)", best_epoch, facts["epochs_done"],
             facts["best_validation_loss"], base_bce)
    if not facts["converged"]:
        log.warning("not converged: the validation BCE was still falling at the last epoch (%d); raise "
                    "circuitsnp.train.max_epochs or lr", facts["epochs_done"])
    save_network(net, out_model, names, hidden, facts)
    logistic = fit_logistic(x, y, logistic_c)
    logistic["features"] = names
    write_json(logistic, out_logistic)
    write_tsv(history, out_history)
    plot_losses(history, best_epoch, base_bce, out_plot)
    return history


# --- evaluation ----------------------------------------------------------------------------------

def bce(y, p, eps=1e-12):
    """Mean binary cross-entropy (natural log) of labels ``y`` under probabilities ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def scores(y, p):
    """``{bce, auroc, ap}`` of probabilities ``p`` for labels ``y``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"bce": bce(y, p), "auroc": float(roc_auc_score(y, p)), "ap": float(average_precision_score(y, p))}


def plot_roc_pr(y, predictors, out_roc, out_pr):
    """ROC and precision-recall curves of ``predictors`` (``{name: p}``) with the no-skill lines."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from ..plots import SERIES_COLOURS, save_figure

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
    metrics.update({"best_epoch": training.get("best_epoch"), "epochs_done": training.get("epochs_done"),
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


# --- SNPs ----------------------------------------------------------------------------------------

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
    from ..windows import window_bounds

    start, end = window_bounds(pos, length)
    return tokenize(fasta[chrom][start:end]), pos - 1 - start


def ref_alt_presence(fasta, snvs, motifs, threshold, length):
    """Motif presence ``(ref [n, M], alt [n, M])`` uint8 of the windows centred on SNVs
    ``[(chrom, pos, ref, alt, ...)]`` with the ref and with the alt base at the centre."""
    from ..variants import base_index

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
    from ..genome import chromosome_lengths, open_fasta
    from ..motifs import quantized_log_odds, read_motifs, reverse_complement
    from ..windows import window_bounds

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
    from ..genome import chromosome_lengths, open_fasta
    from ..motifs import read_motifs
    from ..windows import check_window
    from ..variants import check_refs, read_vcf

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
