# Single-cell track: a two-cell-type classifier on AnnData. scanpy preprocessing and a stratified
# (or donor-grouped) train / validation / test split, the source's three torch models, scikit-learn's LogisticRegression on
# the same split as the reference. Input: the user's h5ad (scrna.h5ad), or scanpy's bundled
# pbmc68k_reduced (no download). `snakemake scrna --cores 2` builds the track alone.
# params: what changes the outputs; the execution setting scrna.device is read by the scripts.

from seqmux.tracks.scrna import check_config as scrna_check_config

SCRNA = config["scrna"]
SCRNA_DIR = "results/scrna"
SCRNA_CATEGORY = "Single-cell"

check_at_start(scrna_check_config, SCRNA)


rule preprocess_scrna:
    input:
        [SCRNA["h5ad"]] if SCRNA["h5ad"] else [],
    output:
        cells=f"{SCRNA_DIR}/cells.h5ad",
        split=report(
            f"{SCRNA_DIR}/split.tsv", caption="../report/scrna/split.rst", category=SCRNA_CATEGORY, subcategory="Data"
        ),
    log:
        log_path("preprocess_scrna"),
    benchmark:
        benchmark_path("preprocess_scrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    params:
        h5ad=SCRNA["h5ad"],
        cell_type_key=SCRNA["cell_type_key"],
        classes=SCRNA["classes"],
        counts=SCRNA["counts"],
        min_counts=SCRNA["min_counts"],
        split=SCRNA["split"],
        seed=config["seed"],
    script:
        "../scripts/preprocess_scrna.py"


rule train_scrna:
    input:
        cells=rules.preprocess_scrna.output.cells,
    output:
        models=f"{SCRNA_DIR}/model.pt",
        curves=report(
            f"{SCRNA_DIR}/training_log.tsv",
            caption="../report/scrna/training_log.rst",
            category=SCRNA_CATEGORY,
            subcategory="Training",
        ),
        loss_plot=report(
            f"{SCRNA_DIR}/loss_curve.png",
            caption="../report/scrna/loss_curve.rst",
            category=SCRNA_CATEGORY,
            subcategory="Training",
        ),
        accuracy_plot=report(
            f"{SCRNA_DIR}/accuracy_curve.png",
            caption="../report/scrna/accuracy_curve.rst",
            category=SCRNA_CATEGORY,
            subcategory="Training",
        ),
    log:
        log_path("train_scrna"),
    benchmark:
        benchmark_path("train_scrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    resources:
        gpu=track_gpu("scrna"),
    params:
        model=SCRNA["model"],
        train=SCRNA["train"],
        seed=config["seed"],
    script:
        "../scripts/train_scrna.py"


rule evaluate_scrna:
    input:
        cells=rules.preprocess_scrna.output.cells,
        models=rules.train_scrna.output.models,
    output:
        metrics=report(
            f"{SCRNA_DIR}/metrics.json",
            caption="../report/scrna/metrics.rst",
            category=SCRNA_CATEGORY,
            subcategory="Evaluation",
        ),
        table=report(
            f"{SCRNA_DIR}/metrics.tsv",
            caption="../report/scrna/metrics_table.rst",
            category=SCRNA_CATEGORY,
            subcategory="Evaluation",
        ),
        accuracy_plot=report(
            f"{SCRNA_DIR}/test_accuracy.png",
            caption="../report/scrna/test_accuracy.rst",
            category=SCRNA_CATEGORY,
            subcategory="Evaluation",
        ),
        top_genes=report(
            f"{SCRNA_DIR}/top_genes.tsv",
            caption="../report/scrna/top_genes.rst",
            category=SCRNA_CATEGORY,
            subcategory="Genes",
        ),
        top_plot=report(
            f"{SCRNA_DIR}/top_genes.png",
            caption="../report/scrna/top_genes_plot.rst",
            category=SCRNA_CATEGORY,
            subcategory="Genes",
        ),
        predictions=report(
            f"{SCRNA_DIR}/test_predictions.tsv",
            caption="../report/scrna/test_predictions.rst",
            category=SCRNA_CATEGORY,
            subcategory="Evaluation",
        ),
    log:
        log_path("evaluate_scrna"),
    benchmark:
        benchmark_path("evaluate_scrna")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    params:  # the trained models run on the CPU here (no gpu resource)
        model=SCRNA["model"],
        train=SCRNA["train"],
        top_genes=SCRNA["top_genes"],
    script:
        "../scripts/evaluate_scrna.py"


TRACK_FILES["scrna"] = [
    f"{SCRNA_DIR}/{name}"
    for name in (
        "cells.h5ad",
        "split.tsv",
        "model.pt",
        "training_log.tsv",
        "loss_curve.png",
        "accuracy_curve.png",
        "test_predictions.tsv",
        "metrics.json",
        "metrics.tsv",
        "test_accuracy.png",
        "top_genes.tsv",
        "top_genes.png",
    )
]


rule scrna:
    input:
        TRACK_FILES["scrna"],
