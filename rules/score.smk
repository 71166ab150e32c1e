# Scoring a VCF and/or every SNV of regions (docs/scoring.md): one plan job reads the input once and
# assigns every allele to a window and a shard; one GPU job per shard scores its share; one gather
# job writes results/score/. Execution settings (score.device, batch_size, window_batch, threads)
# are read by the scripts from the config, so changing them reruns nothing.

SCORE = config["score"]
SCORE_SHARDS = [f"{i:04d}" for i in range(SCORE["shards"])]
require_file("score.vcf", SCORE["vcf"])
require_file("score.regions", SCORE["regions"])
require_file("score.model", SCORE["model"])
SCORE_MODEL = SCORE["model"] or "results/multiplexer/model.pt"
SCORE_FILES = ["results/score/summary.json"]
if SCORE["vcf"]:
    SCORE_FILES += [
        "results/score/variants.parquet",
        "results/score/variants.vcf.gz",
        "results/score/variants.vcf.gz.tbi",
        "results/score/skipped.tsv",
    ]
if SCORE["regions"]:
    from seqmux.score.plan import map_names

    SCORE_FILES += expand("results/score/maps/{name}.parquet", name=map_names(SCORE["regions"]))
    SCORE_FILES += ["results/score/maps/max_abs_effect.bw"]


rule score_plan:
    input:
        genome=genome_fasta(),
        inputs=[p for p in (SCORE["vcf"], SCORE["regions"]) if p],
    output:
        plan="results/score/plan/plan.parquet",
        info="results/score/plan/plan.json",
    log:
        log_path("score_plan"),
    conda:
        "../envs/seqmux.yaml"
    params:
        vcf=SCORE["vcf"],
        regions=SCORE["regions"],
        length=config["windows"]["length"],
        stride=SCORE["stride"],
        engine=SCORE["engine"],
        shards=SCORE["shards"],
        seed=config["seed"],
        max_ref_mismatch=SCORE["max_ref_mismatch"],
        accuracy_windows=SCORE["accuracy_windows"],
    script:
        "../scripts/score_plan.py"


rule score_shard:
    input:
        genome=genome_fasta(),
        plan=rules.score_plan.output.plan,
        info=rules.score_plan.output.info,
        model=[SCORE_MODEL] if SCORE["engine"] == "multiplexer" else [],
        base_model=base_model_files(),
    output:
        table="results/score/shards/{shard}.parquet",
        info="results/score/shards/{shard}.json",
    log:
        log_path("score_shard", ".{shard}"),
    benchmark:
        benchmark_path("score_shard", ".{shard}")
    conda:
        "../envs/seqmux.yaml"
    threads: SCORE["threads"]
    resources:
        gpu=1,
    params:
        engine=SCORE["engine"],
        strand=SCORE["strand"],
        base_model=base_model_spec(),
        mode=config["targets"]["mode"],
        summary_features=SCORE["summary_features"],
    script:
        "../scripts/score_shard.py"


rule score_gather:
    input:
        genome=genome_fasta(),
        plan=rules.score_plan.output.plan,
        info=rules.score_plan.output.info,
        tables=expand("results/score/shards/{shard}.parquet", shard=SCORE_SHARDS),
        infos=expand("results/score/shards/{shard}.json", shard=SCORE_SHARDS),
        model=SCORE_MODEL if SCORE["engine"] == "multiplexer" else base_model_spec()["weights"],
    output:
        SCORE_FILES,
    log:
        log_path("score_gather"),
    conda:
        "../envs/seqmux.yaml"
    params:
        engine=SCORE["engine"],
        strand=SCORE["strand"],
        mode=config["targets"]["mode"],
    script:
        "../scripts/score_gather.py"


rule score:
    input:
        SCORE_FILES,
