# The train / validation / test feather files (the contract with training).


rule assemble_splits:
    input:
        windows="results/windows/windows.bed",
        tokens="results/encoded/tokens.npy",
        shards=expand("results/targets/{shard}.arrow", shard=SHARDS),
        model=base_model_files(),
    output:
        **{split: f"results/splits/{split}.feather" for split in SPLITS},
    params:
        base_model=base_model_spec(),
        targets=config["targets"],
    conda:
        "../envs/seqmux.yaml"
    log:
        log_path("assemble_splits"),
    benchmark:
        benchmark_path("assemble_splits")
    script:
        "../scripts/assemble_splits.py"
