# numpy only: no threads= (run_stage would import torch to set them)
from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.data import split_data

out, p = snakemake.output, snakemake.params
sets = {part: out[part] for part in ("train", "validation", "test")}
run_stage(snakemake.log[0], split_data, snakemake.input.data, sets, out.hmm, out.split, list(p.states),
          p.test_fraction, p.validation_fraction, p.seed,
          nice=snakemake.config["tracks_nice"])
