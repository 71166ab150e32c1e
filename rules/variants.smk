# Every single-nucleotide substitution of every window, as a table (one file per shard).


rule expand_mutations:
    input:
        windows="results/windows/windows.bed",
        tokens="results/encoded/tokens.npy",
    output:
        variants="results/variants/{shard}.feather",
    params:
        n_shards=config["targets"]["shards"],
    conda:
        "../envs/seqmux.yaml"
    log:
        log_path("expand_mutations", ".{shard}"),
    benchmark:
        benchmark_path("expand_mutations", ".{shard}")
    script:
        "../scripts/expand_mutations.py"
