from seqmux.encoding import encode_windows
from seqmux.logs import run_stage

run_stage(snakemake.log[0], encode_windows, snakemake.input.fasta, snakemake.input.windows,
          snakemake.output.tokens)
