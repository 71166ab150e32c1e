"""GC-HMM track, input: the HMM presets and their checks, simulated sets, a user's TSV (split by
distinct sequence, its HMM estimated by counting). numpy only.
"""

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import BASES, seeding
from ...errors import InputError
from ...hmm import sample_hmm
from ...outputs import write_json, write_tsv

log = logging.getLogger(__name__)

SYMBOLS = BASES  # "AGCT": symbol axis of emission matrices, and token values 0..3

TRACK = "gc_hmm"  # the track's name in every seed (seqmux.seeding)

DATA = "data"  # the preset name of a user's TSV (gc_hmm.data)

NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")

TOLERANCE = 1e-6  # how far a probability row may sum from 1

COLUMNS = ("dna", "hidden_state")


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


def simulate_sets(hmm, counts, length, rng, max_rounds=20):
    """Tables ``{split: frame}`` (``id``, ``dna``, ``hidden_state``; ``counts[split]`` rows of
    ``length`` bp, for the splits of ``counts`` in its order; ids 1-based across them) drawn from
    ``hmm``, disjoint by construction: every ``dna`` string is kept once (a repeat, possible only for
    short sequences, is redrawn). InputError when the HMM cannot give that many distinct sequences in
    ``max_rounds`` rounds of draws."""
    need = sum(counts.values())
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
    table.insert(0, "id", np.arange(1, need + 1))
    sets, start = {}, 0
    for part, k in counts.items():
        sets[part] = table.iloc[start:start + k].reset_index(drop=True)
        start += k
    return sets


def check_disjoint(sets, source="gc_hmm"):
    """InputError when a ``dna`` string is in two of the tables ``{split: frame}`` (a bug, never the
    user's fault: both construction paths keep each string on one side)."""
    seen = {}
    for part, frame in sets.items():
        for dna in set(frame["dna"]):
            if seen.setdefault(dna, part) != part:
                raise InputError(source, "dna", dna[:20], f"a sequence in both {seen[dna]} and {part}")


def read_table(path, states, keep=()):
    """A user's TSV (header with ``dna`` and ``hidden_state``; other columns ignored but ``keep``)
    as a table of the columns ``keep`` then ``dna``, ``hidden_state``.

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
    for col in (*keep, *COLUMNS):
        if col not in frame.columns:
            raise InputError(path, "columns", list(frame.columns), f"no column {col!r}")
    frame = frame[[*keep, *COLUMNS]].copy()
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
    if len(frame) < 3:
        raise InputError(path, "rows", len(frame), "needs at least 3 rows (train, validation and test)")
    return frame.reset_index(drop=True)


def split_table(frame, test_fraction, validation_fraction, rng, source="gc_hmm.data"):
    """``(sets, split)``: the rows dealt to test, validation and train by distinct ``dna`` string
    (:mod:`seqmux.tracks.splitting`: every row carrying a sequence goes with it, so a repeated
    sequence never lands on two sides), ``sets`` as ``{split: frame}`` with ``id`` = the 1-based row
    of the file, ``split`` per row. InputError when a split would be empty."""
    from ..splitting import SPLITS, check_split_sizes, deal_components, linked_components

    split = deal_components(linked_components(list(frame["dna"])), test_fraction, validation_fraction, rng)
    check_split_sizes(split, 1, source, "dna", "sequences")
    frame = frame.assign(id=np.arange(1, len(frame) + 1))[["id", *COLUMNS]]
    return {part: frame[split == part].reset_index(drop=True) for part in SPLITS}, split


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


def write_sets(sets, hmm, outs, hmm_out, split_out, source):
    """The tables ``{split: frame}`` as TSV (``id``, ``dna``, ``hidden_state``) to ``outs[split]``,
    ``split.tsv`` (``id``, ``split`` for every row, in id order) and the HMM as JSON (the config's
    form, plus ``symbols`` and where the parameters come from)."""
    import pandas as pd

    from ..splitting import write_split

    check_disjoint(sets)
    for part, frame in sets.items():
        write_tsv(frame[["id", *COLUMNS]], outs[part])
    every = pd.concat([f[["id"]].assign(split=part) for part, f in sets.items()]).sort_values("id", kind="stable")
    write_split(every["id"], every["split"], split_out)
    write_json({**hmm.to_config(), "symbols": SYMBOLS, "source": source}, hmm_out)


def read_hmm(path):
    """The :class:`Hmm` of a ``hmm.json`` written by :func:`write_sets`."""
    spec = json.loads(Path(path).read_text())
    return parse_hmm({k: spec[k] for k in ("states", "start", "transition", "emission")}, path, "hmm")


def read_sets(path, hmm):
    """A table written by :func:`write_sets` (``id``, ``dna``, ``hidden_state``), read back with the
    hmm's states."""
    frame = read_table(path, hmm.states, keep=("id",))
    return frame.assign(id=frame["id"].astype(np.int64))


def simulate(outs, hmm_out, split_out, preset, spec, counts, length, seed):
    """Stage: draw a preset's train, validation and test sets (``counts``: rows per split; seeded
    from ``seed`` and the preset's name)."""
    hmm = parse_hmm(spec, "config", f"gc_hmm.presets.{preset}")
    rng = preset_rng(seed, preset, "simulate")
    counts = {part: int(counts[part]) for part in ("train", "validation", "test")}
    sets = simulate_sets(hmm, counts, length, rng)
    write_sets(sets, hmm, outs, hmm_out, split_out, f"config preset {preset}")
    log.info("preset %s: %d train, %d validation and %d test sequences of %d bp, states %s", preset,
             counts["train"], counts["validation"], counts["test"], length, "".join(hmm.states))


def split_data(data, outs, hmm_out, split_out, states, test_fraction, validation_fraction, seed):
    """Stage: read a user's TSV, split it by distinct sequence, estimate the HMM from the train rows."""
    states = [str(s) for s in states]
    frame = read_table(data, states)
    rng = preset_rng(seed, DATA, "split")
    sets, _ = split_table(frame, test_fraction, validation_fraction, rng, str(data))
    hmm = estimate_hmm(sets["train"], states)
    write_sets(sets, hmm, outs, hmm_out, split_out, f"estimated by counting from {len(sets['train'])} train rows "
               f"of {data}")
    log.info("%s: %d rows -> %d train, %d validation, %d test; estimated HMM: start %s, transition %s, "
             "emission (A,G,C,T) %s", data, len(frame), len(sets["train"]), len(sets["validation"]),
             len(sets["test"]), np.round(hmm.start, 4).tolist(), np.round(hmm.transition, 4).tolist(),
             np.round(hmm.emission, 4).tolist())
