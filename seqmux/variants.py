"""Mutation expansion: every single-nucleotide substitution of a window, as a table.

A substitution of window ``w`` is (offset, alt): ``offset`` is 0-based within the window, ``alt``
a base index in A,G,C,T order. Identity substitutions are not listed; at an N every base is a
substitution. Labels are 1-based, VCF style: ``chr11:1000000 C>A``.
"""

import numpy as np
import pyarrow as pa

from .encoding import N_TOKEN

_LETTERS = np.array(list("AGCTN"))


def substitutions(tokens):
    """``(offsets [M], alts [M])`` int32 of all substitutions of one window's tokens ``[L]``,
    position-major (offset ascending, then alt in A,G,C,T order)."""
    tokens = np.asarray(tokens)
    grid = np.broadcast_to(np.arange(4, dtype=np.int32), (tokens.shape[0], 4))
    keep = grid != tokens[:, None]  # at an N (token N_TOKEN) all four bases are substitutions
    offsets = np.nonzero(keep)[0].astype(np.int32)
    return offsets, grid[keep].astype(np.int32)


def variant_labels(chrom, start, offsets, ref_tokens, alts):
    """``chrom:pos REF>ALT`` labels, ``pos`` 1-based (window BED ``start`` is 0-based)."""
    pos = (start + 1 + np.asarray(offsets)).astype(str)
    return np.char.add(np.char.add(np.char.add(np.char.add(f"{chrom}:", pos), " "),
                                   np.char.add(_LETTERS[ref_tokens], ">")), _LETTERS[alts])


VARIANT_SCHEMA = pa.schema([
    ("window_id", pa.int64()),
    ("offset", pa.int32()),
    ("position", pa.int64()),
    ("ref", pa.string()),
    ("alt", pa.string()),
    ("alt_index", pa.int8()),
    ("label", pa.string()),
])


def window_variant_table(window_id, chrom, start, tokens):
    """Arrow record batch of every substitution of one window (``VARIANT_SCHEMA``)."""
    offsets, alts = substitutions(tokens)
    ref = tokens[offsets]
    return pa.record_batch([
        pa.array(np.full(len(offsets), window_id, dtype=np.int64)),
        pa.array(offsets),
        pa.array(start + 1 + offsets.astype(np.int64)),
        pa.array(_LETTERS[ref]),
        pa.array(_LETTERS[alts]),
        pa.array(alts.astype(np.int8)),
        pa.array(variant_labels(chrom, start, offsets, ref, alts)),
    ], schema=VARIANT_SCHEMA)


def expand_shard(windows_bed, tokens_npy, shard, n_shards, out):
    """Stage: the substitution table of one shard's windows, as a feather file."""
    import os

    from .windows import read_windows, shard_windows

    windows = shard_windows(read_windows(windows_bed), shard, n_shards)
    tokens = np.load(tokens_npy, mmap_mode="r")
    tmp = f"{out}.tmp"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, VARIANT_SCHEMA) as writer:
        for w in windows:
            writer.write_batch(window_variant_table(w.window_id, w.chrom, w.start, np.asarray(tokens[w.window_id])))
    os.replace(tmp, out)
