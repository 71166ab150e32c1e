"""GC-HMM track, the ceilings: exact forward filtering and backward smoothing, and hmmlearn's
posterior and Viterbi decoding with the same parameters.
"""

import numpy as np

from .data import SYMBOLS


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
