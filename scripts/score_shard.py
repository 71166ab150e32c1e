from seqmux.logs import run_stage
from seqmux.score.shard import run_shard

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run = snakemake.config["score"]  # execution settings: not params, so no rerun when they change
run_stage(snakemake.log[0], run_shard, inp.genome, inp.plan, inp.info, out.table, out.info,
          int(snakemake.wildcards.shard), engine=p.engine, strand=p.strand, base_model=p.base_model,
          model_path=inp.model[0] if inp.model else "", mode=p.mode, summary_features=p.summary_features,
          device=run["device"], batch_size=run["batch_size"], window_batch=run["window_batch"],
          threads=snakemake.threads)
