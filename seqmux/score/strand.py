"""Both strands: the mean of a window's effects and those of its reverse complement, mapped back
to the forward strand's positions and bases.

In A,G,C,T order the complement of base ``b`` is ``3 - b`` (A<->T, G<->C), so the reverse
complement of tokens ``t [L]`` is ``3 - t[::-1]`` (N stays N), forward offset ``o`` and base ``b``
are read at offset ``L - 1 - o`` and base ``3 - b`` of the reverse complement, and a whole
``[F, 4, L]`` map returns to the forward strand by reversing both its base and position axes.
"""

import numpy as np

from ..encoding import N_TOKEN


def reverse_complement(tokens):
    """Tokens of the reverse complement (``[..., L]``; N stays N)."""
    t = np.asarray(tokens)[..., ::-1]
    return np.where(t == N_TOKEN, N_TOKEN, 3 - t.astype(np.int16)).astype(np.asarray(tokens).dtype)


def to_forward(rc_map):
    """A reverse complement's ``[F, 4, L]`` map on the forward strand's bases and positions."""
    return np.ascontiguousarray(rc_map[..., ::-1, ::-1])


class BothStrands:
    """A scorer (``seqmux.score.engine``) averaged over the forward and reverse-complement windows."""

    def __init__(self, scorer):
        self.scorer = scorer

    def windows(self, items):
        flipped = [(reverse_complement(t), len(t) - 1 - np.asarray(o), 3 - np.asarray(a)) for t, o, a in items]
        both = self.scorer.windows(list(items) + flipped)
        n = len(items)
        return [(both[i] + both[n + i]) / np.float32(2) for i in range(n)]

    def pairs(self, ref_tokens, alt_tokens):
        forward = self.scorer.pairs(ref_tokens, alt_tokens)
        reverse = self.scorer.pairs(reverse_complement(ref_tokens), reverse_complement(alt_tokens))
        return (forward + reverse) / np.float32(2)

    def full_map(self, tokens):
        reverse = to_forward(self.scorer.full_map(reverse_complement(tokens)))
        return (self.scorer.full_map(tokens) + reverse) / np.float32(2)
