from seqmux.logs import run_stage
from seqmux.tracks.sgrna.data import encode

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], encode, inp.data, out.encoded, out.split, p.sequence_column, p.outcome_column, p.allow_n,
          dict(p.split), p.seed, threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
