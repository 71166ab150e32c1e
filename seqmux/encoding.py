"""Tokens and one-hot encoding, A,G,C,T order.

Tokens are uint8: A=0, G=1, C=2, T=3, N (and every other IUPAC code) = 4. Lower-case (soft-masked)
bases count as upper-case. One-hot is float32 ``[..., 4, L]`` with N all zeros.
"""

import numpy as np

N_TOKEN = 4
_TABLE = np.full(256, N_TOKEN, dtype=np.uint8)
for _i, _b in enumerate("AGCT"):
    _TABLE[ord(_b)] = _TABLE[ord(_b.lower())] = _i
_LETTERS = np.frombuffer(b"AGCTN", dtype=np.uint8)
_ONE_HOT = np.concatenate([np.eye(4, dtype=np.float32), np.zeros((1, 4), dtype=np.float32)])


def tokenize(sequence):
    """Tokens ``[L]`` uint8 of a DNA string (any case)."""
    return _TABLE[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]


def detokenize(tokens):
    """Upper-case string of tokens ``[L]``; every non-ACGT token reads as N."""
    return _LETTERS[np.asarray(tokens)].tobytes().decode("ascii")


def one_hot(tokens):
    """One-hot float32 ``[..., 4, L]`` from tokens ``[..., L]`` (N -> all zeros)."""
    return np.swapaxes(_ONE_HOT[np.asarray(tokens)], -1, -2).copy()


def count_n(sequence):
    """Number of non-ACGT characters in a string."""
    return int(np.count_nonzero(tokenize(sequence) == N_TOKEN))


def encode_windows(fasta, windows_bed, out):
    """Stage: tokens ``[N, L]`` uint8 of every window (row = window id) to a ``.npy`` file."""
    import os

    from .genome import open_fasta
    from .windows import read_windows

    genome = open_fasta(fasta)
    windows = read_windows(windows_bed)
    length = windows[0].end - windows[0].start if windows else 0
    tokens = np.full((len(windows), length), N_TOKEN, dtype=np.uint8)
    for w in windows:
        tokens[w.window_id] = tokenize(genome[w.chrom][w.start:w.end])
    tmp = f"{out}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, tokens)
    os.replace(tmp, out)
    return tokens
