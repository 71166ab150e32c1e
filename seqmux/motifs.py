"""JASPAR position weight matrices, read from the databases that the pyjaspar wheel ships.

Matrices here are ``[4, k]`` arrays with rows in A,G,C,T order (JASPAR stores A,C,G,T).
"""

from dataclasses import dataclass

import numpy as np

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
        counts = np.array([m.counts[b] for b in "AGCT"], dtype=np.float64)
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
    return "".join("AGCT"[i] for i in np.minimum(draws, 3))


def write_motifs(motifs, path):
    """Motifs as JSON (id, name, counts in A,G,C,T rows)."""
    import json

    with open(path, "w") as fh:
        json.dump([{"matrix_id": m.matrix_id, "name": m.name, "counts": m.counts.tolist()} for m in motifs],
                  fh, indent=1)


def read_motifs(path):
    """Motifs written by ``write_motifs``."""
    import json

    with open(path) as fh:
        return [Motif(d["matrix_id"], d["name"], np.array(d["counts"], dtype=np.float64)) for d in json.load(fh)]
