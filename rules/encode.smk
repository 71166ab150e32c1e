# One token per base (A,G,C,T = 0..3, N = 4) for every window.


rule encode_windows:
    input:
        fasta=genome_fasta(),
        windows=rules.sample_windows.output.bed,
    output:
        tokens="results/encoded/tokens.npy",
    log:
        log_path("encode_windows"),
    benchmark:
        benchmark_path("encode_windows")
    conda:
        "../envs/seqmux.yaml"
    script:
        "../scripts/encode_windows.py"
