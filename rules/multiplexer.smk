# The Multiplexer: trained on the splits (one GPU job), evaluated against exact ISM on held-out windows.
# params: what changes the outputs; execution settings (EXECUTION_SETTINGS in common.smk) are read by
# the scripts from the config, so changing them reruns nothing.

MUX = config["multiplexer"]
MULTIPLEXER_FILES = expand(
    "results/multiplexer/{name}",
    name=[
        "model.pt",
        "loss_curve.png",
        "metrics.json",
        "metrics.tsv",
        "predicted_vs_exact.png",
        "profile_correlations.png",
        "example_heatmap.png",
        "strongest_effects.png",
        "accuracy_by_distance.png",
    ],
)


rule train_multiplexer:
    input:
        train=split_files("train"),
        validation=split_files("validation"),
    output:
        model="results/multiplexer/model.pt",
        last="results/multiplexer/model_last.pt",
        log_csv=report(
            "results/multiplexer/training_log.csv",
            caption="../report/training_log.rst",
            category="Multiplexer",
            subcategory="Training",
        ),
        loss_plot=report(
            "results/multiplexer/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Multiplexer",
            subcategory="Training",
        ),
    log:
        log_path("train_multiplexer"),
    benchmark:
        benchmark_path("train_multiplexer")
    conda:
        "../envs/seqmux.yaml"
    threads: MUX["train"]["threads"]
    resources:
        gpu=1,
    params:
        preset=MUX["preset"],
        sizes=MUX["demo"],
        mask_reference=MUX["mask_reference"],
        train=meaningful(MUX["train"], "multiplexer.train"),
        seed=config["seed"],
    script:
        "../scripts/train_multiplexer.py"


rule evaluate_multiplexer:
    input:
        model=rules.train_multiplexer.output.model,
        train=split_files("train"),
        validation=split_files("validation"),
        test=split_files("test"),
        base_model=base_model_files(),
    output:
        metrics=report(
            "results/multiplexer/metrics.json",
            caption="../report/metrics.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
        table=report(
            "results/multiplexer/metrics.tsv",
            caption="../report/metrics_table.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
        hexbin=report(
            "results/multiplexer/predicted_vs_exact.png",
            caption="../report/predicted_vs_exact.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
        histogram=report(
            "results/multiplexer/profile_correlations.png",
            caption="../report/profile_correlations.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
        heatmap=report(
            "results/multiplexer/example_heatmap.png",
            caption="../report/example_heatmap.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
        strongest=report(
            "results/multiplexer/strongest_effects.png",
            caption="../report/strongest_effects.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
        distance=report(
            "results/multiplexer/accuracy_by_distance.png",
            caption="../report/accuracy_by_distance.rst",
            category="Multiplexer",
            subcategory="Evaluation",
        ),
    log:
        log_path("evaluate_multiplexer"),
    benchmark:
        benchmark_path("evaluate_multiplexer")
    conda:
        "../envs/seqmux.yaml"
    threads: MUX["evaluate"]["threads"]
    resources:
        gpu=1,
    params:
        base_model=base_model_spec(),
        evaluate=meaningful(MUX["evaluate"], "multiplexer.evaluate"),
        seed=config["seed"],
    script:
        "../scripts/evaluate_multiplexer.py"
