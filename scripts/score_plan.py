from seqmux.logs import run_stage
from seqmux.score.plan import make_plan

p, out = snakemake.params, snakemake.output
run_stage(snakemake.log[0], make_plan, snakemake.input.genome, out.plan, out.info, vcf=p.vcf, regions=p.regions,
          length=p.length, stride=p.stride, engine=p.engine, n_shards=p.shards, seed=p.seed,
          max_ref_mismatch=p.max_ref_mismatch, accuracy_windows=p.accuracy_windows)
