"""The four tracks beside the Multiplexer pipeline (docs/tracks.md: the contract they follow).

- ``circuitsnp``: chromatin accessibility from motif presence, with SNP scoring
- ``scrna``: a two-cell-type classifier on AnnData (scanpy)
- ``gc_hmm``: a GRU that learns a GC-content hidden Markov model, against the HMM's own ceilings
- ``sgrna``: a per-position network for sgRNA activity with a base-effect map

Shared by the tracks: ``splitting`` (train / validation / test with linked items whole) and
``stopping`` (early stopping on the validation loss). A track imports the spine's generic modules
(genome, motifs, windows, variants, encoding, checkpoint, seeding, errors, outputs, plots,
runtime), never another track, the command-line tool or the scoring wing.
"""
