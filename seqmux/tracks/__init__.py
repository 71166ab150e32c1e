"""The four tracks beside the Multiplexer pipeline, one module each (../shared/design.md, "Tracks").

- ``circuitsnp``: chromatin accessibility from motif presence, with SNP scoring
- ``scrna``: a two-cell-type classifier on AnnData (scanpy)
- ``gc_hmm``: a GRU that learns a GC-content hidden Markov model, against the HMM's own ceilings
- ``sgrna``: a per-position network for sgRNA activity with a base-effect map

A track imports the spine's generic modules (genome, motifs, windows, variants, logs, errors,
outputs, plots), never another track.
"""
