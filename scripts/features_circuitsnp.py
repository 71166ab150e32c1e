from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp.data import features_from_sequence

inp, out, p = snakemake.input, snakemake.output, snakemake.params
w = p.windows
run_stage(snakemake.log[0], features_from_sequence, inp.fasta, inp.planted or "",
          {"train": out.train, "validation": out.validation, "test": out.test}, out.motifs, out.table,
          out.true_model, out.windows, w["length"], w["max_n"], dict(w["count"]), list(p.validation_chroms),
          list(p.test_chroms), p.seed, p.motifs, p.min_bits, p.threshold, list(p.true_model["weights"]),
          p.true_model["closed_per_open"], threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
