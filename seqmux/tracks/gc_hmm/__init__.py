"""GC-HMM track: a GRU that recovers the hidden states of a hidden Markov model, measured against
the best possible answer for that HMM.

An HMM has single-character states (e.g. ``H``, ``L``: high / low GC) and emits the four bases.
Throughout, the symbol axis of every emission matrix and the tokens fed to the networks are in
the package's base order A, G, C, T (``SYMBOLS``; token = index). Sequences are drawn with the
spine's sampler (:mod:`seqmux.hmm`, the demo genome's), or read from a user's TSV (columns ``dna``,
``hidden_state``), whose HMM is then estimated from its training rows by counting.

Ceilings on the test rows, with the true (or estimated) parameters:
- forward filtering ``P(state_t | bases_1..t)``: the best any left-to-right predictor can do;
- posterior decoding ``P(state_t | all bases)`` (forward-backward, hmmlearn): the best per-base
  accuracy of any predictor that sees the whole sequence;
- Viterbi (hmmlearn): the single most likely path.
A unidirectional GRU is compared with the first, a bidirectional one with the second.

Modules: ``data`` (presets, simulation, the user's TSV; numpy only, imported when the workflow
starts), ``inference`` (the ceilings), ``model``, ``train``, ``evaluate``; this one imports nothing.
"""
