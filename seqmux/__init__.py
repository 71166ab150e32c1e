"""seqmux: train Multiplexer networks that predict every single-nucleotide substitution effect of a
sequence model in one forward pass.

The package holds all the logic of the Snakemake workflow; it never imports Snakemake.
Modules, one concern each:

- ``errors``    the one exception type for user errors
- ``motifs``    JASPAR position weight matrices (from the pyjaspar wheel, no download)
- ``genome``    FASTA access and the embedded demo genome
- ``windows``   window sampling, N rejection, chromosome splits, regions files
- ``encoding``  tokens and one-hot (A,G,C,T order)
- ``variants``  mutation expansion and variant labels
- ``models``    the Beluga-family base model, the demo model, loading weights and custom classes
- ``ism``       in-silico mutagenesis targets (log-fold change or difference)
- ``splits``    the feather (Arrow IPC) split files: schema, writing, memory-mapped reading
"""

BASES = "AGCT"  # channel order of every base axis in this package (Beluga's order)
__version__ = "0.1.0"
