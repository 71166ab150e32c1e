"""Scoring at genome scale: a VCF or whole regions, tiled into windows, sharded, gathered.

``plan``: read the input once (streaming), check it against the FASTA and assign every allele to a
window (tiling) and a shard: one plan file. ``engine``: the Multiplexer or exact ISM of the base
model on one window, on one strand or both (``strand``). ``shard``: one job's share of the plan,
window by window, to a shard table. ``gather``: the shard tables to the published outputs
(``writers``). The workflow's ``score`` stage and the ``seqmux score`` command run the same
functions; the command is one shard in the foreground.
"""
