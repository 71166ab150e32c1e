from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.train import train

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], train, inp.train, inp.validation, inp.hmm, out.model, out.log_tsv, out.loss_plot,
          snakemake.wildcards.preset, dict(p.sizes), p.seed, device=snakemake.config["gc_hmm"]["device"],
          threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
