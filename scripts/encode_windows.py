from seqmux.logs import run_stage
from seqmux.windows import encode_windows

run_stage(snakemake.log[0], encode_windows, snakemake.input.fasta, snakemake.input.windows,
          snakemake.output.tokens)
