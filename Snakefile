# seqmux: reference genome + trained sequence model -> training data for a Multiplexer.
# Run:  snakemake --profile profiles/local              (embedded default, no download)
#       snakemake --profile profiles/slurm              (on a SLURM cluster, see README)
#       snakemake --cores 8 --resources gpu=1           (the same as profiles/local, on 8 cores)
#       snakemake --cores 8 --resources gpu=1 --configfile config/hg19_beluga.yaml

import os

configfile: os.path.join(workflow.basedir, "config/config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/windows.smk"
include: "rules/encode.smk"
include: "rules/variants.smk"
include: "rules/targets.smk"
include: "rules/splits.smk"
include: "rules/multiplexer.smk"


rule all:
    input:
        SPLIT_FILES,
        MULTIPLEXER_FILES,
    default_target: True
