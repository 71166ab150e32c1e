from seqmux.logs import run_stage
from seqmux.tracks.scrna.train import train_scrna

inp, out, p = snakemake.input, snakemake.output, snakemake.params
device = snakemake.config["scrna"]["device"]  # an execution setting: not a param, so no rerun when it changes
run_stage(snakemake.log[0], train_scrna, inp.cells, out.models, out.curves, out.loss_plot, out.accuracy_plot,
          hidden=p.model["hidden"], lr=p.train["lr"], epochs=p.train["max_epochs"], c=p.model["c"], seed=p.seed,
          device=device, patience=p.train["patience"], min_improvement=p.train["min_improvement"],
          threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
