"""The train / validation / test splits: each a directory of feather (Arrow IPC, uncompressed,
memory-mappable) shards, ``results/splits/{split}/{shard}.feather``, written once by the target
jobs and read as one memory-mapped table (``open_split``). Nothing else on disk holds the targets.

One row per window: ``window_id`` int64, ``chrom`` string, ``start``/``end`` int64 (BED, 0-based
half-open), ``sequence`` string (upper case; non-ACGT as N), ``reference_prediction``
fixed_size_list<float32>[F], ``target`` fixed_size_list<float16|float32>[F*3*L] and
``target_n`` list<float16|float32>. Schema metadata: ``n_outputs``, ``length``, ``mode``,
``dtype``, ``output_names`` (JSON list), ``base_model``, ``layout`` (``F3L``).

Only the substitutions are stored, not the identity ones (exactly 0 by definition):
``target`` is row-major ``[F, 3, L]``, slot ``j`` at position ``p`` the ``j``-th base in A,G,C,T
order other than the reference base there (at an N, with no reference base: A, G, C); the fourth
substitution of each N position (to T) is in ``target_n``, row-major ``[F, K]`` over the window's
K N positions in order. ``unpack_target`` restores ``[F, 4, L]`` with exact zeros.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from .encoding import N_TOKEN, detokenize, tokenize

log = logging.getLogger(__name__)

LAYOUT = "F3L"


def split_schema(n_outputs, length, dtype, names, mode, base_model):
    """Arrow schema of a split shard, metadata included."""
    meta = {
        "n_outputs": str(n_outputs), "length": str(length), "mode": mode, "dtype": dtype,
        "output_names": json.dumps(list(names)), "base_model": base_model, "layout": LAYOUT,
    }
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("window_id", pa.int64()), ("chrom", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
        ("sequence", pa.string()),
        ("reference_prediction", pa.list_(pa.float32(), n_outputs)),
        ("target", pa.list_(value, n_outputs * 3 * length)),
        ("target_n", pa.list_(value)),
    ], metadata=meta)


def fixed_list(values, width, dtype):
    """A FixedSizeListArray of rows of ``width`` from a flat numpy array."""
    values = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(values), width)


def _slots(tokens):
    """``[3, L]`` base index of each stored slot of a window with ``tokens [L]`` (N = 4)."""
    j = np.arange(3)[:, None]
    return j + (j >= np.asarray(tokens)[None, :])


def pack_target(target, tokens):
    """``(stored [F, 3, L], fourth [F, K])`` of a target ``[F, 4, L]`` (see the module docstring)."""
    cols = np.arange(target.shape[-1])
    stored = target[:, _slots(tokens), cols]
    n_pos = np.flatnonzero(np.asarray(tokens) == N_TOKEN)
    return stored, target[:, 3, n_pos]


def unpack_target(stored, fourth, tokens, dtype=np.float32):
    """The target ``[F, 4, L]`` (exact zeros at the identity substitutions) from ``stored``
    ``[F, 3 * L]`` or ``[F, 3, L]``, ``fourth`` ``[F * K]`` and the window's ``tokens [L]``."""
    tokens = np.asarray(tokens)
    length = tokens.shape[0]
    stored = np.asarray(stored).reshape(-1, 3, length)
    out = np.zeros((stored.shape[0], 4, length), dtype)
    out[:, _slots(tokens), np.arange(length)] = stored
    n_pos = np.flatnonzero(tokens == N_TOKEN)
    if len(n_pos):
        out[:, 3, n_pos] = np.asarray(fourth).reshape(stored.shape[0], len(n_pos))
    return out


def split_batch(schema, window_id, chrom, start, end, tokens, reference, target):
    """One window as a record batch of ``schema``: ``tokens [L]``, ``reference [F]``, ``target``
    ``[F, 4, L]`` (only its substitutions are stored)."""
    n_out = len(reference)
    value = np.float16 if schema.field("target").type.value_type == pa.float16() else np.float32
    stored, fourth = pack_target(np.asarray(target), tokens)
    return pa.record_batch([
        pa.array([window_id], pa.int64()), pa.array([chrom]), pa.array([start], pa.int64()),
        pa.array([end], pa.int64()), pa.array([detokenize(tokens)]),
        fixed_list(reference, n_out, np.float32),
        fixed_list(stored, stored.size, value),
        pa.array([np.ascontiguousarray(fourth, dtype=value).reshape(-1)], schema.field("target_n").type),
    ], schema=schema)


WINDOW_OVERHEAD = 600   # bytes a window adds beside its numbers (ids, coordinates, Arrow framing)


def disk_bytes(n_windows, n_outputs, length, dtype):
    """Bytes that ``n_windows`` windows of ``length`` bp and ``n_outputs`` outputs take on disk, the
    one copy in the split shards: ``n * (F * 3 * L * b + 4 F + L + 600)``, ``b`` = 2 (float16) or
    4 (float32): the substitutions' targets, the reference predictions (float32), the sequence
    and the per-window framing (an N position adds ``F * b`` for its fourth substitution)."""
    b = 2 if dtype == "float16" else 4
    return int(n_windows) * (n_outputs * 3 * length * b + 4 * n_outputs + length + WINDOW_OVERHEAD)


def disk_summary(n_windows, n_outputs, length, dtype):
    """One line for the start of a run: the disk the ISM targets will take."""
    per_copy = disk_bytes(n_windows, n_outputs, length, dtype)
    return (f"disk for the ISM targets: {n_windows} windows x (F={n_outputs} x 3 x L={length} x "
            f"{2 if dtype == 'float16' else 4} B + ...) = {_human(per_copy)} in results/splits/ (the one copy)")


def _human(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


def split_paths(path):
    """The shard files of a split given as its directory, one file, or a list of files."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    path = Path(path)
    return sorted(path.glob("*.feather")) if path.is_dir() else [path]


def open_split(path):
    """The split (a directory of shards, a shard, or a list of shards) as one memory-mapped Arrow
    table: its shards' record batches in order, no copy of the targets read."""
    paths = split_paths(path)
    if not paths:
        raise FileNotFoundError(f"no split shard in {path}")
    tables = [pa.ipc.open_file(pa.memory_map(str(p), "r")).read_all() for p in paths]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def split_info(table):
    """``dict(n_outputs, length, mode, dtype, output_names, base_model)`` from a split's metadata."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return dict(n_outputs=int(meta["n_outputs"]), length=int(meta["length"]), mode=meta["mode"],
                dtype=meta["dtype"], output_names=json.loads(meta["output_names"]), base_model=meta["base_model"])


def targets_of(table, rows=None):
    """Targets ``[n, F, 4, L]`` float32 of ``rows`` (all rows when None), identity entries 0."""
    info = split_info(table)
    if rows is not None:
        table = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
    ds = SplitDataset(table)
    out = np.zeros((len(ds), info["n_outputs"], 4, info["length"]), np.float32)
    for i in range(len(ds)):
        out[i] = ds.target(i)
    return out


def target_rms(table, max_rows=256):
    """Root mean square of the targets of up to ``max_rows`` rows spread evenly over ``table``
    (identity substitutions, exactly 0, included); 1.0 for an empty or all-zero table."""
    n = table.num_rows
    if n == 0:
        return 1.0
    rows = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64))
    ds = SplitDataset(table)  # zero-copy views of the shards (a ``take`` per row copies a column)
    total, count = 0.0, 0
    for r in rows:
        t = ds.target(int(r)).astype(np.float64)
        total, count = total + float(np.square(t).sum()), count + t.size
    rms = float(np.sqrt(total / count))
    return rms if rms > 0 else 1.0


def check_split(path, field="split"):
    """The memory-mapped table and info of a split (see ``open_split``); InputError when a shard is
    missing or unreadable."""
    from .errors import InputError

    paths = split_paths(path)
    for p in paths:
        if not p.is_file():
            raise InputError(p, field, str(p), "split shard not found")
    if not paths:
        raise InputError(path, field, str(path), "no split shard found")
    try:
        table = open_split(paths)
        info = split_info(table)
    except Exception as err:
        raise InputError(paths[0], field, str(paths[0]),
                         f"not a readable split shard: {str(err).splitlines()[0]}") from None
    return table, info


class SplitDataset:
    """A map-style torch Dataset over a memory-mapped split table.

    Item ``i``: ``(onehot [4, L] float32, target [F, 4, L] float32)``. Targets stay in the
    memory-mapped shards (one zero-copy numpy view per record batch); only the rows asked for are
    read, and restored to ``[F, 4, L]`` (``unpack_target``). Memory does not grow with the
    number of windows beyond one index entry per row.
    """

    def __init__(self, table):
        self.table = table
        self.info = split_info(table)
        self.n_outputs, self.length = self.info["n_outputs"], self.info["length"]
        width = self.n_outputs * 3 * self.length
        self._targets, self._fourth, self._sequences, self._where = [], [], [], []
        chunks = zip(table.column("target").chunks, table.column("target_n").chunks,
                     table.column("sequence").chunks)
        for c, (targets, fourth, sequences) in enumerate(chunks):
            self._targets.append(targets.flatten().to_numpy(zero_copy_only=False).reshape(-1, width))
            self._fourth.append(fourth)
            self._sequences.append(sequences)
            self._where.extend((c, r) for r in range(len(targets)))

    def __len__(self):
        return len(self._where)

    def sequence(self, i):
        """The reference sequence (string) of row ``i``."""
        c, r = self._where[i]
        return self._sequences[c][r].as_py()

    def onehot(self, i):
        """One-hot ``[4, L]`` float32 of row ``i``."""
        from .encoding import one_hot

        return one_hot(tokenize(self.sequence(i)))

    def target(self, i):
        """Target ``[F, 4, L]`` float32 of row ``i`` (identity substitutions exactly 0)."""
        c, r = self._where[i]
        fourth = self._fourth[c][r].values.to_numpy(zero_copy_only=False)
        return unpack_target(self._targets[c][r], fourth, tokenize(self.sequence(i)))

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.onehot(i)), torch.from_numpy(self.target(i))
