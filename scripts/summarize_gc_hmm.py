# numpy only: no threads= (run_stage would import torch to set them)
from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.evaluate import summarize

run_stage(snakemake.log[0], summarize, list(snakemake.input.metrics), snakemake.output.table,
          nice=snakemake.config["tracks_nice"])
