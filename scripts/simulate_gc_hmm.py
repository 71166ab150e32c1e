# numpy only: no threads= (run_stage would import torch to set them)
from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.data import simulate

out, p = snakemake.output, snakemake.params
run_stage(snakemake.log[0], simulate, out.train, out.test, out.hmm, snakemake.wildcards.preset, dict(p.spec),
          p.n_train, p.n_test, p.length, p.seed)
