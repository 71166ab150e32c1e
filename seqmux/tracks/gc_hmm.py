"""GC-HMM track: a GRU that recovers the hidden states of a hidden Markov model, measured against
the best possible answer for that HMM.

An HMM has single-character states (e.g. ``H``, ``L``: high / low GC) and emits the four bases.
Throughout, the symbol axis of every emission matrix and the tokens fed to the networks are in
the package's base order A, G, C, T (``SYMBOLS``; token = index). Sequences are drawn with the
spine's sampler (:mod:`seqmux.hmm`, the demo genome's), or read from a user's TSV (columns ``dna``,
``hidden_state``), whose HMM is then estimated from its training rows by counting.

Ceilings on the test rows, with the true (or estimated) parameters:
- forward filtering ``P(state_t | bases_1..t)``: the best any left-to-right predictor can do;
- posterior decoding ``P(state_t | all bases)`` (forward-backward, hmmlearn): the best per-base
  accuracy of any predictor that sees the whole sequence;
- Viterbi (hmmlearn): the single most likely path.
A unidirectional GRU is compared with the first, a bidirectional one with the second.
"""

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import BASES, checkpoint, seeding
from ..errors import InputError
from ..hmm import sample_hmm
from ..outputs import write_json, write_tsv

log = logging.getLogger(__name__)

SYMBOLS = BASES  # "AGCT": symbol axis of emission matrices, and token values 0..3
TRACK = "gc_hmm"  # the track's name in every seed (seqmux.seeding)
DATA = "data"  # the preset name of a user's TSV (gc_hmm.data)
NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
TOLERANCE = 1e-6  # how far a probability row may sum from 1
COLUMNS = ("dna", "hidden_state")


# --- HMMs ------------------------------------------------------------------------------------------

@dataclass
class Hmm:
    """A categorical HMM: ``states`` (single characters), ``start [S]``, ``transition [S, S]``
    (row = from, column = to, in the order of ``states``), ``emission [S, 4]`` (columns in
    ``SYMBOLS`` order). Probabilities are float64."""
    states: list
    start: np.ndarray
    transition: np.ndarray
    emission: np.ndarray

    def to_config(self):
        """The HMM in the config's form (what a preset says; emission as ``{state: {base: p}}``)."""
        return {"states": list(self.states), "start": self.start.tolist(), "transition": self.transition.tolist(),
                "emission": {s: {b: float(self.emission[i, SYMBOLS.index(b)]) for b in "ACGT"}
                             for i, s in enumerate(self.states)}}


def _probabilities(values, source, field):
    """A float64 vector from a list of numbers; InputError when negative or not summing to 1."""
    try:
        p = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(source, field, values, "not a list of numbers") from None
    if p.ndim != 1 or not np.all(np.isfinite(p)):
        raise InputError(source, field, values, "not a list of numbers")
    if np.any(p < 0):
        raise InputError(source, field, values, "a probability is negative")
    if abs(p.sum() - 1.0) > TOLERANCE:
        raise InputError(source, field, values, f"probabilities sum to {p.sum():.6g}, not 1")
    return p / p.sum()  # within TOLERANCE of 1: renormalised exactly


def parse_hmm(spec, source="config", field="gc_hmm.presets.?"):
    """An :class:`Hmm` from a config mapping ``{states, start, transition, emission}``.

    Raises InputError (``source``, ``field``.<key>) when a key is missing, a state is not one
    character or repeats, a shape does not match the states, a probability is negative, a row does
    not sum to 1, or the emission table names a state not in ``states`` (or lacks one).
    """
    if not isinstance(spec, dict):
        raise InputError(source, field, spec, "an HMM is a mapping with states, start, transition, emission")
    for key in ("states", "start", "transition", "emission"):
        if key not in spec:
            raise InputError(source, f"{field}.{key}", None, "missing")
    extra = sorted(set(spec) - {"states", "start", "transition", "emission"})
    if extra:
        raise InputError(source, f"{field}.{extra[0]}", spec[extra[0]], "unknown key")
    states = [str(s) for s in spec["states"]] if isinstance(spec["states"], list) else None
    if not states or len(states) < 2:
        raise InputError(source, f"{field}.states", spec["states"], "a list of at least two states")
    for s in states:
        if len(s) != 1 or not s.isascii() or not s.isprintable() or s.isspace() or s == ",":
            raise InputError(source, f"{field}.states", spec["states"], f"state {s!r} is not one character")
    if len(set(states)) != len(states):
        raise InputError(source, f"{field}.states", spec["states"], "a state is listed twice")
    n = len(states)
    start = _probabilities(spec["start"], source, f"{field}.start")
    if len(start) != n:
        raise InputError(source, f"{field}.start", spec["start"], f"{len(start)} values for {n} states")
    rows = spec["transition"]
    if not isinstance(rows, list) or len(rows) != n:
        raise InputError(source, f"{field}.transition", rows, f"needs {n} rows (one per state)")
    transition = np.stack([_probabilities(r, source, f"{field}.transition[{states[i]}]") for i, r in enumerate(rows)]
                          ) if all(isinstance(r, list) and len(r) == n for r in rows) else None
    if transition is None:
        raise InputError(source, f"{field}.transition", rows, f"needs {n} rows of {n} values")
    emission_spec = spec["emission"]
    if not isinstance(emission_spec, dict):
        raise InputError(source, f"{field}.emission", emission_spec, "a mapping {state: {A, C, G, T}}")
    for s in emission_spec:
        if str(s) not in states:
            raise InputError(source, f"{field}.emission", str(s), f"state not in states {states}")
    emission = np.zeros((n, len(SYMBOLS)))
    for i, s in enumerate(states):
        row = emission_spec.get(s)
        if not isinstance(row, dict):
            raise InputError(source, f"{field}.emission.{s}", row, "missing (a mapping {A, C, G, T: probability})")
        if set(map(str, row)) != set("ACGT"):
            raise InputError(source, f"{field}.emission.{s}", sorted(map(str, row)), "needs exactly A, C, G, T")
        p = _probabilities([row[b] for b in SYMBOLS], source, f"{field}.emission.{s}")
        emission[i] = p
    return Hmm(states, start, transition, emission)


def built_presets(section):
    """Names of the presets the track builds: ``section['build']``, or (empty) every configured
    preset plus ``data`` when ``section['data']`` names a TSV."""
    if section.get("build"):
        return list(section["build"])
    return list(section["presets"]) + ([DATA] if section.get("data") else [])


def check_config(section):
    """Checks of the gc_hmm section that need no data (run when the workflow starts): every preset
    is a valid HMM with a plain name (``data`` is reserved for the user's TSV), ``build`` names
    existing presets, ``data_states`` are distinct single characters. InputError on the first
    problem (source ``config``, field ``gc_hmm.<key>``)."""
    for name, spec in section["presets"].items():
        if not NAME_RE.match(str(name)):
            raise InputError("config", "gc_hmm.presets", name, "a preset name is letters, digits and _")
        if name == DATA:
            raise InputError("config", "gc_hmm.presets", name, "reserved for the user's TSV (gc_hmm.data)")
        parse_hmm(spec, "config", f"gc_hmm.presets.{name}")
    known = list(section["presets"]) + ([DATA] if section.get("data") else [])
    for name in section.get("build", []):
        if name not in known:
            raise InputError("config", "gc_hmm.build", name, f"not a preset ({', '.join(known)})")
    if not built_presets(section):
        raise InputError("config", "gc_hmm.presets", {}, "no preset to build")
    states = [str(s) for s in section["data_states"]]
    if len(states) < 2 or len(set(states)) != len(states) or any(len(s) != 1 or not s.isascii() or s.isspace()
                                                                 or s == "," for s in states):
        raise InputError("config", "gc_hmm.data_states", section["data_states"],
                         "at least two distinct single-character states")


def preset_rng(seed, preset, stream):
    """The generator of a preset's named stream (``seqmux.seeding``, stream ``<stream>:<preset>``:
    a preset's data do not change when other presets are added)."""
    return seeding.rng(seed, TRACK, f"{stream}:{preset}")


# --- sequences -------------------------------------------------------------------------------------

def encode_rows(frame, states):
    """``(tokens, labels, lengths)`` of a dna / hidden_state table: int64 ``[n, Lmax]`` each
    (padding: token 0, label -100, ignored), lengths ``[n]``. Assumes validated rows."""
    n = len(frame)
    lengths = np.array([len(s) for s in frame["dna"]], dtype=np.int64)
    width = int(lengths.max()) if n else 0
    tokens = np.zeros((n, width), dtype=np.int64)
    labels = np.full((n, width), -100, dtype=np.int64)
    sym = np.full(256, -1, dtype=np.int64)
    for i, b in enumerate(SYMBOLS):
        sym[ord(b)] = sym[ord(b.lower())] = i
    st = np.full(256, -1, dtype=np.int64)
    for i, s in enumerate(states):
        st[ord(s)] = i
    for i, (dna, hidden) in enumerate(zip(frame["dna"], frame["hidden_state"])):
        tokens[i, :lengths[i]] = sym[np.frombuffer(dna.encode("ascii"), dtype=np.uint8)]
        labels[i, :lengths[i]] = st[np.frombuffer(hidden.encode("ascii"), dtype=np.uint8)]
    return tokens, labels, lengths


def decode_states(indices, states):
    """A string of state symbols from state indices ``[L]``."""
    return np.frombuffer("".join(states).encode(), dtype=np.uint8)[np.asarray(indices)].tobytes().decode()


def _to_frame(states_idx, symbols_idx, hmm):
    import pandas as pd

    letters = np.frombuffer(SYMBOLS.encode(), dtype=np.uint8)
    return pd.DataFrame({"dna": [letters[row].tobytes().decode() for row in symbols_idx],
                         "hidden_state": [decode_states(row, hmm.states) for row in states_idx]})


def simulate_sets(hmm, n_train, n_test, length, rng, max_rounds=20):
    """Train and test tables (``dna``, ``hidden_state``; ``n_train`` and ``n_test`` rows of
    ``length`` bp) drawn from ``hmm``, disjoint by construction: every ``dna`` string is kept once
    (a repeat, possible only for short sequences, is redrawn). InputError when the HMM cannot give
    that many distinct sequences in ``max_rounds`` rounds of draws."""
    need = n_train + n_test
    rows, seen = [], set()
    for _ in range(max_rounds):
        states, symbols = sample_hmm(need - len(rows), length, rng, hmm.transition, hmm.emission, hmm.start)
        frame = _to_frame(states, symbols, hmm)
        for dna, hidden in zip(frame["dna"], frame["hidden_state"]):
            if dna not in seen:
                seen.add(dna)
                rows.append((dna, hidden))
        if len(rows) == need:
            break
    else:
        raise InputError("config", "gc_hmm.simulate.length", length,
                         f"too short for {need} distinct sequences (got {len(rows)})")
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.iloc[:n_train].reset_index(drop=True), table.iloc[n_train:].reset_index(drop=True)


def check_disjoint(train, test, source="gc_hmm"):
    """Raise ValueError when a ``dna`` string is in both tables (a bug, never the user's fault:
    both construction paths keep each string on one side)."""
    shared = set(train["dna"]) & set(test["dna"])
    if shared:
        raise InputError(source, "dna", len(shared), "dna strings in both train and test")


def read_table(path, states):
    """A user's TSV (header with ``dna`` and ``hidden_state``; other columns ignored) as a table.

    ``dna``: A, C, G, T (lower case read as upper case); ``hidden_state``: symbols of ``states``,
    as long as ``dna``. InputError naming the file, the row's field and value otherwise.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "gc_hmm.data", str(path), "file not found")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several types for malformed files
        raise InputError(path, "gc_hmm.data", str(path), f"not a readable TSV: {err}".splitlines()[0]) from None
    for col in COLUMNS:
        if col not in frame.columns:
            raise InputError(path, "columns", list(frame.columns), f"no column {col!r}")
    if len(frame) < 2:
        raise InputError(path, "rows", len(frame), "needs at least 2 rows (train and test)")
    frame = frame[list(COLUMNS)].copy()
    frame["dna"] = frame["dna"].str.strip().str.upper()
    frame["hidden_state"] = frame["hidden_state"].str.strip()
    bad_dna = re.compile(r"[^ACGT]")
    allowed = re.compile("[^" + re.escape("".join(states)) + "]")
    for i, (dna, hidden) in enumerate(zip(frame["dna"], frame["hidden_state"])):
        row = i + 2  # line number in the file (header is line 1)
        if not dna:
            raise InputError(path, f"dna (line {row})", dna, "empty sequence")
        m = bad_dna.search(dna)
        if m:
            raise InputError(path, f"dna (line {row})", m.group(0), f"not A, C, G or T (position {m.start() + 1})")
        if len(hidden) != len(dna):
            raise InputError(path, f"hidden_state (line {row})", f"{len(hidden)} symbols",
                             f"dna has {len(dna)} bases")
        m = allowed.search(hidden)
        if m:
            raise InputError(path, f"hidden_state (line {row})", m.group(0),
                             f"not a state of gc_hmm.data_states {list(states)}")
    return frame.reset_index(drop=True)


def split_table(frame, test_fraction, rng):
    """``(train, test)``: the distinct ``dna`` strings are shuffled and the first
    ``round(test_fraction * distinct)`` (at least one, at most all but one) go to test, with every
    row carrying them: a repeated sequence never lands on both sides."""
    unique = np.array(sorted(set(frame["dna"])), dtype=object)
    if len(unique) < 2:
        raise InputError("gc_hmm.data", "dna", len(unique), "needs at least 2 distinct sequences to split")
    order = rng.permutation(len(unique))
    n_test = min(max(1, int(round(test_fraction * len(unique)))), len(unique) - 1)
    test_set = set(unique[order[:n_test]])
    is_test = frame["dna"].isin(test_set).to_numpy()
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def estimate_hmm(frame, states):
    """The supervised maximum-likelihood HMM of labelled rows, by counting: start = first states,
    transition = state pairs at consecutive positions, emission = bases per state (each row
    normalised). A state never seen (no counts in a row) gets a uniform row, with a warning."""
    n = len(states)
    tokens, labels, lengths = encode_rows(frame, states)
    start = np.bincount(labels[:, 0], minlength=n).astype(np.float64)
    valid = labels[:, 1:] >= 0
    pairs = labels[:, :-1][valid] * n + labels[:, 1:][valid]
    transition = np.bincount(pairs, minlength=n * n).reshape(n, n).astype(np.float64)
    mask = labels >= 0
    emission = np.bincount(labels[mask] * len(SYMBOLS) + tokens[mask], minlength=n * len(SYMBOLS)
                           ).reshape(n, len(SYMBOLS)).astype(np.float64)

    def normalise(m, what):
        m = np.atleast_2d(m)
        for i, total in enumerate(m.sum(1)):
            if total == 0:
                log.warning("estimated HMM: no counts for %s row %d: uniform", what, i)
                m[i] = 1.0 / m.shape[1]
            else:
                m[i] /= total
        return m

    return Hmm(list(states), normalise(start, "start")[0], normalise(transition, "transition"),
               normalise(emission, "emission"))


def write_sets(train, test, hmm, train_out, test_out, hmm_out, source):
    """The two tables as TSV (``dna``, ``hidden_state``) and the HMM as JSON (the config's form,
    plus ``symbols`` and where the parameters come from)."""
    check_disjoint(train, test)
    write_tsv(train[list(COLUMNS)], train_out)
    write_tsv(test[list(COLUMNS)], test_out)
    write_json({**hmm.to_config(), "symbols": SYMBOLS, "source": source}, hmm_out)


def read_hmm(path):
    """The :class:`Hmm` of a ``hmm.json`` written by :func:`write_sets`."""
    spec = json.loads(Path(path).read_text())
    return parse_hmm({k: spec[k] for k in ("states", "start", "transition", "emission")}, path, "hmm")


def read_sets(path, hmm):
    """A table written by :func:`write_sets`, read back with the hmm's states."""
    return read_table(path, hmm.states)


def simulate(train_out, test_out, hmm_out, preset, spec, n_train, n_test, length, seed):
    """Stage: draw a preset's train and test sets (seeded from ``seed`` and the preset's name)."""
    hmm = parse_hmm(spec, "config", f"gc_hmm.presets.{preset}")
    rng = preset_rng(seed, preset, "simulate")
    train, test = simulate_sets(hmm, n_train, n_test, length, rng)
    write_sets(train, test, hmm, train_out, test_out, hmm_out, f"config preset {preset}")
    log.info("preset %s: %d train and %d test sequences of %d bp, states %s", preset, len(train), len(test), length,
             "".join(hmm.states))


def split_data(data, train_out, test_out, hmm_out, states, test_fraction, seed):
    """Stage: read a user's TSV, split it by distinct sequence, estimate the HMM from the train rows."""
    states = [str(s) for s in states]
    frame = read_table(data, states)
    rng = preset_rng(seed, DATA, "split")
    train, test = split_table(frame, test_fraction, rng)
    hmm = estimate_hmm(train, states)
    write_sets(train, test, hmm, train_out, test_out, hmm_out, f"estimated by counting from {len(train)} train rows "
               f"of {data}")
    log.info("%s: %d rows -> %d train, %d test; estimated HMM: start %s, transition %s, emission (A,G,C,T) %s",
             data, len(frame), len(train), len(test), np.round(hmm.start, 4).tolist(),
             np.round(hmm.transition, 4).tolist(), np.round(hmm.emission, 4).tolist())


# --- exact inference -------------------------------------------------------------------------------

def forward_filter(tokens, lengths, hmm):
    """Scaled forward algorithm, vectorised across sequences.

    ``tokens [n, Lmax]`` (symbol indices), ``lengths [n]``. Returns ``(filtered [n, Lmax, S],
    loglik [n])``: ``filtered[i, t] = P(state_t | bases_0..t)`` (rows beyond a sequence's length
    are copies of its last row) and the natural-log likelihood of each sequence.
    """
    n, width = tokens.shape
    emit = hmm.emission.T[tokens]  # [n, Lmax, S]  P(base_t | state)
    filtered = np.empty((n, width, len(hmm.states)))
    loglik = np.zeros(n)
    alpha = None
    for t in range(width):
        alpha_new = emit[:, t] * (hmm.start if t == 0 else alpha @ hmm.transition)
        scale = alpha_new.sum(1)
        active = t < lengths
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha_new = alpha_new / scale[:, None]
            loglik += np.where(active, np.log(scale), 0.0)
        alpha = alpha_new if t == 0 else np.where(active[:, None], alpha_new, alpha)
        filtered[:, t] = alpha
    return filtered, loglik


def backward_smooth(tokens, lengths, hmm, filtered):
    """Posterior ``P(state_t | all bases)`` ``[n, Lmax, S]`` from the filtered probabilities
    (scaled backward pass, vectorised across sequences; positions beyond a length: its last row)."""
    n, width = tokens.shape
    emit = hmm.emission.T[tokens]
    beta = np.ones((n, len(hmm.states)))
    post = filtered.copy()
    for t in range(width - 2, -1, -1):
        inside = (t + 1) < lengths  # t + 1 is a real position of the sequence
        b = (emit[:, t + 1] * beta) @ hmm.transition.T
        b = b / b.sum(1, keepdims=True)
        beta = np.where(inside[:, None], b, beta)
        p = filtered[:, t] * beta
        post[:, t] = np.where(inside[:, None], p / p.sum(1, keepdims=True), filtered[:, t])
    return post


def categorical_hmm(hmm):
    """hmmlearn's ``CategoricalHMM`` with the parameters of ``hmm`` (symbols in ``SYMBOLS``
    order), for posterior decoding and Viterbi; nothing is fitted."""
    from hmmlearn.hmm import CategoricalHMM

    model = CategoricalHMM(n_components=len(hmm.states), n_features=len(SYMBOLS), init_params="", params="")
    model.startprob_ = hmm.start.copy()
    model.transmat_ = hmm.transition.copy()
    model.emissionprob_ = hmm.emission.copy()
    return model


def _flat(tokens, lengths):
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return tokens[mask].reshape(-1, 1), mask


def hmmlearn_decode(tokens, lengths, hmm):
    """``(posterior [n, Lmax, S], viterbi [n, Lmax])`` by hmmlearn (padding positions: 0)."""
    model = categorical_hmm(hmm)
    flat, mask = _flat(tokens, lengths)
    with np.errstate(divide="ignore"):
        post_flat = model.predict_proba(flat, lengths)
        _, path = model.decode(flat, lengths, algorithm="viterbi")
    posterior = np.zeros(tokens.shape + (len(hmm.states),))
    posterior[mask] = post_flat
    viterbi = np.zeros(tokens.shape, dtype=np.int64)
    viterbi[mask] = path
    return posterior, viterbi


def hmmlearn_loglik(tokens, lengths, hmm):
    """Total natural-log likelihood of the sequences by hmmlearn's ``score``."""
    flat, _ = _flat(tokens, lengths)
    return float(categorical_hmm(hmm).score(flat, lengths))


# --- the networks ----------------------------------------------------------------------------------

def build_model(n_states, embedding, hidden, layers, bidirectional):
    """The source's network: Embedding(4 bases) -> GRU -> Linear -> LogSoftmax over the states.
    Input tokens ``[batch, L]`` (int64), output log-probabilities ``[batch, L, S]``."""
    import torch
    from torch import nn

    class HmmGru(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(SYMBOLS), embedding)
            self.gru = nn.GRU(embedding, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_states)

        def forward(self, tokens, lengths=None):
            x = self.embed(tokens)
            if lengths is not None and bool((lengths != tokens.shape[1]).any()):  # padded batch: pack
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, _ = self.gru(packed)
                out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
            else:
                out, _ = self.gru(x)
            return torch.log_softmax(self.head(out), dim=-1)

    return HmmGru()


MODELS = {"gru": False, "bigru": True}  # name -> bidirectional


def chunk_rows(tokens, labels, lengths, size):
    """Training rows cut into consecutive pieces of ``size`` positions (the last piece of a row may
    be shorter; ``size`` 0: rows unchanged). Returns ``(tokens, labels, lengths)`` of the pieces,
    ``[m, size]`` each (padding as in :func:`encode_rows`), in row order."""
    if not size or tokens.shape[1] <= size:
        return tokens, labels, lengths
    n, width = tokens.shape
    k = -(-width // size)
    pad = k * size - width
    t = np.pad(tokens, ((0, 0), (0, pad))).reshape(n * k, size)
    y = np.pad(labels, ((0, 0), (0, pad)), constant_values=-100).reshape(n * k, size)
    ln = np.clip(lengths[:, None] - size * np.arange(k)[None, :], 0, size).reshape(-1)
    keep = ln > 0
    return t[keep], y[keep], ln[keep]


def train_model(tokens, labels, lengths, n_states, sizes, bidirectional, seed, device, name):
    """Train one network with Adam on the NLL of the true states (padding ignored), batches drawn
    in a seeded order. ``sizes``: embedding, hidden, layers, lr, epochs, batch_size, schedule
    (``constant``, or ``cosine``: lr annealed to 0 over the run). Returns
    ``(model, per-epoch mean loss [epochs])``."""
    import torch

    from ..runtime import progress

    stream = f"{seed[1]}:{'bigru' if bidirectional else 'gru'}"  # seed = (config seed, preset)
    with seeding.torch_seeded(seed[0], TRACK, f"init:{stream}"):
        model = build_model(n_states, sizes["embedding"], sizes["hidden"], sizes["layers"], bidirectional)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=sizes["lr"])
    n, bs = len(tokens), int(sizes["batch_size"])
    total_steps = sizes["epochs"] * -(-n // bs)
    schedule = sizes.get("schedule", "constant")
    if schedule == "cosine":  # lr from sizes["lr"] down to 0 over the run, one step per batch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    elif schedule == "constant":
        sched = None
    else:
        raise InputError("config", "gc_hmm.model.schedule", schedule, "constant or cosine")
    loss_fn = torch.nn.NLLLoss(ignore_index=-100)
    x, y, lens = (torch.as_tensor(a) for a in (tokens, labels, lengths))
    rng = seeding.rng(seed[0], TRACK, f"batches:{stream}")
    epoch_loss = []
    bar = progress(range(sizes["epochs"]), desc=name)
    for _ in bar:
        order = rng.permutation(n)
        total, count = 0.0, 0
        for i in range(0, n, bs):
            b = torch.as_tensor(order[i:i + bs])
            width = int(lens[b].max())
            out = model(x[b, :width].to(device), lens[b])
            target = y[b, :width].to(device)
            loss = loss_fn(out.reshape(-1, n_states), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            k = int((target >= 0).sum())
            total += float(loss.detach()) * k
            count += k
        epoch_loss.append(total / count)
        bar.set_postfix(loss=f"{epoch_loss[-1]:.4f}")
    return model.cpu().eval(), np.array(epoch_loss)


def nll(prob, labels):
    """Mean negative log-probability (nats) of the true states (labels -100 ignored); ``prob``
    ``[n, L, S]``, floored at 1e-12."""
    mask = labels >= 0
    p = np.take_along_axis(prob, np.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-np.log(np.maximum(p[mask], 1e-12)).mean())


def train(train_tsv, hmm_json, out_models, log_tsv, loss_png, preset, sizes, seed, device="cpu"):
    """Stage: train the left-to-right GRU and the bidirectional GRU of a preset on its train rows.

    ``out_models``: ``{name: path}`` for ``gru`` and ``bigru`` (each a ``torch.save`` dict with the
    state dict, the sizes and the states). Writes the per-epoch loss of both (TSV) and the loss
    curve beside the best achievable losses (the NLL of the filtered and posterior probabilities
    with the HMM's parameters, on the whole training rows; the networks train on pieces of
    ``sizes['chunk']`` bp, whose first bases lack the context before them, so their training loss
    sits a little above these floors).
    """
    import pandas as pd

    from ..runtime import choose_device
    from ..plots import plot_curves

    dev = choose_device(device, "config", "gc_hmm.device")
    hmm = read_hmm(hmm_json)
    tokens, labels, lengths = encode_rows(read_sets(train_tsv, hmm), hmm.states)
    filtered, _ = forward_filter(tokens, lengths, hmm)
    floors = {"gru": nll(filtered, labels), "bigru": nll(backward_smooth(tokens, lengths, hmm, filtered), labels)}
    pieces = chunk_rows(tokens, labels, lengths, int(sizes.get("chunk", 0)))
    log.info("%s: %d train rows, %d bases, trained as %d pieces of up to %d bp", preset, len(tokens), lengths.sum(),
             len(pieces[0]), pieces[0].shape[1])
    curves = {}
    for name, bidirectional in MODELS.items():
        model, losses = train_model(*pieces, len(hmm.states), sizes, bidirectional, (seed, preset), dev,
                                    f"{preset} {name}")
        curves[name] = losses
        log.info("%s %s: final training NLL %.4f (best achievable %.4f)", preset, name, losses[-1], floors[name])
        checkpoint.save(out_models[name], TRACK, model, sizes=dict(sizes), states=list(hmm.states),
                        bidirectional=bool(bidirectional))
    epochs = np.arange(1, sizes["epochs"] + 1)
    write_tsv(pd.DataFrame({"epoch": epochs, **{f"{k}_loss": v for k, v in curves.items()},
                            "filtering_nll": floors["gru"], "posterior_nll": floors["bigru"]}), log_tsv)
    plot_curves(epochs, {"GRU (train)": curves["gru"], "biGRU (train)": curves["bigru"],
                         "filtering (best left-to-right)": np.full(len(epochs), floors["gru"]),
                         "posterior (best whole-sequence)": np.full(len(epochs), floors["bigru"])},
                loss_png, "epoch", "NLL per base (nats)", title=f"GC-HMM {preset}: training loss")


def load_model(path, n_states):
    """A network written by :func:`train`, in eval mode on the CPU (``seqmux.checkpoint``: an
    InputError naming the file when it is not one)."""
    state, meta = checkpoint.load(path, TRACK, field="gc_hmm model")
    s = meta["sizes"]
    model = build_model(n_states, s["embedding"], s["hidden"], s["layers"], meta["bidirectional"])
    return checkpoint.load_into(model, state, path, TRACK, "gc_hmm model")


def predict(model, tokens, lengths, device, batch_size=256):
    """State probabilities ``[n, Lmax, S]`` (float64) of a network."""
    import torch

    model = model.to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            x = torch.as_tensor(tokens[i:i + batch_size]).to(device)
            out.append(model(x, torch.as_tensor(lengths[i:i + batch_size])).exp().double().cpu().numpy())
    return np.concatenate(out)


# --- evaluation ------------------------------------------------------------------------------------

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

    from ..plots import SERIES_COLOURS, save_figure

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


def evaluate(test_tsv, hmm_json, model_paths, metrics_out, predictions_out, calibration_png, accuracy_png, preset,
             seed, random_draws=1000, device="cpu", train_tsv=None):
    """Stage: both networks and the HMM's ceilings on the test rows.

    Writes ``metrics.json`` (keys in the README), the test rows with the networks' states and
    per-base probabilities of every state, the calibration plot and the accuracy bar chart; logs the
    key figures and the source's alignment print of the first test sequence.
    """
    from ..runtime import choose_device
    from ..plots import plot_bars

    dev = choose_device(device, "config", "gc_hmm.device")
    hmm = read_hmm(hmm_json)
    test = read_sets(test_tsv, hmm)
    tokens, labels, lengths = encode_rows(test, hmm.states)
    S = len(hmm.states)
    filtered, loglik = forward_filter(tokens, lengths, hmm)
    posterior, viterbi = hmmlearn_decode(tokens, lengths, hmm)
    probs = {name: predict(load_model(model_paths[name], S), tokens, lengths, dev) for name in MODELS}
    probs.update(filtering=filtered, posterior=posterior)
    preds = {k: v.argmax(-1) for k, v in probs.items()}
    preds["viterbi"] = viterbi
    seq_acc = {k: per_sequence_accuracy(v, labels) for k, v in preds.items()}
    m = {"preset": preset, "states": "".join(hmm.states), "test_sequences": int(len(test)),
         "test_bases": int(lengths.sum())}
    if train_tsv is not None:
        with open(train_tsv) as fh:
            m["train_sequences"] = sum(1 for _ in fh) - 1  # rows below the header
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
    m["random_accuracy"], m["random_match_p"] = random_match(labels, S, gru_hits, random_draws, rng)
    m["random_draws"] = int(random_draws)
    write_json(m, metrics_out)

    table = test[list(COLUMNS)].copy()
    for name in MODELS:
        table[f"{name}_state"] = [decode_states(preds[name][i, :lengths[i]], hmm.states) for i in range(len(test))]
    for name in MODELS:
        for j, s in enumerate(hmm.states):
            table[f"{name}_p_{s}"] = _prob_strings(probs[name][..., j], lengths)
    write_tsv(table, predictions_out)
    plot_calibration(cal, calibration_png, f"GC-HMM {preset}: calibration on {len(test)} test sequences")
    names = ["GRU", "biGRU", "filtering", "posterior", "Viterbi", "random"]
    values = [m["gru_accuracy"], m["bigru_accuracy"], m["filtering_accuracy"], m["posterior_accuracy"],
              m["viterbi_accuracy"], m["random_accuracy"]]
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
             m["random_accuracy"], m["random_match_p"], random_draws)
    return m


def summarize(metrics_paths, out):
    """Stage: one row per preset (its metrics.json) in one TSV, for the report."""
    import pandas as pd

    rows = [json.loads(Path(p).read_text()) for p in metrics_paths]
    keys = ["preset", "states", "gru_accuracy", "filtering_accuracy", "gru_filtering_ratio", "bigru_accuracy",
            "posterior_accuracy", "bigru_posterior_ratio", "viterbi_accuracy", "random_accuracy", "random_match_p",
            "posterior_accuracy_se", "test_sequences", "test_bases"]
    write_tsv(pd.DataFrame([{k: r.get(k) for k in keys} for r in rows]), out)
