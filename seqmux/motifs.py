"""JASPAR position weight matrices, read from the databases that the pyjaspar wheel ships.

Matrices here are ``[4, k]`` arrays with rows in A,G,C,T order (JASPAR stores A,C,G,T).
"""

from dataclasses import dataclass

import numpy as np

from . import BASES
from .outputs import atomic_path

JASPAR_RELEASE = "JASPAR2024"


@dataclass(frozen=True)
class Motif:
    matrix_id: str
    name: str
    counts: np.ndarray  # [4, k] float64, rows A,G,C,T

    @property
    def length(self):
        return self.counts.shape[1]


def probabilities(counts, pseudocount=0.8):
    """Column probabilities ``[4, k]`` from counts ``[4, k]``, with a pseudocount spread evenly.

    pyjaspar's own PSSMs contain -inf for zero counts; the pseudocount keeps every log finite.
    """
    counts = np.asarray(counts, dtype=np.float64) + pseudocount / 4.0
    return counts / counts.sum(axis=0, keepdims=True)


def log_odds(counts, background=0.25, pseudocount=0.8):
    """Log2-odds scores ``[4, k]`` of a count matrix against a uniform background."""
    return np.log2(probabilities(counts, pseudocount) / background)


def information_content(counts):
    """Bits per column ``[k]`` of a count matrix (uniform background)."""
    p = probabilities(counts)
    return 2.0 + (p * np.log2(p)).sum(axis=0)


def crop_or_pad(matrix, width):
    """The ``width`` most informative consecutive columns of a ``[4, k]`` log-odds matrix, or the
    matrix centred in zero columns when ``k < width``."""
    k = matrix.shape[1]
    if k >= width:
        info = np.abs(matrix).sum(axis=0)
        sums = np.convolve(info, np.ones(width), mode="valid")
        start = int(np.argmax(sums))
        return matrix[:, start:start + width]
    out = np.zeros((4, width), dtype=matrix.dtype)
    left = (width - k) // 2
    out[:, left:left + k] = matrix
    return out


def reverse_complement(matrix):
    """Reverse complement of a ``[4, k]`` matrix in A,G,C,T row order (A<->T, G<->C)."""
    return matrix[::-1, ::-1].copy()


def load_jaspar_motifs(min_length=6, max_length=12, release=JASPAR_RELEASE):
    """All CORE vertebrate motifs (latest versions) with ``min_length <= k <= max_length``,
    sorted by matrix id."""
    from pyjaspar import jaspardb

    db = jaspardb(release=release)
    motifs = []
    for m in db.fetch_motifs(collection="CORE", tax_group=["vertebrates"], all_versions=False):
        if not min_length <= m.length <= max_length:
            continue
        counts = np.array([m.counts[b] for b in BASES], dtype=np.float64)
        motifs.append(Motif(m.matrix_id, m.name, counts))
    motifs.sort(key=lambda m: m.matrix_id)
    return motifs


def choose_motifs(count, rng, min_bits=9.0, **kwargs):
    """``count`` distinct informative JASPAR motifs (total information >= ``min_bits``), drawn
    with ``rng``; returned in matrix-id order."""
    pool = [m for m in load_jaspar_motifs(**kwargs) if information_content(m.counts).sum() >= min_bits]
    if count > len(pool):
        raise ValueError(f"only {len(pool)} JASPAR motifs qualify, {count} requested")
    picks = sorted(rng.choice(len(pool), size=count, replace=False))
    return [pool[i] for i in picks]


def sample_site(motif, rng):
    """One motif instance drawn from the column probabilities: a string over A,G,C,T."""
    p = probabilities(motif.counts)
    cum = np.cumsum(p, axis=0)
    draws = (rng.random(motif.length)[None, :] > cum).sum(axis=0)
    return "".join(BASES[i] for i in np.minimum(draws, 3))


def write_motifs(motifs, path):
    """Motifs as JSON (id, name, counts in A,G,C,T rows)."""
    import json

    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump([{"matrix_id": m.matrix_id, "name": m.name, "counts": m.counts.tolist()} for m in motifs],
                  fh, indent=1)


def read_motifs(path):
    """Motifs written by ``write_motifs``."""
    import json

    with open(path) as fh:
        return [Motif(d["matrix_id"], d["name"], np.array(d["counts"], dtype=np.float64)) for d in json.load(fh)]


# --- scanning: best score of each motif on either strand of each sequence ---------------------

SCORE_SCALE = 1000  # scanning scores are integer milli-bits: exact sums in any order (see scan_best)


def informative_motifs(min_bits=9.0, exclude=(), **kwargs):
    """JASPAR CORE vertebrate motifs (``load_jaspar_motifs(**kwargs)``) with at least ``min_bits``
    of total information, minus the matrix ids in ``exclude``; in matrix-id order."""
    skip = set(exclude)
    return [m for m in load_jaspar_motifs(**kwargs)
            if m.matrix_id not in skip and information_content(m.counts).sum() >= min_bits]


def quantized_log_odds(counts, pseudocount=0.8):
    """``log_odds(counts)`` ``[4, k]`` in integer milli-bits (float64 holding whole numbers)."""
    return np.round(log_odds(counts, pseudocount=pseudocount) * SCORE_SCALE)


def max_score(matrix):
    """Highest score a ``[4, k]`` score matrix can give one sequence: the sum of column maxima."""
    return float(np.asarray(matrix).max(axis=0).sum())


def motif_filters(motifs):
    """Scanning filters of ``motifs``: ``(weights [2M, 4, K] float32, lengths [M] int)``.

    Rows ``2i`` / ``2i+1`` are motif ``i`` (quantized log-odds) and its reverse complement, each
    padded with zero columns on the right to the longest motif's width ``K``.
    """
    width = max(m.length for m in motifs)
    weights = np.zeros((2 * len(motifs), 4, width), dtype=np.float32)
    for i, m in enumerate(motifs):
        q = quantized_log_odds(m.counts)
        weights[2 * i, :, :m.length] = q
        weights[2 * i + 1, :, :m.length] = reverse_complement(q)
    return weights, np.array([m.length for m in motifs], dtype=np.int64)


def scan_best(onehot, weights, lengths, batch_size=256):
    """Best score of each motif on either strand of each sequence: ``[N, M]`` float32 milli-bits.

    ``onehot``: ``[N, 4, L]`` (A,G,C,T; N is all zeros and scores 0 in every column);
    ``weights``/``lengths`` from ``motif_filters``. Only placements that lie wholly inside the
    sequence count (a motif longer than L scores -inf). The weights are whole numbers and the
    one-hot 0/1, so every sum is an integer below 2^24 and exact in float32 whatever order the
    convolution adds in: a sequence gets the same scores in any batch, on any thread count.
    """
    import torch

    onehot = np.asarray(onehot, dtype=np.float32)
    n, _, length = onehot.shape
    n_motifs = len(lengths)
    width = weights.shape[2]
    w = torch.from_numpy(np.ascontiguousarray(weights))
    # placement p of motif m is valid when p + k_m <= L; filters rows 2m and 2m+1 share k_m
    valid = torch.arange(length)[None, :] <= (length - torch.from_numpy(np.repeat(lengths, 2)))[:, None]
    out = np.empty((n, n_motifs), dtype=np.float32)
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            x = torch.from_numpy(onehot[lo:lo + batch_size])
            x = torch.nn.functional.pad(x, (0, width - 1))
            s = torch.nn.functional.conv1d(x, w)  # [b, 2M, L]
            s = s.masked_fill(~valid[None], float("-inf")).amax(dim=2)
            out[lo:lo + batch_size] = s.view(-1, n_motifs, 2).amax(dim=2).numpy()
    return out


def motif_presence(onehot, motifs, threshold, batch_size=256):
    """Binary presence ``[N, M]`` uint8: motif ``m``'s best score on either strand of sequence ``n``
    reaches ``threshold`` x its maximum score (``threshold`` in (0, 1])."""
    weights, lengths = motif_filters(motifs)
    best = scan_best(onehot, weights, lengths, batch_size)
    cutoff = np.array([threshold * max_score(weights[2 * i]) for i in range(len(motifs))], dtype=np.float64)
    return (best.astype(np.float64) >= cutoff[None, :]).astype(np.uint8)
