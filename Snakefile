# seqmux: reference genome + trained sequence model -> training data for a Multiplexer.
# Run:  snakemake --profile profiles/local              (embedded default, no download)
#       snakemake --profile profiles/slurm              (on a SLURM cluster, docs/slurm.md)
#       snakemake --cores 8 --resources gpu=1           (the same as profiles/local, on 8 cores)
#       snakemake --cores 8 --resources gpu=1 --configfile config/hg19_beluga.yaml
#       snakemake sgrna --cores 2                     (one track alone: circuitsnp, scrna, gc_hmm, sgrna)

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/windows.smk"
include: "rules/encode.smk"
include: "rules/variants.smk"
include: "rules/targets.smk"
include: "rules/multiplexer.smk"
include: "rules/circuitsnp.smk"
include: "rules/scrna.smk"
include: "rules/gc_hmm.smk"
include: "rules/sgrna.smk"
include: "rules/score.smk"


rule all:
    default_target: True
    input:
        SPLIT_FILES,
        MULTIPLEXER_FILES,
        [TRACK_FILES[track] for track in config["tracks"]],
        SCORE_FILES if SCORE["vcf"] or SCORE["regions"] else [],
