"""Tokens and one-hot encoding, A,G,C,T order.

Tokens are uint8: A=0, G=1, C=2, T=3, N (and every other IUPAC code) = 4. Lower-case (soft-masked)
bases count as upper-case. One-hot is float32 ``[..., 4, L]`` with N all zeros.
"""

import numpy as np

from . import BASES

N_TOKEN = 4
_TABLE = np.full(256, N_TOKEN, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _TABLE[ord(_b)] = _TABLE[ord(_b.lower())] = _i
_LETTERS = np.frombuffer((BASES + "N").encode(), dtype=np.uint8)
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
