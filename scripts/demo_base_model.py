from seqmux.logs import run_stage
from seqmux.models import write_demo_model

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], write_demo_model, inp.fasta, inp.motifs, out.model, out.names, p.length,
          p.demo["outputs"], p.seed, p.demo["channels"], p.demo["hidden"], downstream=p.demo["downstream"],
          logit_std=p.demo["logit_std"])
