from seqmux.logs import run_stage
from seqmux.tracks.scrna.evaluate import evaluate_scrna

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], evaluate_scrna, inp.cells, inp.models, out.metrics, out.table, out.top_genes,
          out.top_plot, out.accuracy_plot, out.predictions, c=p.model["c"], top_k=p.top_genes,
          hidden=p.model["hidden"], lr=p.train["lr"], epochs=p.train["max_epochs"], threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
