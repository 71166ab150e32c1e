# The embedded default: a synthetic genome with planted JASPAR motifs, and a demo base model
# whose first-layer filters are those motifs.


rule demo_genome:
    output:
        fasta="resources/demo/genome.fa",
        fai="resources/demo/genome.fa.fai",
        sites="resources/demo/motif_sites.bed",
        motifs="resources/demo/motifs.json",
    params:
        chromosomes=config["genome"]["demo"]["chromosomes"],
        motifs=config["genome"]["demo"]["motifs"],
        spacing=config["genome"]["demo"]["motif_spacing"],
        seed=config["seed"],
    conda:
        "../envs/seqmux.yaml"
    log:
        log_path("demo_genome"),
    benchmark:
        benchmark_path("demo_genome")
    script:
        "../scripts/demo_genome.py"


rule demo_base_model:
    input:
        fasta="resources/demo/genome.fa",
        motifs="resources/demo/motifs.json",
    output:
        model="resources/demo/base_model.pt",
        names="resources/demo/output_names.txt",
    params:
        length=config["windows"]["length"],
        demo=config["base_model"]["demo"],
        seed=config["seed"],
    conda:
        "../envs/seqmux.yaml"
    log:
        log_path("demo_base_model"),
    benchmark:
        benchmark_path("demo_base_model")
    script:
        "../scripts/demo_base_model.py"
