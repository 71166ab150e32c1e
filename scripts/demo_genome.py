from seqmux.genome import build_demo_genome
from seqmux.logs import run_stage

out, p = snakemake.output, snakemake.params
run_stage(snakemake.log[0], build_demo_genome, out.fasta, out.sites, out.motifs, dict(p.chromosomes), p.seed,
          n_motifs=p.motifs, motif_spacing=p.spacing)
