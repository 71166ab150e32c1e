# sgRNA track: a per-position ReLU network for guide activity, with a base-effect map.
# simulate (default data, when sgrna.data is empty) -> encode (checks, one-hot, constant positions
# dropped, train / validation / test split keeping sequences and groups whole) -> train (SGD, one
# guide a step, early stopping on validation) -> evaluate (test metrics, ridge baseline, base
# effects, heatmap). The user's TSV goes through the same encode / train / evaluate rules.

from seqmux.tracks.sgrna.data import check_config as sgrna_check_config

SGRNA = config["sgrna"]
check_at_start(sgrna_check_config, SGRNA)
SGRNA_SIMULATED = not SGRNA["data"]
SGRNA_DIR = "results/sgrna"
SGRNA_CATEGORY = "sgRNA"

TRACK_FILES["sgrna"] = [
    f"{SGRNA_DIR}/{name}"
    for name in (
        "metrics.json",
        "base_effects.tsv",
        "ridge_effects.tsv",
        "test_predictions.tsv",
        "split.tsv",
        "base_effects.png",
        "training_log.tsv",
        "loss_curve.png",
    )
] + ([f"{SGRNA_DIR}/true_effects.tsv"] if SGRNA_SIMULATED else [])


rule sgrna:
    input:
        TRACK_FILES["sgrna"],


rule simulate_sgrna:
    output:
        guides=f"{SGRNA_DIR}/simulated_guides.tsv",
        true_effects=report(
            f"{SGRNA_DIR}/true_effects.tsv",
            caption="../report/sgrna/true_effects.rst",
            category=SGRNA_CATEGORY,
            subcategory="Simulated data",
        ),
    log:
        log_path("simulate_sgrna"),
    benchmark:
        benchmark_path("simulate_sgrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    params:
        section={k: v for k, v in SGRNA.items() if k in ("sequence_column", "outcome_column", "layout", "simulate")},
        seed=config["seed"],
    script:
        "../scripts/simulate_sgrna.py"


rule encode_sgrna:
    input:
        data=rules.simulate_sgrna.output.guides if SGRNA_SIMULATED else SGRNA["data"],
    output:
        encoded=f"{SGRNA_DIR}/encoded.npz",
        split=report(
            f"{SGRNA_DIR}/split.tsv",
            caption="../report/sgrna/split.rst",
            category=SGRNA_CATEGORY,
            subcategory="Evaluation",
        ),
    log:
        log_path("encode_sgrna"),
    benchmark:
        benchmark_path("encode_sgrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    params:
        sequence_column=SGRNA["sequence_column"],
        outcome_column=SGRNA["outcome_column"],
        allow_n=SGRNA["allow_n"],
        split=SGRNA["split"],
        seed=config["seed"],
    script:
        "../scripts/encode_sgrna.py"


rule train_sgrna:
    input:
        encoded=rules.encode_sgrna.output.encoded,
    output:
        model=f"{SGRNA_DIR}/model.pt",
        log=report(
            f"{SGRNA_DIR}/training_log.tsv",
            caption="../report/sgrna/training_log.rst",
            category=SGRNA_CATEGORY,
            subcategory="Training",
        ),
        plot=report(
            f"{SGRNA_DIR}/loss_curve.png",
            caption="../report/sgrna/loss_curve.rst",
            category=SGRNA_CATEGORY,
            subcategory="Training",
        ),
    log:
        log_path("train_sgrna"),
    benchmark:
        benchmark_path("train_sgrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    resources:
        gpu=track_gpu("sgrna"),
    params:
        train=SGRNA["train"],
        seed=config["seed"],
    script:
        "../scripts/train_sgrna.py"


rule evaluate_sgrna:
    input:
        encoded=rules.encode_sgrna.output.encoded,
        model=rules.train_sgrna.output.model,
        truth=rules.simulate_sgrna.output.true_effects if SGRNA_SIMULATED else [],
    output:
        metrics=report(
            f"{SGRNA_DIR}/metrics.json",
            caption="../report/sgrna/metrics.rst",
            category=SGRNA_CATEGORY,
            subcategory="Evaluation",
        ),
        effects=report(
            f"{SGRNA_DIR}/base_effects.tsv",
            caption="../report/sgrna/base_effects.rst",
            category=SGRNA_CATEGORY,
            subcategory="Base effects",
        ),
        ridge_effects=report(
            f"{SGRNA_DIR}/ridge_effects.tsv",
            caption="../report/sgrna/ridge_effects.rst",
            category=SGRNA_CATEGORY,
            subcategory="Base effects",
        ),
        predictions=report(
            f"{SGRNA_DIR}/test_predictions.tsv",
            caption="../report/sgrna/test_predictions.rst",
            category=SGRNA_CATEGORY,
            subcategory="Evaluation",
        ),
        heatmap=report(
            f"{SGRNA_DIR}/base_effects.png",
            caption="../report/sgrna/base_effects_heatmap.rst",
            category=SGRNA_CATEGORY,
            subcategory="Base effects",
        ),
    log:
        log_path("evaluate_sgrna"),
    benchmark:
        benchmark_path("evaluate_sgrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1  # on the CPU whatever sgrna.device says: one forward pass over all guides takes milliseconds
    params:
        section={k: v for k, v in SGRNA.items() if k in ("layout", "ridge_alphas")},
    script:
        "../scripts/evaluate_sgrna.py"
