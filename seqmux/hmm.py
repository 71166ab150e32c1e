"""Sampling from a discrete hidden Markov model: one sampler for the demo genome and the GC-HMM track.

The hidden path is drawn run by run: in state ``s`` the run length is geometric with mean
``1 / (1 - T[s, s])``, then the next state is drawn from the off-diagonal row ``T[s, j != s]``
(renormalised; with two states there is one candidate and no draw). This is the same Markov chain
as drawing every step from ``T``, with one draw per run instead of one per position (long runs,
as in a genome, cost little). Runs are drawn for many sequences at once (vectorised across
sequences); emissions are drawn for every position at once.
"""

import numpy as np


def sample_states(n, length, rng, transition, start=None):
    """Hidden state paths ``[n, length]`` (int64 state indices) of a Markov chain.

    ``transition``: ``[S, S]`` rows summing to 1. ``start``: ``[S]`` probabilities of the first
    state, or None for a uniform first state drawn as one integer per sequence. Every draw comes
    from ``rng``, in a fixed order (first states, then one geometric run length per unfinished
    sequence per run, then the next states where more than one can follow), so the same ``rng``
    state gives the same paths.
    """
    T = np.asarray(transition, dtype=np.float64)
    n_states = T.shape[0]
    if start is None:
        state = rng.integers(n_states, size=n)
    else:
        state = rng.choice(n_states, size=n, p=np.asarray(start, dtype=np.float64))
    stay = np.diag(T)
    leave = T * (1.0 - np.eye(n_states))  # off-diagonal rows, renormalised below
    with np.errstate(invalid="ignore", divide="ignore"):
        leave = np.where(leave.sum(1, keepdims=True) > 0, leave / leave.sum(1, keepdims=True), 0.0)
    successors = (leave > 0).sum(1)  # [S] how many states can follow each state
    cum_leave = np.cumsum(leave, axis=1)
    pos = np.zeros(n, dtype=np.int64)
    run_seq, run_state, run_len = [], [], []  # one entry per run, all sequences
    active = np.arange(n)
    while active.size:  # one iteration per run of the longest path
        s = state[active]
        p_leave = 1.0 - stay[s]
        runs = np.full(active.size, length, dtype=np.int64)  # an absorbing state fills the rest
        finite = p_leave > 0
        if finite.any():
            runs[finite] = rng.geometric(p_leave[finite])
        runs = np.minimum(runs, length - pos[active])
        run_seq.append(active)
        run_state.append(s)
        run_len.append(runs)
        pos[active] += runs
        nxt = s.copy()
        draw = successors[s] > 1
        if draw.any():
            u = rng.random(int(draw.sum()))
            nxt[draw] = np.minimum((u[:, None] > cum_leave[s[draw]]).sum(1), n_states - 1)
        single = successors[s] == 1
        nxt[single] = np.argmax(leave[s[single]], axis=1)
        state[active] = nxt
        active = active[pos[active] < length]
    if not run_seq:
        return np.zeros((n, length), dtype=np.int64)
    seq_idx = np.concatenate(run_seq)
    order = np.argsort(seq_idx, kind="stable")  # runs of sequence 0 first, in drawing order
    states = np.repeat(np.concatenate(run_state)[order], np.concatenate(run_len)[order])
    return states.reshape(n, length)


def sample_emissions(states, rng, emission):
    """Symbol indices (same shape as ``states``, int64) drawn from ``emission [S, K]`` rows: one
    uniform number per position, compared with the row's cumulative probabilities."""
    cum = np.cumsum(np.asarray(emission, dtype=np.float64), axis=1)
    u = rng.random(states.shape)
    idx = (u[..., None] > cum[states]).sum(axis=-1)
    return np.minimum(idx, cum.shape[1] - 1)


def sample_hmm(n, length, rng, transition, emission, start=None):
    """``(states, symbols)``, each ``[n, length]`` int64: ``n`` sequences of an HMM (paths by
    :func:`sample_states`, then emissions by :func:`sample_emissions`)."""
    states = sample_states(n, length, rng, transition, start)
    return states, sample_emissions(states, rng, emission)
