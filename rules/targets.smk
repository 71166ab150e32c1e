# Base-model targets by exact in-silico mutagenesis: one GPU job per shard (CPU when no GPU).


rule compute_targets:
    input:
        windows="results/windows/windows.bed",
        tokens="results/encoded/tokens.npy",
        variants="results/variants/{shard}.feather",
        model=base_model_files(),
    output:
        targets="results/targets/{shard}.arrow",
    params:
        n_shards=config["targets"]["shards"],
        base_model=base_model_spec(),
        targets=config["targets"],
    threads: config["targets"]["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/seqmux.yaml"
    log:
        log_path("compute_targets", ".{shard}"),
    benchmark:
        benchmark_path("compute_targets", ".{shard}")
    script:
        "../scripts/compute_targets.py"
