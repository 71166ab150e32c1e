from seqmux.logs import run_stage
from seqmux.splits import write_splits

inp, p = snakemake.input, snakemake.params
run_stage(snakemake.log[0], write_splits, inp.windows, inp.tokens, list(inp.shards),
          {snakemake.wildcards.split: snakemake.output.split}, p.base_model, p.mode, p.dtype)
