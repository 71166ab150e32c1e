# One token per base (A,G,C,T = 0..3, N = 4) for every window.


rule encode_windows:
    input:
        fasta=genome_fasta(),
        windows="results/windows/windows.bed",
    output:
        tokens="results/encoded/tokens.npy",
    conda:
        "../envs/seqmux.yaml"
    log:
        log_path("encode_windows"),
    benchmark:
        benchmark_path("encode_windows")
    script:
        "../scripts/encode_windows.py"
