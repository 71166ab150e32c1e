# numpy only: no threads= (run_stage would import torch to set them)
from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.data import simulate

out, p = snakemake.output, snakemake.params
sets = {part: out[part] for part in ("train", "validation", "test")}
run_stage(snakemake.log[0], simulate, sets, out.hmm, out.split, snakemake.wildcards.preset, dict(p.spec),
          dict(p.counts), p.length, p.seed,
          nice=snakemake.config["tracks_nice"])
