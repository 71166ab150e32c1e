from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp.evaluate import evaluate

inp, out = snakemake.input, snakemake.output
run_stage(snakemake.log[0], evaluate, inp.model, inp.logistic,
          {"train": inp.train, "validation": inp.validation, "test": inp.test}, inp.true_model or "",
          inp.snp_scores or "", inp.simulated or "", out.metrics, out.predictions, out.roc, out.pr,
          out_split=out.split, threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
