"""sgRNA track, input: the config checks, the simulated default, reading and encoding the user's
guides, and the train / validation / test split (sequences and groups whole).

Conventions: the one-hot tensors follow the package's base order (``seqmux.BASES`` = A, G, C, T:
``[..., 4, P]`` arrays); the tables written for people have rows A, C, G, T (the source's layout).
Positions are 1-based positions in the input sequence. Every random draw comes from
``seqmux.seeding`` (track ``"sgrna"``).
"""

import io
import logging
import math
import os
import zipfile

import numpy as np
import pandas as pd

from ... import BASES, seeding
from ...encoding import one_hot, tokenize
from ...errors import InputError
from ...outputs import atomic_path, write_tsv
from ..splitting import SPLITS, check_split_sizes, deal_components, linked_components, split_counts, write_split

log = logging.getLogger(__name__)

TRACK = "sgrna"  # the track's name in every seed (seqmux.seeding)
ROWS = "ACGT"  # row order of the tables and the heatmap
_ROW_INDEX = [BASES.index(b) for b in ROWS]  # package order (A,G,C,T) -> A,C,G,T
MIN_SPLIT = 2  # guides each side of the split needs at least (correlations need two)


def check_config(section):
    """Checks of the ``sgrna`` config section that need no data; InputError (source ``config``)."""
    if section["sequence_column"] == section["outcome_column"]:
        raise InputError("config", "sgrna.outcome_column", section["outcome_column"],
                         "the same column as sgrna.sequence_column")
    pam = section["layout"]["pam"]
    if not pam or set(pam.upper()) - set("ACGTN"):
        raise InputError("config", "sgrna.layout.pam", pam, "a PAM pattern of A, C, G, T, N letters")
    first = section["simulate"]["first_base"]
    if first and first.upper() not in ("A", "C", "G", "T"):
        raise InputError("config", "sgrna.simulate.first_base", first, "one of A, C, G, T or '' (none fixed)")
    if section["data"] and not os.path.isfile(section["data"]):
        raise InputError("config", "sgrna.data", section["data"], "file not found")
    split = section["split"]
    if split["test_fraction"] + split["validation_fraction"] >= 1:
        raise InputError("config", "sgrna.split.validation_fraction", split["validation_fraction"],
                         f"with test_fraction={split['test_fraction']} nothing is left for training")
    if not section["data"]:
        if split["group_column"]:
            raise InputError("config", "sgrna.split.group_column", split["group_column"],
                             "the simulated default has no group column (set sgrna.data)")
        n = section["simulate"]["guides"]
        smallest = min(round(n * split["test_fraction"]), round(n * split["validation_fraction"]),
                       n - round(n * split["test_fraction"]) - round(n * split["validation_fraction"]))
        if smallest < MIN_SPLIT:
            raise InputError("config", "sgrna.simulate.guides", n,
                             f"too few for the split at sgrna.split.test_fraction={split['test_fraction']}, "
                             f"validation_fraction={split['validation_fraction']}")


def layout_of(section):
    """``(upstream, guide, pam)`` lengths in nt from the config's ``layout``."""
    lay = section["layout"]
    return int(lay["upstream"]), int(lay["guide"]), len(lay["pam"])


def position_scales(length, upstream, guide, pam):
    """Relative size ``[length]`` of each position's true effects (Rule-Set-like: the guide's bases
    nearest the PAM matter most): 0.25 in the flanks, rising linearly from 0.4 to 1.0 along the
    guide towards the PAM, 0.6 in the PAM."""
    pos = np.arange(length)
    scale = np.full(length, 0.25)
    in_guide = (pos >= upstream) & (pos < upstream + guide)
    scale[in_guide] = 0.4 + 0.6 * (pos[in_guide] - upstream) / max(guide - 1, 1)
    scale[(pos >= upstream + guide) & (pos < upstream + guide + pam)] = 0.6
    return scale


def fixed_bases(section):
    """``{0-based position: base}`` of the simulated guides' constant bases: the guide's first base
    (``simulate.first_base``) and the PAM's non-N letters (the GG of NGG)."""
    upstream, guide, _ = layout_of(section)
    fixed = {}
    if section["simulate"]["first_base"]:
        fixed[upstream] = section["simulate"]["first_base"].upper()
    for k, b in enumerate(section["layout"]["pam"].upper()):
        if b != "N":
            fixed[upstream + guide + k] = b
    return fixed


def true_network(rng, length, variable, scales, signal_sd):
    """A random network of the model's own form: weights ``w [P, 4]`` (A,G,C,T) ~ N(0, 1) (a
    negative weight: that base contributes nothing, as through the ReLU) and head ``beta [P]``
    = ``scales`` with random signs, then ``beta`` rescaled so that the outcome's signal has
    standard deviation ``signal_sd`` when the bases are uniform and independent.

    Returns ``(w, beta)`` over the ``variable`` positions (0-based indices into ``length``)."""
    w = rng.normal(size=(len(variable), 4))
    beta = scales[variable] * rng.choice([-1.0, 1.0], size=len(variable))
    contrib = beta[:, None] * np.maximum(w, 0.0)
    sd = math.sqrt(float(contrib.var(axis=1).sum()))  # variance of a sum of independent positions
    return w, beta * (signal_sd / sd if sd > 0 else 0.0)


def simulate_guides(section, seed):
    """Guides, outcomes and the true effect map of the default data.

    Bases are uniform and independent except the fixed ones (``fixed_bases``). The outcome of a
    guide is ``mean + sum_i (beta_i relu(w_i . x_i) - E_i) + noise``, ``E_i`` the position's
    expected contribution, noise ~ N(0, ``noise_sd``), then clipped to [0, 1] (the only step the
    network cannot represent; the fraction clipped is logged, ~0.05 % on the default).

    Returns ``(sequences [N] str, outcomes [N] float64, true_effects [4, P] (A,G,C,T, centred per
    position), positions [P] 1-based, clipped fraction)``.
    """
    sim = section["simulate"]
    upstream, guide, pam = layout_of(section)
    length = upstream + guide + pam + int(sim["downstream"])
    rng = seeding.rng(seed, TRACK, "simulate")
    fixed = fixed_bases(section)
    variable = np.array([i for i in range(length) if i not in fixed], dtype=np.int64)
    w, beta = true_network(rng, length, variable, position_scales(length, upstream, guide, pam), sim["signal_sd"])
    contrib = beta[:, None] * np.maximum(w, 0.0)  # [P, 4] (A,G,C,T)
    n = int(sim["guides"])
    tokens = np.empty((n, length), dtype=np.uint8)
    tokens[:, variable] = rng.integers(0, 4, size=(n, len(variable)))
    for i, b in fixed.items():
        tokens[:, i] = BASES.index(b)
    signal = contrib[np.arange(len(variable)), tokens[:, variable]].sum(axis=1) - contrib.mean(axis=1).sum()
    raw = sim["mean"] + signal + rng.normal(0.0, sim["noise_sd"], size=n)
    outcome = np.clip(raw, 0.0, 1.0)
    letters = np.frombuffer(BASES.encode(), dtype=np.uint8)[tokens]
    sequences = [row.tobytes().decode() for row in letters]
    effects = (contrib - contrib.mean(axis=1, keepdims=True)).T  # [4, P]
    return sequences, outcome, effects, variable + 1, float(np.mean(raw != outcome))


def effects_frame(effects, positions):
    """A table of effects ``[4, P]`` (A,G,C,T) with rows A, C, G, T and one column per 1-based
    position (the layout of ``base_effects.tsv`` and ``true_effects.tsv``)."""
    frame = pd.DataFrame(np.asarray(effects)[_ROW_INDEX], index=list(ROWS),
                         columns=[str(int(p)) for p in positions])
    frame.index.name = "base"
    return frame


def read_effects(path):
    """``(effects [4, P] in A,G,C,T order, positions [P])`` from a table written by ``effects_frame``."""
    frame = pd.read_csv(path, sep="\t", index_col=0)
    values = frame.loc[list(ROWS)].to_numpy(dtype=np.float64)
    out = np.empty_like(values)
    out[_ROW_INDEX] = values
    return out, np.array([int(c) for c in frame.columns], dtype=np.int64)


def simulate(section, seed, guides_out, truth_out):
    """Stage: the default data as a TSV in the source format (``sequence_column``,
    ``outcome_column``) and the true effect map (rows A, C, G, T; a column per variable position)."""
    sequences, outcome, effects, positions, clipped = simulate_guides(section, seed)
    frame = pd.DataFrame({section["sequence_column"]: sequences, section["outcome_column"]: outcome})
    write_tsv(frame, guides_out)
    write_tsv(effects_frame(effects, positions), truth_out, index=True)
    log.info("simulated %d guides of %d nt: %d variable positions, outcome mean %.3f sd %.3f, %.2f%% clipped "
             "to [0, 1]", len(sequences), len(sequences[0]), len(positions), outcome.mean(), outcome.std(),
             100 * clipped)


def read_guides(path, sequence_column, outcome_column, allow_n=False, group_column=""):
    """Sequences (upper case), outcomes and groups of a tab-separated file with a header line;
    InputError naming the file, the column (and data row, 1-based) and the value for every bad entry.
    A guide may appear on several rows (one per screen or condition, as public screens list them).

    Returns ``(sequences [N] str, outcomes [N] float64, groups [N] str or None without group_column)``.
    """
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(path, "sgrna.data", str(path), "empty file (no header line)") from None
    except pd.errors.ParserError as err:
        raise InputError(path, "sgrna.data", str(path), f"not a tab-separated table: {str(err).strip()}") from None
    wanted = [("sgrna.sequence_column", sequence_column), ("sgrna.outcome_column", outcome_column)]
    for field, name in wanted + ([("sgrna.split.group_column", group_column)] if group_column else []):
        if name not in frame.columns:
            raise InputError(path, field, name, f"no such column (columns: {', '.join(map(str, frame.columns))})")
    allowed = set("ACGTN" if allow_n else "ACGT")
    sequences = [s.strip().upper() for s in frame[sequence_column]]
    length = len(sequences[0]) if sequences else 0
    for row, seq in enumerate(sequences, start=1):
        field = f"{sequence_column} (row {row})"
        bad = set(seq) - allowed
        if bad:
            pos = min(seq.index(c) for c in bad)
            hint = " (set sgrna.allow_n: true to allow N)" if seq[pos] == "N" else ""
            raise InputError(path, field, seq,
                             f"character {seq[pos]!r} at position {pos + 1} is not A, C, G or T{hint}")
        if not seq:
            raise InputError(path, field, seq, "empty sequence")
        if len(seq) != length:
            raise InputError(path, field, seq, f"length {len(seq)}, but the first guide's is {length}")
    outcomes = np.empty(len(sequences), dtype=np.float64)
    for row, text in enumerate(frame[outcome_column], start=1):
        field = f"{outcome_column} (row {row})"
        if not text.strip():
            raise InputError(path, field, text, "missing outcome")
        try:
            outcomes[row - 1] = float(text)
        except ValueError:
            raise InputError(path, field, text, "not a number") from None
        if not math.isfinite(outcomes[row - 1]):
            raise InputError(path, field, text, "not a finite number")
    groups = None
    if group_column:
        groups = [g.strip() for g in frame[group_column]]
        for row, g in enumerate(groups, start=1):
            if not g:
                raise InputError(path, f"{group_column} (row {row})", g, "missing group (sgrna.split.group_column)")
    return sequences, outcomes, groups


def encode_onehot(sequences):
    """One-hot ``[N, 4, L]`` uint8 (A,G,C,T; N all zeros) of equal-length upper-case sequences."""
    tokens = np.stack([tokenize(s) for s in sequences])
    return one_hot(tokens).astype(np.uint8)


def variable_positions(onehot):
    """Boolean ``[L]``: positions whose column differs between guides (an all-N column is as
    constant as an all-A one). Explicit per-base columns, so a base that never occurs at a position
    keeps every other base in its place (the source's ``get_dummies`` misaligned them)."""
    return np.any(onehot != onehot[:1], axis=(0, 1))


def split_guides(sequences, test_fraction, validation_fraction, seed, groups=None):
    """``"train"`` / ``"validation"`` / ``"test"`` per row (object array ``[N]``): rows with the same
    sequence, and with ``groups`` rows of the same group (a gene's tiling guides overlap), are
    linked and dealt whole (``seqmux.tracks.splitting``), in a seeded order.

    Returns ``(split, components)``."""
    components = linked_components(list(sequences), *([list(groups)] if groups is not None else []))
    split = deal_components(components, test_fraction, validation_fraction, seeding.rng(seed, TRACK, "split"))
    return split, components


def write_npz(path, **arrays):
    """Arrays as an uncompressed ``.npz`` with fixed zip timestamps (same arrays, same bytes; numpy's
    own ``savez`` stamps the current time)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def encode(data_path, encoded_out, split_out, sequence_column, outcome_column, allow_n, split, seed):
    """Stage: read and check the guides, one-hot them, drop constant positions, split them
    (``split_guides``: ``split`` is the config's ``sgrna.split`` section).

    Writes ``encoded.npz``: ``onehot [N, 4, P]`` uint8 (A,G,C,T), ``outcome [N]`` float64,
    ``positions [P]`` (1-based, kept positions), ``split [N]`` (0 train, 1 validation, 2 test),
    ``length`` (L), ``counts`` (the split's counts: ``split_counts`` order); and ``split.tsv``
    (``id``: the 1-based data row, ``split``).
    """
    group_column = split["group_column"]
    sequences, outcome, groups = read_guides(data_path, sequence_column, outcome_column, allow_n, group_column)
    n = len(sequences)
    parts, components = split_guides(sequences, split["test_fraction"], split["validation_fraction"], seed, groups)
    check_split_sizes(parts, MIN_SPLIT, data_path, "guides", "guides")
    onehot = encode_onehot(sequences)
    keep = variable_positions(onehot)
    positions = np.nonzero(keep)[0] + 1
    if not len(positions):
        raise InputError(data_path, sequence_column, sequences[0], "every position is the same in all guides")
    constant = np.nonzero(~keep)[0] + 1
    log.info("%d guides of %d nt from %s; %d constant positions dropped (%s), %d kept", n, onehot.shape[2],
             data_path, len(constant), ", ".join(map(str, constant)) or "none", len(positions))
    n_duplicates = n - len(set(sequences))
    counts = split_counts(parts, components, n_duplicates, groups)
    codes = np.array([SPLITS.index(p) for p in parts], dtype=np.int8)
    write_npz(encoded_out, onehot=onehot[:, :, keep], outcome=outcome, positions=positions, split=codes,
              length=np.int64(onehot.shape[2]), count_names=np.array(list(counts)), count_values=np.array(
                  list(counts.values()), dtype=np.int64))
    write_split(np.arange(1, n + 1), parts, split_out)
    log.info("split: %d training, %d validation, %d test rows; %d rows repeat an earlier row's sequence; %d linked "
             "sets (same sequence%s) dealt whole", counts["n_train"], counts["n_validation"], counts["n_test"],
             n_duplicates, counts["n_linked_components"], f" or {group_column}" if group_column else "")


def load_encoded(path):
    """The arrays of ``encoded.npz`` as a dict."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def split_arrays(data):
    """``{split: boolean mask [N]}`` of ``encoded.npz``'s split codes."""
    return {part: data["split"] == k for k, part in enumerate(SPLITS)}
