"""Benchmark: the demo Multiplexer trained with the published recipe ("old") and with this
project's default recipe ("new", the schema's defaults), on the windows of one workflow run.

Both recipes train on the first windows of the run's train split (the old one on
``--old-windows``, 600 as published; the new one on as many as ``windows.count.train`` of the
schema, or all the run has), select their weights on the validation split, and are scored on the
validation split and, unless ``--no-test``, once on the test split. Per recipe it prints the
weighted Pearson (mean over outputs), ``r2`` and ``top1pct_recall`` (``seqmux.metrics``), the
training time (a finished run in the scratch directory with the same settings is reused,
with the time it took), and the Multiplexer's time per window against fast exact ISM's on the same
windows in the same process (``seqmux.evaluate.time_speed``).

``--recipe NAME:key=value,...`` adds a recipe: the old one (``--base-recipe new``: the new one)
with those keys changed (keys of ``multiplexer.train``, ``multiplexer.demo`` and ``windows``: the
number of training windows); what the recipe search ran (validation only, ``--no-test``).

    # a finished run of the embedded default with at least the new recipe's training windows:
    .venv/bin/snakemake --cores 2 --resources gpu=1 --directory /tmp/mux_run --config 'tracks=[]' \\
        --until compute_targets
    PYTHONPATH=. .venv/bin/python benchmarks/mux_recipe.py /tmp/mux_run
"""

import argparse
import json
import logging
import os
import re
from pathlib import Path

import pyarrow as pa
import torch
import yaml

from seqmux.evaluate import split_batches, time_speed
from seqmux.metrics import Metrics
from seqmux.models import build_base_model
from seqmux.multiplexer import PRESETS, load_multiplexer
from seqmux.splits import SplitDataset, check_split
from seqmux.train import train_multiplexer

REPO = Path(__file__).resolve().parents[1]
# the published recipe: the BelugaMultiplexer's training, sized for the demo (600 windows)
OLD = dict(windows=600, sizes=dict(trunk="dilated", widths=[64, 64, 64, 64, 64], dilations=[1, 2, 4, 8, 16], kernel=8,
                                   head_hidden=256, ramp="tent", position_embedding=False, global_context=False),
           train=dict(lr=0.004, lr_schedule="onecycle", batch_size=16, steps=1200, validate_every=100, patience=5,
                      scale_targets=True, loss_weight=0.0, ema=0.0, amp=False, loss_asinh=0.0))


def schema_defaults():
    """The new recipe: ``multiplexer.demo``, ``multiplexer.train`` and ``windows.count.train``
    defaults of the schema."""
    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())["properties"]
    mux = schema["multiplexer"]["properties"]
    sizes = {k: v["default"] for k, v in mux["demo"]["properties"].items()}
    train = {k: v["default"] for k, v in mux["train"]["properties"].items() if k in OLD["train"]}
    windows = schema["windows"]["properties"]["count"]["properties"]["train"]["default"]
    return dict(windows=windows, sizes=sizes, train=train)


def with_changes(recipe, changes):
    out = json.loads(json.dumps(recipe))
    for item in filter(None, re.split(r",(?![^\[]*\])", changes)):  # commas inside [...] belong to a list
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        if key == "windows":
            out["windows"] = int(value)
        elif key in out["sizes"] or key in PRESETS["demo"]:
            out["sizes"][key] = value
        elif key in out["train"]:
            out["train"][key] = value
        else:
            raise SystemExit(f"unknown recipe key {key!r}")
    return out


def first_windows(split_dir, n, out):
    """The first ``n`` windows of a split as one shard file (schema metadata kept)."""
    table, _ = check_split(split_dir)
    table = table.slice(0, min(n, table.num_rows))
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return out, table.num_rows


def score(model, split_dir, device):
    table, _ = check_split(split_dir)
    ds = SplitDataset(table)
    m = Metrics(ds.n_outputs, seed=1)
    for pred, exact, onehot in split_batches(model, ds, list(range(len(ds))), device, 16):
        m.update(pred, exact, onehot)
    r = m.result()
    return dict(weighted_pearson=r["weighted_pearson_mean"], r2=r["r2"], top1pct_recall=r["top1pct_recall"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a workflow run directory with results/splits")
    ap.add_argument("--recipes", default="old,new", help="comma-separated recipes to run (old, new, or --recipe names)")
    ap.add_argument("--recipe", action="append", default=[], help="NAME:key=value,... (changes to --base-recipe)")
    ap.add_argument("--base-recipe", choices=("old", "new"), default="old", help="the recipe --recipe changes")
    ap.add_argument("--old-windows", type=int, default=600)
    ap.add_argument("--steps", type=int, default=0, help="every recipe's steps, validate_every steps / 4 (0: its own)")
    ap.add_argument("--no-test", action="store_true", help="validation figures only (the recipe search)")
    ap.add_argument("--speed-windows", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/mux_recipe"), help="scratch directory")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    recipes = {"old": dict(OLD, windows=args.old_windows), "new": schema_defaults()}
    for spec in args.recipe:
        name, changes = spec.split(":", 1)
        recipes[name] = with_changes(recipes[args.base_recipe], changes)
    if args.steps:
        for recipe in recipes.values():
            recipe["train"].update(steps=args.steps, validate_every=max(args.steps // 4, 1))
    splits = args.run / "results/splits"
    base = build_base_model("demo", str(args.run / "resources/demo/base_model.pt"), "", "", None)
    rows = []
    for name in args.recipes.split(","):
        recipe = recipes[name]
        d = args.out / name
        d.mkdir(parents=True, exist_ok=True)
        train_file, n_train = first_windows(splits / "train", recipe["windows"], d / "train.feather")
        facts = train_multiplexer(train_file, splits / "validation", d / "model.pt", d / "last.pt", d / "log.csv",
                                  d / "loss.png", d / "checkpoints", preset="demo", sizes=recipe["sizes"],
                                  device="cpu", seed=args.seed, **recipe["train"])
        model, _ = load_multiplexer(d / "model.pt")
        row = dict(recipe=name, train_windows=n_train, steps=facts["steps_done"], best_step=facts["best_step"],
                   train_s=facts["train_seconds"], parameters=facts["n_parameters"],
                   validation=score(model, splits / "validation", torch.device("cpu")))
        if not args.no_test:
            row["test"] = score(model, splits / "test", torch.device("cpu"))
            table, info = check_split(splits / "test")
            ds = SplitDataset(table)
            speed_rows = list(range(min(args.speed_windows, len(ds))))
            t = time_speed(model, base, ds, speed_rows, torch.device("cpu"), 16, 512, info["mode"])
            n = len(speed_rows)
            row.update(mux_ms_per_window=round(1000 * t["multiplexer"] / n, 2),
                       fast_ism_ms_per_window=round(1000 * t["fast"] / n, 2),
                       speedup_vs_fast_ism=round(t["fast"] / t["multiplexer"], 1))
        print("RESULT " + json.dumps(dict(row, recipe_settings=recipe)), flush=True)
        rows.append(row)
    print(f"\n{'recipe':<12} {'windows':>7} {'steps':>5} {'train s':>8} | {'val wP':>6} {'val r2':>6} "
          f"{'val top1':>8} | {'test wP':>7} {'test r2':>7} {'test top1':>9} | {'mux ms':>6} {'fastISM ms':>10} "
          f"{'speedup':>7}")
    for r in rows:
        v, t = r["validation"], r.get("test", {})
        test = (f"{t['weighted_pearson']:>7.3f} {t['r2']:>7.3f} {t['top1pct_recall']:>9.3f}" if t else f"{'-':>25}")
        speed = ""
        if "mux_ms_per_window" in r:
            speed = (f"{r['mux_ms_per_window']:>6.2f} {r['fast_ism_ms_per_window']:>10.2f} "
                     f"{r['speedup_vs_fast_ism']:>6.1f}x")
        print(f"{r['recipe']:<12} {r['train_windows']:>7} {r['steps']:>5} {r['train_s']:>8.1f} | "
              f"{v['weighted_pearson']:>6.3f} {v['r2']:>6.3f} {v['top1pct_recall']:>8.3f} | {test} | {speed}")


if __name__ == "__main__":
    main()
