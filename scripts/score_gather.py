from seqmux.logs import run_stage
from seqmux.score.gather import gather

inp, p = snakemake.input, snakemake.params
run_stage(snakemake.log[0], gather, inp.genome, inp.plan, inp.info, list(inp.tables), list(inp.infos),
          "results/score", engine=p.engine, strand=p.strand, model_file=inp.model, mode=p.mode)
