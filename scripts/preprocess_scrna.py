from seqmux.logs import run_stage
from seqmux.tracks.scrna.prepare import preprocess_scrna

out, p = snakemake.output, snakemake.params
run_stage(snakemake.log[0], preprocess_scrna, p.h5ad, p.cell_type_key, list(p.classes), p.counts, p.min_counts,
          dict(p.split), p.seed, out.cells, out.split, threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
