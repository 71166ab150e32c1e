# numpy only: no threads= (run_stage would import torch to set them)
from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.data import split_data

out, p = snakemake.output, snakemake.params
run_stage(snakemake.log[0], split_data, snakemake.input.data, out.train, out.test, out.hmm, list(p.states),
          p.test_fraction, p.seed)
