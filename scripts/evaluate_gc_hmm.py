from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.evaluate import evaluate

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], evaluate, inp.test, inp.hmm, {"gru": inp.gru, "bigru": inp.bigru}, out.metrics,
          out.predictions, out.calibration, out.accuracy, snakemake.wildcards.preset, p.seed,
          random_draws=p.random_draws, device=snakemake.config["gc_hmm"]["device"], train_tsv=inp.train,
          threads=snakemake.threads)
