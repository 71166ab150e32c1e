# circuitSNP track: open / closed chromatin from motif presence, an honest evaluation, SNP
# scoring. Features from sequence (default: the demo genome) or from the user's feather files.

from seqmux.tracks.circuitsnp.data import check_config as circuitsnp_check_config

CSNP = config["circuitsnp"]
CSNP_DIR = "results/circuitsnp"
CSNP_FROM_FEATHER = bool(CSNP["features"]["train"] or CSNP["features"]["validation"] or CSNP["features"]["test"])
# SNP scoring needs features from sequence and a VCF: the user's, or the one simulated on the demo genome
CSNP_SCORE = not CSNP_FROM_FEATHER and bool(CSNP["vcf"] or DEMO)
CSNP_SIMULATE = CSNP_SCORE and not CSNP["vcf"]
CSNP_CATEGORY = "circuitSNP"

check_at_start(circuitsnp_check_config, CSNP, planted=config["genome"]["demo"]["motifs"] if DEMO else None)
for _split in SPLITS:
    require_file(f"circuitsnp.features.{_split}", CSNP["features"][_split])
require_file("circuitsnp.vcf", CSNP["vcf"])


if CSNP_FROM_FEATHER:

    rule import_circuitsnp:
        input:
            train=CSNP["features"]["train"],
            validation=CSNP["features"]["validation"],
            test=CSNP["features"]["test"],
        output:
            train=f"{CSNP_DIR}/train.feather",
            validation=f"{CSNP_DIR}/validation.feather",
            test=f"{CSNP_DIR}/test.feather",
            table=report(
                f"{CSNP_DIR}/features.tsv",
                caption="../report/circuitsnp/features.rst",
                category=CSNP_CATEGORY,
                subcategory="Features",
            ),
        log:
            log_path("import_circuitsnp"),
        benchmark:
            benchmark_path("import_circuitsnp")
        conda:
            "../envs/seqmux.yaml"
        threads: 1
        params:
            feature_columns=lambda wildcards: CSNP["feature_columns"],  # a function: braces are not wildcards
            label_columns=CSNP["label_columns"],
        script:
            "../scripts/import_circuitsnp.py"

    CSNP_FEATURES = rules.import_circuitsnp

else:

    rule features_circuitsnp:
        input:
            fasta=genome_fasta(),
            planted=rules.demo_genome.output.motifs if DEMO else [],
        output:
            train=f"{CSNP_DIR}/train.feather",
            validation=f"{CSNP_DIR}/validation.feather",
            test=f"{CSNP_DIR}/test.feather",
            table=report(
                f"{CSNP_DIR}/features.tsv",
                caption="../report/circuitsnp/features.rst",
                category=CSNP_CATEGORY,
                subcategory="Features",
            ),
            motifs=f"{CSNP_DIR}/motifs.json",
            true_model=f"{CSNP_DIR}/true_model.json",
            windows=f"{CSNP_DIR}/windows.bed",
        log:
            log_path("features_circuitsnp"),
        benchmark:
            benchmark_path("features_circuitsnp")
        conda:
            "../envs/seqmux.yaml"
        threads: 1
        params:
            windows=CSNP["windows"],
            validation_chroms=config["windows"]["validation_chroms"],
            test_chroms=config["windows"]["test_chroms"],
            motifs=CSNP["motifs"],
            min_bits=CSNP["min_bits"],
            threshold=CSNP["threshold"],
            true_model=CSNP["true_model"],
            seed=config["seed"],
        script:
            "../scripts/features_circuitsnp.py"

    CSNP_FEATURES = rules.features_circuitsnp


rule train_circuitsnp:
    input:
        train=CSNP_FEATURES.output.train,
        validation=CSNP_FEATURES.output.validation,
    output:
        model=f"{CSNP_DIR}/model.pt",
        logistic=f"{CSNP_DIR}/logistic_regression.json",
        history=f"{CSNP_DIR}/training_log.tsv",
        loss_plot=report(
            f"{CSNP_DIR}/loss_curve.png",
            caption="../report/circuitsnp/loss_curve.rst",
            category=CSNP_CATEGORY,
            subcategory="Training",
        ),
    log:
        log_path("train_circuitsnp"),
    benchmark:
        benchmark_path("train_circuitsnp")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    resources:
        gpu=track_gpu("circuitsnp"),
    params:
        model=CSNP["model"],
        train=CSNP["train"],
        seed=config["seed"],
    script:
        "../scripts/train_circuitsnp.py"


if CSNP_SIMULATE:

    rule simulate_vcf_circuitsnp:
        input:
            fasta=genome_fasta(),
            sites=rules.demo_genome.output.sites,
            motifs=CSNP_FEATURES.output.motifs,
            true_model=CSNP_FEATURES.output.true_model,
        output:
            vcf=f"{CSNP_DIR}/simulated.vcf",
            table=f"{CSNP_DIR}/simulated_variants.tsv",
        log:
            log_path("simulate_vcf_circuitsnp"),
        benchmark:
            benchmark_path("simulate_vcf_circuitsnp")
        conda:
            "../envs/seqmux.yaml"
        threads: 1
        params:
            length=CSNP["windows"]["length"],
            test_chroms=config["windows"]["test_chroms"],
            threshold=CSNP["threshold"],
            simulate=CSNP["simulate_vcf"],
            seed=config["seed"],
        script:
            "../scripts/simulate_vcf_circuitsnp.py"


if CSNP_SCORE:

    rule score_snps_circuitsnp:
        input:
            vcf=rules.simulate_vcf_circuitsnp.output.vcf if CSNP_SIMULATE else CSNP["vcf"],
            fasta=genome_fasta(),
            model=rules.train_circuitsnp.output.model,
            motifs=CSNP_FEATURES.output.motifs,
            true_model=CSNP_FEATURES.output.true_model,
        output:
            scores=report(
                f"{CSNP_DIR}/snp_scores.tsv",
                caption="../report/circuitsnp/snp_scores.rst",
                category=CSNP_CATEGORY,
                subcategory="SNP scores",
            ),
            skipped=f"{CSNP_DIR}/snp_skipped.tsv",
        log:
            log_path("score_snps_circuitsnp"),
        benchmark:
            benchmark_path("score_snps_circuitsnp")
        conda:
            "../envs/seqmux.yaml"
        threads: 1
        params:
            length=CSNP["windows"]["length"],
            threshold=CSNP["threshold"],
        script:
            "../scripts/score_snps_circuitsnp.py"


rule evaluate_circuitsnp:
    input:
        model=rules.train_circuitsnp.output.model,
        logistic=rules.train_circuitsnp.output.logistic,
        train=CSNP_FEATURES.output.train,
        validation=CSNP_FEATURES.output.validation,
        test=CSNP_FEATURES.output.test,
        true_model=[] if CSNP_FROM_FEATHER else CSNP_FEATURES.output.true_model,
        snp_scores=rules.score_snps_circuitsnp.output.scores if CSNP_SCORE else [],
        simulated=rules.simulate_vcf_circuitsnp.output.table if CSNP_SIMULATE else [],
    output:
        metrics=report(
            f"{CSNP_DIR}/metrics.json",
            caption="../report/circuitsnp/metrics.rst",
            category=CSNP_CATEGORY,
            subcategory="Evaluation",
        ),
        predictions=report(
            f"{CSNP_DIR}/test_predictions.tsv",
            caption="../report/circuitsnp/test_predictions.rst",
            category=CSNP_CATEGORY,
            subcategory="Evaluation",
        ),
        roc=report(
            f"{CSNP_DIR}/roc_curve.png",
            caption="../report/circuitsnp/roc_curve.rst",
            category=CSNP_CATEGORY,
            subcategory="Evaluation",
        ),
        pr=report(
            f"{CSNP_DIR}/pr_curve.png",
            caption="../report/circuitsnp/pr_curve.rst",
            category=CSNP_CATEGORY,
            subcategory="Evaluation",
        ),
        split=report(
            f"{CSNP_DIR}/split.tsv",
            caption="../report/circuitsnp/split.rst",
            category=CSNP_CATEGORY,
            subcategory="Evaluation",
        ),
    log:
        log_path("evaluate_circuitsnp"),
    benchmark:
        benchmark_path("evaluate_circuitsnp")
    conda:
        "../envs/seqmux.yaml"
    threads: 1
    script:
        "../scripts/evaluate_circuitsnp.py"


TRACK_FILES["circuitsnp"] = [
    rules.evaluate_circuitsnp.output.metrics,
    rules.evaluate_circuitsnp.output.predictions,
    rules.evaluate_circuitsnp.output.roc,
    rules.evaluate_circuitsnp.output.pr,
    rules.evaluate_circuitsnp.output.split,
    rules.train_circuitsnp.output.history,
    rules.train_circuitsnp.output.loss_plot,
    rules.train_circuitsnp.output.model,
    CSNP_FEATURES.output.table,
] + ([rules.score_snps_circuitsnp.output.scores] if CSNP_SCORE else [])


rule circuitsnp:
    input:
        TRACK_FILES["circuitsnp"],
