from seqmux.logs import run_stage
from seqmux.tracks.gc_hmm.evaluate import evaluate

inp, out, p = snakemake.input, snakemake.output, snakemake.params
sets = {part: inp[part] for part in ("train", "validation", "test")}
run_stage(snakemake.log[0], evaluate, sets, inp.hmm, inp.model, inp.split, out.metrics, out.predictions,
          out.calibration, out.accuracy, snakemake.wildcards.preset, p.seed, random_draws=p.random_draws,
          device=snakemake.config["gc_hmm"]["device"], threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
