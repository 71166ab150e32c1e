from seqmux.evaluate import evaluate_multiplexer
from seqmux.logs import run_stage

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run = snakemake.config["multiplexer"]["evaluate"]  # execution settings: not params, so no rerun when they change
run_stage(snakemake.log[0], evaluate_multiplexer, inp.model, list(inp.train), list(inp.validation), list(inp.test),
          p.base_model, out.metrics, out.table, out.hexbin, out.histogram, out.heatmap,
          out_strongest=out.strongest, out_distance=out.distance,
          ism_batch_size=snakemake.config["targets"]["batch_size"], seed=p.seed, batch_size=run["batch_size"],
          device=run["device"], threads=snakemake.threads, **p.evaluate)
