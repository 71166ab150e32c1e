# Base-model targets by exact in-silico mutagenesis: one GPU job per shard (CPU when no GPU).
# params: what changes the targets; execution settings (targets.device, targets.batch_size,
# targets.threads) are read by the script from the config, so changing them reruns nothing.


rule compute_targets:
    input:
        windows=rules.sample_windows.output.bed,
        tokens=rules.encode_windows.output.tokens,
        variants=rules.expand_mutations.output.variants,
        model=base_model_files(),
    output:
        targets="results/targets/{shard}.arrow",
    log:
        log_path("compute_targets", ".{shard}"),
    benchmark:
        benchmark_path("compute_targets", ".{shard}")
    conda:
        "../envs/seqmux.yaml"
    threads: config["targets"]["threads"]
    resources:
        gpu=1,
    params:
        n_shards=config["targets"]["shards"],
        base_model=base_model_spec(),
        mode=config["targets"]["mode"],
        dtype=config["targets"]["dtype"],
        method=config["targets"]["method"],
        precision=config["targets"]["precision"],
    script:
        "../scripts/compute_targets.py"
