"""sgRNA track: a per-position network for guide activity, with a base-effect map.

Each guide is a fixed-length context (by default 10 nt upstream + 20 nt guide + 3 nt PAM + 10 nt
downstream = 43 nt). Every kept position ``i`` feeds one ReLU neuron with a weight per base,
``s_i = relu(w_i . x_i)`` (``x_i`` the position's one-hot), and a linear head with an intercept
predicts the outcome, ``y = b + sum_i beta_i s_i``; squared loss; plain SGD with step
``eps / sqrt(t + 1)``, one random guide per step (mini-batches as an option).

Stages (one per rule): ``simulate`` (the default data, from a known effect map), ``encode`` (checks
the user's TSV, one-hot with explicit bases, drops constant positions, a seeded train / validation /
test split that keeps identical sequences and, with ``split.group_column``, each gene on one side),
``train`` (the network, early stopping on the validation MSE), ``evaluate`` (test metrics, base
effects, ridge baseline with its alpha chosen on validation, heatmap).

Conventions: the one-hot tensors follow the package's base order (``seqmux.BASES`` = A, G, C, T:
``[..., 4, P]`` arrays, ``[P, 4]`` weights); the tables and the heatmap written for people have rows
A, C, G, T (the source's layout). Positions are 1-based positions in the input sequence. Every random
draw comes from ``seqmux.seeding`` (track ``"sgrna"``, streams ``simulate``, ``split``, ``train``).
"""

import io
import logging
import math
import os
import zipfile

import numpy as np
import pandas as pd
import torch

from .. import BASES, checkpoint, seeding
from ..encoding import one_hot, tokenize
from ..errors import InputError
from ..outputs import atomic_path, write_json, write_tsv
from ..plots import plot_curves, save_figure
from ..runtime import choose_device, progress
from .stopping import EarlyStopping
from .splitting import SPLITS, check_split_sizes, deal_components, linked_components, split_counts, write_split

log = logging.getLogger(__name__)

TRACK = "sgrna"  # the track's name in every seed (seqmux.seeding)
ROWS = "ACGT"  # row order of the tables and the heatmap
_ROW_INDEX = [BASES.index(b) for b in ROWS]  # package order (A,G,C,T) -> A,C,G,T
MIN_SPLIT = 2  # guides each side of the split needs at least (correlations need two)


# --- config -------------------------------------------------------------------------------------

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


# --- simulation (the default data) ---------------------------------------------------------------

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


# --- reading and encoding the user's data --------------------------------------------------------

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


# --- the network ---------------------------------------------------------------------------------

class PositionNetwork(torch.nn.Module):
    """``y = b + sum_i beta_i relu(sum_b w_ib x_ib)`` over ``P`` positions (the source's model).

    ``weight [P, 4]`` (A,G,C,T), ``beta [P]``, ``intercept []``. Input one-hot ``[B, 4, P]``.
    """

    def __init__(self, n_positions, init=0.5):
        """Every weight and head coefficient starts at ``init``, the intercept at ``-P init^2``, so
        that the first prediction is 0 for every guide and every base's effect starts at 0."""
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((n_positions, 4), float(init)))
        self.beta = torch.nn.Parameter(torch.full((n_positions,), float(init)))
        self.intercept = torch.nn.Parameter(torch.tensor(-n_positions * float(init) ** 2))

    def scores(self, x):
        """Neuron outputs ``s [B, P]``."""
        return torch.relu((x * self.weight.T).sum(1))

    def forward(self, x):
        """Predictions ``[B]``."""
        return self.scores(x) @ self.beta + self.intercept

    def contributions(self):
        """Each neuron's actual contribution for each base, ``beta_i relu(w_ib)``, as ``[4, P]``
        (A,G,C,T) float64, in the units the network was trained on: a base with a negative weight
        contributes nothing (the source's ``beta_i * w_ib`` ignored the ReLU)."""
        with torch.no_grad():
            return (self.beta[:, None] * torch.relu(self.weight)).T.cpu().double().numpy()

    def effects(self, seen=None):
        """Base effects ``[4, P]``: ``contributions`` centred per position (``centre_effects``)."""
        return centre_effects(self.contributions(), seen)


def centre_effects(values, seen=None):
    """``values [4, P]`` minus each position's mean over the bases ``seen [4, P]`` there (all when
    None); NaN for a base never seen at a position (its effect is not identifiable). Only the
    differences within a position are identifiable: the intercept absorbs each position's mean."""
    values = np.asarray(values, dtype=np.float64)
    seen = np.ones(values.shape, dtype=bool) if seen is None else np.asarray(seen, dtype=bool)
    mean = np.where(seen, values, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    return np.where(seen, values - mean, np.nan)


@torch.no_grad()
def sgd_step(model, x, y, lr):
    """One plain SGD step on the mean squared error of the batch ``x [B, 4, P]``, ``y [B]``, with
    the gradients written out (the same as autograd's, tested; 2-3x faster for one guide a step).

    With ``z = w . x``, ``s = relu(z)``, ``r = b + beta . s - y`` and ``g = 2 r / B``:
    ``dL/dbeta = g . s``, ``dL/db = sum g``, ``dL/dw_ib = sum_n g_n beta_i 1(z_ni > 0) x_nbi``.
    Returns the batch's loss before the step (a 0-d tensor)."""
    z = (x * model.weight.T).sum(1)
    active = z > 0
    s = z * active
    r = s @ model.beta + model.intercept - y
    g = r * (2.0 / len(y))
    grad_w = (((g[:, None] * active) * model.beta)[:, None, :] * x).sum(0).T
    model.beta.sub_(g @ s, alpha=lr)
    model.intercept.sub_(g.sum(), alpha=lr)
    model.weight.sub_(grad_w, alpha=lr)
    return (r * r).mean()


@torch.no_grad()
def mse(model, x, y):
    """Mean squared error of the model on all of ``x [N, 4, P]``, ``y [N]`` in one pass (a float)."""
    return float(((model(x) - y) ** 2).mean())


@torch.no_grad()
def mse_position_major(model, xp, y):
    """``mse`` for the one-hot in position-major layout ``xp [P, N, 4]`` (one batched matrix
    product, ~3x faster than ``model(x)``; the training curve's records use it)."""
    z = torch.bmm(xp, model.weight.unsqueeze(2)).squeeze(2)  # [P, N]
    return float(((model.beta @ torch.relu(z) + model.intercept - y) ** 2).mean())


def train_network(x_train, y_train, x_val, y_val, steps, eps, batch_size, record_every, target_sd, seed,
                  device="cpu", patience=0, min_improvement=0.0):
    """Train ``PositionNetwork`` with SGD, step ``eps / sqrt(t + 1)`` at step ``t`` (0-based),
    ``batch_size`` guides a step drawn with replacement (1: the source's one guide a step).

    The network trains on the outcome standardised to standard deviation ``target_sd`` with the
    training mean and SD (its predictions are mapped back); every weight and head coefficient
    starts at ``sqrt(target_sd / sqrt(P))`` (the size a position's share of the outcome's spread
    needs, balanced between the two factors), the intercept so that the first prediction is the
    training mean. Train and validation MSE (outcome units) are recorded at step 0, every
    ``record_every`` steps and at the end, each over all guides in one pass. Early stopping: the
    weights of the record with the lowest validation MSE are kept, and training stops after
    ``patience`` records without an improvement by more than the fraction ``min_improvement`` of
    the best so far (0: runs all ``steps``). A non-finite loss stops training with an InputError
    naming ``sgrna.train.lr``.

    Returns ``(model on the CPU with the best weights, {"mean", "sd", "target_sd"} of the scaling,
    curve rows [(step, train_mse, validation_mse)], facts {"best_step", "steps_done", "converged"})``;
    ``converged``: patience ran out, or the best record is not the last one (False: still improving).
    """
    device = torch.device(device)
    mean, sd = float(np.mean(y_train)), float(np.std(y_train))
    sd = sd if sd > 0 else 1.0
    scale = target_sd / sd
    tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    xtr, xva = tensor(x_train), tensor(x_val)
    ytr, yva = tensor((np.asarray(y_train) - mean) * scale), tensor((np.asarray(y_val) - mean) * scale)
    n_pos = xtr.shape[2]
    model = PositionNetwork(n_pos, init=math.sqrt(target_sd / math.sqrt(n_pos))).to(device)
    draws = torch.randint(len(ytr), (steps, batch_size), generator=seeding.torch_generator(seed, TRACK, "train"))
    draws = draws[:, 0].tolist() if batch_size == 1 else draws.to(device)  # one guide: a slice, no copy
    rates = (eps / np.sqrt(np.arange(steps) + 1.0)).tolist()
    to_outcome = 1.0 / scale ** 2

    ptr, pva = (x.permute(2, 0, 1).contiguous() for x in (xtr, xva))
    stopper = EarlyStopping(patience, min_improvement)

    def record(step):
        val = mse_position_major(model, pva, yva) * to_outcome
        curve.append((step, mse_position_major(model, ptr, ytr) * to_outcome, val))
        return stopper.update(step, val, model)

    curve = []
    record(0)
    for t in progress(range(steps), steps, "train sgrna"):
        idx = slice(draws[t], draws[t] + 1) if batch_size == 1 else draws[t]
        loss = sgd_step(model, xtr[idx], ytr[idx], rates[t])
        if (t + 1) % record_every == 0 or t + 1 == steps:
            if not math.isfinite(float(loss)):
                raise InputError("config", "sgrna.train.lr", eps, f"SGD diverged (non-finite loss by step {t + 1}): "
                                 "use a smaller step (or a smaller sgrna.train.target_sd)")
            if record(t + 1):
                break
    stopper.restore(model)
    return model.cpu(), {"mean": mean, "sd": sd, "target_sd": target_sd}, curve, stopper.facts("step")


def predict(model, scaling, onehot):
    """Predictions ``[N]`` float64 in outcome units for one-hot ``[N, 4, P]``."""
    with torch.no_grad():
        z = model(torch.as_tensor(np.asarray(onehot), dtype=torch.float32)).double().numpy()
    return z * scaling["sd"] / scaling["target_sd"] + scaling["mean"]


def save_model(model, scaling, positions, path, facts=None):
    """``model.pt`` (``seqmux.checkpoint``, kind ``sgrna``): the weights, the outcome scaling, the
    kept positions and the training facts."""
    checkpoint.save(path, TRACK, model, scaling=dict(scaling), positions=[int(p) for p in positions],
                    training=dict(facts or {}))


def load_model(path):
    """``(PositionNetwork, scaling, positions, training facts)`` from ``save_model``'s file; an
    InputError naming the file when it is not one."""
    state, meta = checkpoint.load(path, TRACK, field="sgrna model")
    model = checkpoint.load_into(PositionNetwork(len(meta["positions"])), state, path, TRACK, "sgrna model")
    return model, meta["scaling"], np.array(meta["positions"], dtype=np.int64), meta.get("training", {})


def split_arrays(data):
    """``{split: boolean mask [N]}`` of ``encoded.npz``'s split codes."""
    return {part: data["split"] == k for k, part in enumerate(SPLITS)}


def train(encoded_path, model_out, log_out, curve_plot, steps, eps, batch_size, record_every, target_sd, seed,
          device="cpu", patience=0, min_improvement=0.0):
    """Stage: train the network on the training guides of ``encoded.npz``, early stopping on the
    validation guides; write ``model.pt``, ``training_log.tsv`` (``step``, ``train_loss``,
    ``validation_loss``: MSE in outcome units) and ``loss_curve.png``."""
    dev = choose_device(device, "config", "sgrna.device")
    data = load_encoded(encoded_path)
    masks = split_arrays(data)
    tr, va = masks["train"], masks["validation"]
    x, y = data["onehot"], data["outcome"]
    log.info("training on %d guides x %d positions (validation: %d), at most %d steps of %d guide(s), step %.3g / "
             "sqrt(t + 1), patience %d records, outcome scaled to SD %.3g, on %s", int(tr.sum()), x.shape[2],
             int(va.sum()), steps, batch_size, eps, patience, target_sd, dev)
    model, scaling, curve, facts = train_network(x[tr], y[tr], x[va], y[va], steps, eps, batch_size, record_every,
                                                 target_sd, seed, dev, patience, min_improvement)
    save_model(model, scaling, data["positions"], model_out, facts)
    frame = pd.DataFrame(curve, columns=["step", "train_loss", "validation_loss"])
    write_tsv(frame, log_out)
    baseline = float(np.mean((y[va] - y[tr].mean()) ** 2))
    plot_curves(frame["step"], {"train": frame["train_loss"], "validation": frame["validation_loss"],
                                "validation, training mean": np.full(len(frame), baseline)},
                curve_plot, "SGD step", "mean squared error", title="sgRNA network", logy=True)
    log.info("best validation MSE %.5f at step %d of %d (training mean: %.5f)", min(c[2] for c in curve),
             facts["best_step"], facts["steps_done"], baseline)
    if not facts["converged"]:
        log.warning("not converged: the validation MSE was still falling at the last step (%d); raise "
                    "sgrna.train.steps", facts["steps_done"])


# --- evaluation ----------------------------------------------------------------------------------

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
