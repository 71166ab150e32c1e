from seqmux.logs import run_stage
from seqmux.tracks.circuitsnp.evaluate import simulate_vcf

inp, out, p = snakemake.input, snakemake.output, snakemake.params
s = p.simulate
run_stage(snakemake.log[0], simulate_vcf, inp.fasta, inp.sites, inp.motifs, inp.true_model, out.vcf, out.table,
          p.length, list(p.test_chroms), p.threshold, s["destroying"], s["background"], s["min_distance"], p.seed,
          threads=snakemake.threads,
          nice=snakemake.config["tracks_nice"])
