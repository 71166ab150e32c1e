from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp.evaluate import score_snps

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run_stage(snakemake.log[0], score_snps, inp.vcf, inp.fasta, inp.model, inp.motifs, inp.true_model, out.scores,
          out.skipped, p.length, p.threshold, threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
