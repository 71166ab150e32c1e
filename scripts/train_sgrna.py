from seqmux.logs import run_stage
from seqmux.tracks.sgrna import train

inp, out, t = snakemake.input, snakemake.output, snakemake.params.train
run_stage(snakemake.log[0], train, inp.encoded, out.model, out.curve, out.plot, t["steps"], t["eps"], t["batch_size"],
          t["record_every"], t["target_sd"], snakemake.params.seed, device=snakemake.config["sgrna"]["device"],
          threads=snakemake.threads)
