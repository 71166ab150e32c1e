"""seqmux: train Multiplexer networks that predict every single-nucleotide substitution effect of a
sequence model in one forward pass.

The package holds all the logic of the Snakemake workflow; it never imports Snakemake.
Modules, one concern each:

- ``errors``    the one exception type for user errors
- ``outputs``   writing a file whole or not at all (temporary name, renamed); JSON and TSV
- ``runtime``   the torch device a job takes (GPU sharing between jobs) and the progress bar
- ``logs``      running a stage: logging to the job's log, threads, one-line errors
- ``motifs``    JASPAR position weight matrices (from the pyjaspar wheel, no download)
- ``genome``    FASTA access and the embedded demo genome
- ``windows``   window sampling, N rejection, chromosome splits, regions files, window tokens
- ``encoding``  tokens and one-hot (A,G,C,T order)
- ``variants``  mutation expansion, variant labels, VCF reading and REF checks
- ``models``    the Beluga-family base model, the demo model, loading weights and custom classes
- ``architectures``  model layouts as users bring them (legacy-style Beluga, Basset-like, BPNet-like)
- ``capture``   a model's forward pass as a torch.fx graph, shapes known (Python control flow on shapes)
- ``ism``, ``fast_ism``  in-silico mutagenesis targets (log-fold change or difference), naive and exact incremental
- ``splits``    the feather (Arrow IPC) split files: schema, writing, memory-mapped reading
- ``multiplexer``, ``train``, ``evaluate``, ``metrics``  the Multiplexer, its training and evaluation
- ``plots``, ``heatmap``  figures (generic curves and bars, effect heatmaps)
- ``predict``, ``cli``  the command-line tool
- ``tracks``    the four smaller systems beside the Multiplexer (one module each)
"""

BASES = "AGCT"  # channel order of every base axis in this package (Beluga's order)
__version__ = "0.1.0"
