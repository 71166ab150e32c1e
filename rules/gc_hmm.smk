# GC-HMM track: a GRU that learns a hidden Markov model, measured against the best
# possible answer (forward filtering, posterior decoding, Viterbi). One run per preset
# (gc_hmm.presets, and `data` when gc_hmm.data names a user's TSV): simulate (or split the user's
# TSV) into train / validation / test -> train the GRU and the biGRU (early stopping on validation)
# -> evaluate on the test rows; a summary over presets. Each preset's folder holds the track
# contract's outputs (docs/tracks.md).

import re

from seqmux.tracks.gc_hmm.data import (
    DATA as GC_HMM_DATA,
    built_presets as gc_hmm_built_presets,
    check_config as gc_hmm_check_config,
)

GC_HMM = config["gc_hmm"]
check_at_start(gc_hmm_check_config, GC_HMM)
require_file("gc_hmm.data", GC_HMM["data"])
GC_HMM_PRESETS = gc_hmm_built_presets(GC_HMM)
GC_HMM_SIMULATED = [p for p in GC_HMM_PRESETS if p != GC_HMM_DATA]
GC_HMM_PRESET_RE = "|".join(re.escape(p) for p in GC_HMM_PRESETS) or "(?!)"
GC_HMM_SIMULATED_RE = "|".join(re.escape(p) for p in GC_HMM_SIMULATED) or "(?!)"

TRACK_FILES["gc_hmm"] = ["results/gc_hmm/summary.tsv"] + expand(
    "results/gc_hmm/{preset}/{name}",
    preset=GC_HMM_PRESETS,
    name=[
        "metrics.json",
        "split.tsv",
        "training_log.tsv",
        "loss_curve.png",
        "test_predictions.tsv",
        "model.pt",
        "calibration.png",
        "accuracy.png",
    ],
)


rule gc_hmm:
    input:
        TRACK_FILES["gc_hmm"],


rule simulate_gc_hmm:
    output:
        train="results/gc_hmm/{preset}/train.tsv",
        validation="results/gc_hmm/{preset}/validation.tsv",
        test="results/gc_hmm/{preset}/test.tsv",
        hmm="results/gc_hmm/{preset}/hmm.json",
        split="results/gc_hmm/{preset}/split.tsv",
    log:
        log_path("simulate_gc_hmm", ".{preset}"),
    benchmark:
        benchmark_path("simulate_gc_hmm", ".{preset}")
    wildcard_constraints:
        preset=GC_HMM_SIMULATED_RE,
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    params:
        spec=lambda wildcards: GC_HMM["presets"][wildcards.preset],
        counts={k: GC_HMM["simulate"][k] for k in ("train", "validation", "test")},
        length=GC_HMM["simulate"]["length"],
        seed=config["seed"],
    script:
        "../scripts/simulate_gc_hmm.py"


if GC_HMM["data"]:

    rule split_gc_hmm:
        input:
            data=GC_HMM["data"],
        output:
            train=f"results/gc_hmm/{GC_HMM_DATA}/train.tsv",
            validation=f"results/gc_hmm/{GC_HMM_DATA}/validation.tsv",
            test=f"results/gc_hmm/{GC_HMM_DATA}/test.tsv",
            hmm=f"results/gc_hmm/{GC_HMM_DATA}/hmm.json",
            split=f"results/gc_hmm/{GC_HMM_DATA}/split.tsv",
        log:
            log_path("split_gc_hmm"),
        benchmark:
            benchmark_path("split_gc_hmm")
        conda:
            "../envs/seqmux.yaml"
        threads: 1
        params:
            states=GC_HMM["data_states"],
            test_fraction=GC_HMM["split"]["test_fraction"],
            validation_fraction=GC_HMM["split"]["validation_fraction"],
            seed=config["seed"],
        script:
            "../scripts/split_gc_hmm.py"


rule train_gc_hmm:
    input:
        train=rules.simulate_gc_hmm.output.train,
        validation=rules.simulate_gc_hmm.output.validation,
        hmm=rules.simulate_gc_hmm.output.hmm,
    output:
        model="results/gc_hmm/{preset}/model.pt",
        log_tsv=report(
            "results/gc_hmm/{preset}/training_log.tsv",
            caption="../report/gc_hmm/training_log.rst",
            category="GC-HMM",
            subcategory="{preset}",
        ),
        loss_plot=report(
            "results/gc_hmm/{preset}/loss_curve.png",
            caption="../report/gc_hmm/loss_curve.rst",
            category="GC-HMM",
            subcategory="{preset}",
        ),
    log:
        log_path("train_gc_hmm", ".{preset}"),
    benchmark:
        benchmark_path("train_gc_hmm", ".{preset}")
    wildcard_constraints:
        preset=GC_HMM_PRESET_RE,
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    resources:
        gpu=track_gpu("gc_hmm"),
    params:
        sizes={**GC_HMM["model"], **GC_HMM["train"]},
        seed=config["seed"],
    script:
        "../scripts/train_gc_hmm.py"


rule evaluate_gc_hmm:
    input:
        train=rules.simulate_gc_hmm.output.train,
        validation=rules.simulate_gc_hmm.output.validation,
        test=rules.simulate_gc_hmm.output.test,
        hmm=rules.simulate_gc_hmm.output.hmm,
        split=rules.simulate_gc_hmm.output.split,
        model=rules.train_gc_hmm.output.model,
    output:
        metrics=report(
            "results/gc_hmm/{preset}/metrics.json",
            caption="../report/gc_hmm/metrics.rst",
            category="GC-HMM",
            subcategory="{preset}",
        ),
        predictions=report(
            "results/gc_hmm/{preset}/test_predictions.tsv",
            caption="../report/gc_hmm/test_predictions.rst",
            category="GC-HMM",
            subcategory="{preset}",
        ),
        calibration=report(
            "results/gc_hmm/{preset}/calibration.png",
            caption="../report/gc_hmm/calibration.rst",
            category="GC-HMM",
            subcategory="{preset}",
        ),
        accuracy=report(
            "results/gc_hmm/{preset}/accuracy.png",
            caption="../report/gc_hmm/accuracy.rst",
            category="GC-HMM",
            subcategory="{preset}",
        ),
    log:
        log_path("evaluate_gc_hmm", ".{preset}"),
    benchmark:
        benchmark_path("evaluate_gc_hmm", ".{preset}")
    wildcard_constraints:
        preset=GC_HMM_PRESET_RE,
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    resources:
        gpu=track_gpu("gc_hmm"),
    params:
        random_draws=GC_HMM["random_draws"],
        seed=config["seed"],
    script:
        "../scripts/evaluate_gc_hmm.py"


rule summarize_gc_hmm:
    input:
        metrics=expand("results/gc_hmm/{preset}/metrics.json", preset=GC_HMM_PRESETS),
    output:
        table=report(
            "results/gc_hmm/summary.tsv",
            caption="../report/gc_hmm/summary.rst",
            category="GC-HMM",
            subcategory="Summary",
        ),
    log:
        log_path("summarize_gc_hmm"),
    benchmark:
        benchmark_path("summarize_gc_hmm")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    script:
        "../scripts/summarize_gc_hmm.py"
