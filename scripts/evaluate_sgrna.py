from seqmux.logs import run_stage
from seqmux.tracks.sgrna.evaluate import evaluate

inp, out = snakemake.input, snakemake.output
run_stage(snakemake.log[0], evaluate, inp.encoded, inp.model, out.metrics, out.effects, out.ridge_effects,
          out.predictions, out.heatmap, dict(snakemake.params.section), truth_path=inp.truth or None,
          threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
