from seqmux.logs import run_stage
from seqmux.tracks.sgrna.train import train

inp, out, t = snakemake.input, snakemake.output, snakemake.params.train
run_stage(snakemake.log[0], train, inp.encoded, out.model, out.log, out.plot, t["steps"], t["lr"], t["batch_size"],
          t["record_every"], t["target_sd"], snakemake.params.seed, device=snakemake.config["sgrna"]["device"],
          patience=t["patience"], min_improvement=t["min_improvement"], threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
