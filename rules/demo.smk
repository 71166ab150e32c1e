# The embedded default: a synthetic genome with planted JASPAR motifs, and a demo base model
# whose first-layer filters are those motifs.


rule demo_genome:
    output:
        fasta="resources/demo/genome.fa",
        fai="resources/demo/genome.fa.fai",
        sites="resources/demo/motif_sites.bed",
        motifs="resources/demo/motifs.json",
    log:
        log_path("demo_genome"),
    benchmark:
        benchmark_path("demo_genome")
    conda:
        "../envs/seqmux.yaml"
    params:
        chromosomes=config["genome"]["demo"]["chromosomes"],
        motifs=config["genome"]["demo"]["motifs"],
        spacing=config["genome"]["demo"]["motif_spacing"],
        seed=config["seed"],
    script:
        "../scripts/demo_genome.py"


rule demo_base_model:
    input:
        fasta=rules.demo_genome.output.fasta,
        motifs=rules.demo_genome.output.motifs,
    output:
        model="resources/demo/base_model.pt",
        names="resources/demo/output_names.txt",
    log:
        log_path("demo_base_model"),
    benchmark:
        benchmark_path("demo_base_model")
    conda:
        "../envs/seqmux.yaml"
    params:
        length=config["windows"]["length"],
        demo=config["base_model"]["demo"],
        seed=config["seed"],
    script:
        "../scripts/demo_base_model.py"
