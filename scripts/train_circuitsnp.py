from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp import train

inp, out, p = snakemake.input, snakemake.output, snakemake.params
device = snakemake.config["circuitsnp"]["device"]  # execution setting: not a param
run_stage(snakemake.log[0], train, inp.train, inp.validation, out.model, out.logistic, out.history, out.loss_plot,
          list(p.hidden), p.train["lr"], p.train["epochs"], p.train["logistic_c"], p.seed, device=device,
          threads=snakemake.threads)
