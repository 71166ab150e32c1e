from seqmux.logs import run_stage
from seqmux.variants import expand_shard

run_stage(snakemake.log[0], expand_shard, snakemake.input.windows, snakemake.input.tokens,
          int(snakemake.wildcards.shard), snakemake.params.n_shards, snakemake.output.variants)
