from seqmux.ism import compute_targets
from seqmux.logs import run_stage

inp, p, t, w = snakemake.input, snakemake.params, snakemake.config["targets"], snakemake.wildcards
run_stage(snakemake.log[0], compute_targets, inp.windows, inp.tokens, inp.variants, snakemake.output.targets,
          w.split, int(w.shard), p.n_shards, p.base_model, mode=p.mode, dtype=p.dtype, method=p.method,
          precision=p.precision, batch_size=t["batch_size"], device=t["device"], threads=snakemake.threads)
