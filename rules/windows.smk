# Sample windows of every split (or centre them on a regions file).


rule sample_windows:
    input:
        fasta=genome_fasta(),
        regions=config["windows"]["regions"] or [],
    output:
        bed="results/windows/windows.bed",
    log:
        log_path("sample_windows"),
    benchmark:
        benchmark_path("sample_windows")
    conda:
        "../envs/seqmux.yaml"
    params:
        windows=config["windows"],
        seed=config["seed"],
    script:
        "../scripts/sample_windows.py"
