# Base-model targets by exact in-silico mutagenesis, written once, where training reads them: one
# GPU job per shard of each split (CPU when no GPU), each writing that split's shard
# results/splits/{split}/{shard}.feather (docs/multiplexer.md, "The split files"); a split is the directory of its
# shards, and one split can be rebuilt alone.
# params: what changes the targets; execution settings (targets.device, targets.batch_size,
# targets.threads) are read by the script from the config, so changing them reruns nothing.


rule compute_targets:
    input:
        windows=rules.sample_windows.output.bed,
        tokens=rules.encode_windows.output.tokens,
        variants=rules.expand_mutations.output.variants,
        model=base_model_files(),
    output:
        targets="results/splits/{split}/{shard}.feather",
    log:
        log_path("compute_targets", ".{split}.{shard}"),
    benchmark:
        benchmark_path("compute_targets", ".{split}.{shard}")
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


SPLIT_FILES = [f for split in SPLITS for f in split_files(split)]
