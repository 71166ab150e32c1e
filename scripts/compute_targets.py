from seqmux.ism import compute_targets
from seqmux.logs import run_stage

inp, t = snakemake.input, snakemake.params.targets
run_stage(snakemake.log[0], compute_targets, inp.windows, inp.tokens, inp.variants, snakemake.output.targets,
          int(snakemake.wildcards.shard), snakemake.params.n_shards, snakemake.params.base_model,
          mode=t["mode"], dtype=t["dtype"], method=t["method"], batch_size=t["batch_size"], device=t["device"], precision=t["precision"],
          threads=snakemake.threads)
