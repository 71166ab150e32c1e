from seqmux.logs import run_stage
from seqmux.windows import sample_to_bed

w = snakemake.params.windows
run_stage(snakemake.log[0], sample_to_bed, snakemake.input.fasta, snakemake.output.bed, w["length"], w["max_n"],
          w["count"], w["validation_chroms"], w["test_chroms"], snakemake.params.seed, w["chroms"], w["regions"])
