# Every single-nucleotide substitution of every window, as a table (one file per shard).


rule expand_mutations:
    input:
        windows=rules.sample_windows.output.bed,
        tokens=rules.encode_windows.output.tokens,
    output:
        variants="results/variants/{shard}.feather",
    log:
        log_path("expand_mutations", ".{shard}"),
    benchmark:
        benchmark_path("expand_mutations", ".{shard}")
    conda:
        "../envs/seqmux.yaml"
    params:
        n_shards=config["targets"]["shards"],
    script:
        "../scripts/expand_mutations.py"
