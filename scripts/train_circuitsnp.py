from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp.train import train

inp, out, p = snakemake.input, snakemake.output, snakemake.params
device = snakemake.config["circuitsnp"]["device"]  # execution setting: not a param
t = p.train
run_stage(snakemake.log[0], train, inp.train, inp.validation, out.model, out.logistic, out.history, out.loss_plot,
          list(p.model["hidden"]), t["lr"], t["max_epochs"], t["logistic_c"], p.seed, device=device,
          patience=t["patience"], min_improvement=t["min_improvement"], bias_init=p.model["bias_init"],
          c=list(p.model["c"]), threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
