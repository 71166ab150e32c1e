from seqmux.logs import run_stage
from seqmux.tracks.sgrna.data import simulate

out, p = snakemake.output, snakemake.params
run_stage(snakemake.log[0], simulate, dict(p.section), p.seed, out.guides, out.true_effects, threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
