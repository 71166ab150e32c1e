from seqmux.evaluate import evaluate_multiplexer
from seqmux.logs import run_stage

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], evaluate_multiplexer, inp.model, inp.train, inp.validation, inp.test, p.base_model,
          out.metrics, out.table, out.hexbin, out.histogram, out.heatmap, ism_batch_size=p.ism_batch_size, seed=p.seed,
          threads=snakemake.threads, **{k: v for k, v in p.evaluate.items() if k != "threads"})
