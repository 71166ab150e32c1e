"""The feather (Arrow IPC, uncompressed, memory-mappable) train / validation / test files.

One row per window: ``window_id`` int64, ``chrom`` string, ``start``/``end`` int64 (BED, 0-based
half-open), ``sequence`` string (upper case; non-ACGT as N), ``reference_prediction``
fixed_size_list<float32>[F], ``target`` fixed_size_list<float16|float32>[F*4*L] (row-major
``[F, 4, L]``). Schema metadata: ``n_outputs``, ``length``, ``mode``, ``dtype``, ``output_names``
(JSON list), ``base_model``.
"""

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from .encoding import detokenize
from .ism import target_schema
from .outputs import atomic_path
from .windows import SPLITS

log = logging.getLogger(__name__)


def split_schema(n_outputs, length, dtype, names, mode, base_model):
    """Arrow schema of a split file, metadata included."""
    meta = {
        "n_outputs": str(n_outputs), "length": str(length), "mode": mode, "dtype": dtype,
        "output_names": json.dumps(list(names)), "base_model": base_model,
    }
    targets = target_schema(n_outputs, length, dtype)
    return pa.schema([
        ("window_id", pa.int64()), ("chrom", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
        ("sequence", pa.string()),
        targets.field("reference_prediction"), targets.field("target"),
    ], metadata=meta)


def open_split(path):
    """The split as a memory-mapped Arrow table (no copy of the targets is read)."""
    source = pa.memory_map(str(path), "r")
    return pa.ipc.open_file(source).read_all()


def split_info(table):
    """``dict(n_outputs, length, mode, dtype, output_names, base_model)`` from a split's metadata."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return dict(n_outputs=int(meta["n_outputs"]), length=int(meta["length"]), mode=meta["mode"],
                dtype=meta["dtype"], output_names=json.loads(meta["output_names"]), base_model=meta["base_model"])


def targets_of(table, rows=None):
    """Targets ``[n, F, 4, L]`` float32 of ``rows`` (all rows when None)."""
    info = split_info(table)
    col = table.column("target")
    if rows is not None:
        col = col.take(pa.array(np.asarray(rows, dtype=np.int64)))
    flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(-1, info["n_outputs"], 4, info["length"])


def target_rms(table, max_rows=256):
    """Root mean square of the targets of up to ``max_rows`` rows spread evenly over ``table``
    (identity substitutions, exactly 0, included); 1.0 for an empty or all-zero table."""
    n = table.num_rows
    if n == 0:
        return 1.0
    rows = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64))
    total, count = 0.0, 0
    for r in rows:
        t = targets_of(table, [r]).astype(np.float64)
        total, count = total + float(np.square(t).sum()), count + t.size
    rms = float(np.sqrt(total / count))
    return rms if rms > 0 else 1.0


def assemble_splits(windows, tokens, shard_paths, out_paths, names, mode, dtype, base_model):
    """Route the rows of the target shards to one file per split, adding coordinates and sequence.

    ``windows``: all windows (their ids index ``tokens [N, L]``); ``out_paths``: ``{split: path}``
    for the splits to write (one, some or all of train / validation / test: the rows of the others
    are skipped, so one split can be rebuilt alone). Streams one record batch at a time; every split
    asked for is written (empty ones keep the schema), whole or not at all.
    """
    length = tokens.shape[1]
    schema = split_schema(len(names), length, dtype, names, mode, base_model)
    by_id = {w.window_id: w for w in windows}
    wanted = [s for s in SPLITS if s in out_paths]
    counts = dict.fromkeys(wanted, 0)
    with contextlib.ExitStack() as stack:
        tmp = {s: stack.enter_context(atomic_path(out_paths[s])) for s in wanted}
        sinks = {s: stack.enter_context(pa.OSFile(str(tmp[s]), "wb")) for s in wanted}
        writers = {s: stack.enter_context(pa.ipc.new_file(sinks[s], schema)) for s in wanted}
        for path in shard_paths:
            with pa.memory_map(str(path), "r") as src:
                reader = pa.ipc.open_file(src)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    for row in range(batch.num_rows):
                        w = by_id[batch.column("window_id")[row].as_py()]
                        if w.split not in writers:
                            continue
                        writers[w.split].write_batch(pa.record_batch([
                            pa.array([w.window_id], pa.int64()), pa.array([w.chrom]), pa.array([w.start], pa.int64()),
                            pa.array([w.end], pa.int64()), pa.array([detokenize(tokens[w.window_id])]),
                            batch.column("reference_prediction").slice(row, 1),
                            batch.column("target").slice(row, 1).cast(schema.field("target").type),
                        ], schema=schema))
                        counts[w.split] += 1
        missing = sum(w.split in counts for w in windows) - sum(counts.values())
        if missing:  # raised inside the block: no split file is renamed into place
            raise ValueError(f"{missing} windows have no targets in the shards")
    log.info("split sizes: %s", counts)
    return counts


def write_splits(windows_bed, tokens_npy, shards, outputs, base_model, mode, dtype):
    """Stage: the three split files from the target shards.

    ``outputs``: ``{split: path}``; ``base_model``: dict with ``kind`` and ``names`` (resolved).
    """
    from .models import output_names
    from .windows import read_windows

    windows = read_windows(windows_bed)
    tokens = np.load(tokens_npy, mmap_mode="r")
    with pa.memory_map(str(shards[0]), "r") as src:
        n_outputs = int(pa.ipc.open_file(src).schema.metadata[b"n_outputs"])
    names = output_names(base_model["kind"], base_model.get("names", ""), n_outputs)
    return assemble_splits(windows, tokens, shards, outputs, names, mode, dtype, base_model["kind"])


def check_split(path, field="split"):
    """The memory-mapped table and info of a split file; InputError when it is missing or unreadable."""
    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "split file not found")
    try:
        table = open_split(path)
        info = split_info(table)
    except Exception as err:
        raise InputError(path, field, str(path), f"not a readable split file: {str(err).splitlines()[0]}") from None
    return table, info


class SplitDataset:
    """A map-style torch Dataset over a memory-mapped split table.

    Item ``i``: ``(onehot [4, L] float32, target [F, 4, L] float32)``. Targets stay in the
    memory-mapped file (one zero-copy numpy view per record batch); only the rows asked for are
    converted to float32.
    """

    def __init__(self, table):
        self.table = table
        self.info = split_info(table)
        self.n_outputs, self.length = self.info["n_outputs"], self.info["length"]
        width = self.n_outputs * 4 * self.length
        self._targets, self._sequences, self._where = [], [], []
        chunks = zip(table.column("target").chunks, table.column("sequence").chunks)
        for c, (targets, sequences) in enumerate(chunks):
            self._targets.append(targets.flatten().to_numpy(zero_copy_only=False).reshape(-1, width))
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
        from .encoding import one_hot, tokenize

        return one_hot(tokenize(self.sequence(i)))

    def target(self, i):
        """Target ``[F, 4, L]`` float32 of row ``i``."""
        c, r = self._where[i]
        return self._targets[c][r].astype(np.float32).reshape(self.n_outputs, 4, self.length)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.onehot(i)), torch.from_numpy(self.target(i))
