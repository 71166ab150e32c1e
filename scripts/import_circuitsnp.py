from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp.data import import_features

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], import_features, {"train": inp.train, "validation": inp.validation, "test": inp.test},
          {"train": out.train, "validation": out.validation, "test": out.test}, out.table, p.feature_columns,
          list(p.label_columns), threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
