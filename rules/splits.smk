# The train / validation / test feather files (the contract with training): one job per split, so
# that one split can be rebuilt alone.


rule assemble_splits:
    input:
        windows=rules.sample_windows.output.bed,
        tokens=rules.encode_windows.output.tokens,
        shards=expand(rules.compute_targets.output.targets, shard=SHARDS),
        model=base_model_files(),
    output:
        split="results/splits/{split}.feather",
    log:
        log_path("assemble_splits", ".{split}"),
    benchmark:
        benchmark_path("assemble_splits", ".{split}")
    conda:
        "../envs/seqmux.yaml"
    params:
        base_model=base_model_spec(),
        mode=config["targets"]["mode"],
        dtype=config["targets"]["dtype"],
    script:
        "../scripts/assemble_splits.py"


SPLIT_FILES = [split_file(split) for split in SPLITS]
