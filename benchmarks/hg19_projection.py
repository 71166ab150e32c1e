"""Projection of the hg19 + Beluga run (config/hg19_beluga.yaml) from figures measured here.

Measures, on this machine (CPU unless --device cuda):

1. targets: exact ISM of full-size Beluga (random He-normal weights) on one 2,000 bp window, fast
   (every substitution) and naive (a sample), as the target stage runs it
   (``seqmux.ism.window_targets``);
2. training: ``seqmux.train.train_multiplexer`` itself with the published BelugaMultiplexer
   layout (``multiplexer.preset: beluga``, 202 M parameters, L = 2,000, F = 2,002) on a float16
   split of random windows read memory-mapped, ``--batch`` windows a step: seconds per step (the
   first step not counted) and the training process's peak memory (``--num-workers``: the
   training's loader worker processes, ``multiplexer.train.num_workers``);
3. reading: one window's targets from a float16 split shard, memory-mapped, restored to
   ``[F, 4, L]`` float32 (``SplitDataset``);

then multiplies them out with the config's window count, target dtype and training steps into
hours and terabytes, and prints the table docs/multiplexer.md quotes.

    PYTHONPATH=. python benchmarks/hg19_projection.py                  # CPU, 2 threads
    PYTHONPATH=. python benchmarks/hg19_projection.py --device cuda --batch 16
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqmux.config import load_config  # noqa: E402
from seqmux.ism import window_targets  # noqa: E402
from seqmux.models import BELUGA, BelugaFamily  # noqa: E402
from seqmux.runtime import choose_device  # noqa: E402
from seqmux.splits import disk_bytes  # noqa: E402
from seqmux.variants import substitutions  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def he_init(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * np.sqrt(2.0 / m.weight[0].numel()))
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
    return model.eval()


def time_targets(device, naive_sample):
    model = he_init(BelugaFamily(**BELUGA)).to(device)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, 2000).astype(np.uint8)
    offsets, alts = substitutions(tokens)
    window_targets(model, tokens, offsets[:64], alts[:64], "logfold", "fast", 512, device)   # plan, warm-up
    sync(device)
    t0 = time.perf_counter()
    window_targets(model, tokens, offsets, alts, "logfold", "fast", 512, device)
    sync(device)
    fast = time.perf_counter() - t0
    pick = np.sort(rng.choice(len(offsets), naive_sample, replace=False))
    t0 = time.perf_counter()
    window_targets(model, tokens, offsets[pick], alts[pick], "logfold", "naive", 128, device)
    sync(device)
    naive = (time.perf_counter() - t0) * len(offsets) / naive_sample
    return fast, naive


def time_training(device, batch, steps, threads, num_workers=0):
    """Seconds per step and peak memory of ``seqmux.train.train_multiplexer`` with the beluga preset
    on a float16 split of ``2 * batch`` random windows (L = 2000, F = 2002) read memory-mapped, in a
    process of its own (its peak memory is its own)."""
    import json
    import subprocess

    code = f"""
import csv, json, resource, sys, tempfile, numpy as np, pyarrow as pa, torch
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from seqmux.splits import split_batch, split_schema
from seqmux.train import train_multiplexer
torch.set_num_threads({threads})
d = Path(tempfile.mkdtemp())
schema = split_schema(2002, 2000, "float16", [f"o{{i}}" for i in range(2002)], "logfold", "beluga")
rng = np.random.default_rng(0)
for split, n in (("train", {2 * batch}), ("validation", 2)):
    (d / split).mkdir()
    with pa.OSFile(str(d / split / "0000.feather"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for i in range(n):
            tokens = rng.integers(0, 4, 2000).astype(np.uint8)
            target = (rng.standard_normal((2002, 4, 2000)) * 0.1).astype(np.float32)
            target[:, tokens, np.arange(2000)] = 0
            w.write_batch(split_batch(schema, i, "chr1", 0, 2000, tokens, np.zeros(2002), target))
facts = train_multiplexer(d / "train", d / "validation", d / "m.pt", d / "l.pt", d / "log.csv", d / "loss.png",
                          d / "ck", preset="beluga", batch_size={batch}, steps={steps + 1},
                          validate_every={steps + 1}, patience=0, device={str(device)!r}, lr=1e-4,
                          num_workers={num_workers})
rows = list(csv.DictReader(open(d / "log.csv")))
t = [float(r["elapsed_s"]) for r in rows]
print(json.dumps(dict(step=(t[-2] - t[0]) / max(len(t) - 2, 1),
                      peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      gpu_peak_gb=torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0,
                      params=facts["n_parameters"])))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["step"], res["peak_gb"], res["gpu_peak_gb"]


def time_reading(windows=4):
    """Seconds to read one window's float16 targets into float32 from a memory-mapped split."""
    import pyarrow as pa

    from seqmux.splits import SplitDataset, open_split, split_batch, split_schema

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.feather"
        schema = split_schema(2002, 2000, "float16", [f"o{i}" for i in range(2002)], "logfold", "beluga")
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for i in range(windows):
                rng = np.random.default_rng(i)
                tokens = rng.integers(0, 4, 2000).astype(np.uint8)
                target = rng.standard_normal((2002, 4, 2000)).astype(np.float32)
                w.write_batch(split_batch(schema, i, "chr1", 0, 2000, tokens, np.zeros(2002), target))
        ds = SplitDataset(open_split(path))
        t0 = time.perf_counter()
        for i in range(windows):
            ds[i]
        return (time.perf_counter() - t0) / windows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="windows per training step measured")
    ap.add_argument("--steps", type=int, default=3, help="training steps timed (after one not counted)")
    ap.add_argument("--naive-sample", type=int, default=300)
    ap.add_argument("--num-workers", type=int, default=0, help="the training's DataLoader worker processes")
    ap.add_argument("--config", default=str(ROOT / "config/hg19_beluga.yaml"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = choose_device(args.device, "benchmarks/hg19_projection.py", "--device")
    cfg = load_config(args.config)  # over config/config.yaml, with the schema's defaults, as the workflow
    count = cfg["windows"]["count"]
    n_windows = sum(count.values())
    dtype = cfg["targets"]["dtype"]
    train = cfg["multiplexer"]["train"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, torch {torch.__version__}")

    fast, naive = time_targets(device, args.naive_sample)
    print(f"targets, one Beluga window (6,000 substitutions): fast ISM {fast:.2f} s, naive ISM {naive:.1f} s "
          f"(from {args.naive_sample} substitutions)")
    step, train_peak, gpu_peak = time_training(device, args.batch, args.steps, args.threads, args.num_workers)
    print(f"training, BelugaMultiplexer (202,273,376 parameters) by seqmux.train.train_multiplexer, batch "
          f"{args.batch} from a memory-mapped float16 split, {args.num_workers} loader workers: {step:.2f} s per step; "
          f"peak memory {train_peak:.1f} GB"
          + (f" (host), {gpu_peak:.1f} GB allocated on the GPU" if device.type == "cuda" else ""))
    read = time_reading()
    print(f"reading one window's float16 targets from a memory-mapped split: {read * 1e3:.1f} ms")

    per_copy = disk_bytes(n_windows, 2002, 2000, dtype)
    steps, batch = int(train["steps"]), int(train["batch_size"])
    step_at_batch = step * batch / args.batch            # compute grows with the batch
    print(f"\nprojection for {args.config} ({n_windows:,} windows, {dtype} targets, {steps} steps of "
          f"{batch} windows), on {name} with {torch.get_num_threads()} threads:")
    print("| quantity | figure | from |")
    print("|---|---|---|")
    print(f"| targets, fast ISM | {n_windows * fast / 3600:,.0f} hours | {fast:.2f} s a window x {n_windows:,} |")
    print(f"| targets, naive ISM | {n_windows * naive / 3600:,.0f} hours | {naive:.0f} s a window x {n_windows:,} |")
    print(f"| disk (the one copy, results/splits/) | {per_copy / 1e12:.2f} TB | {n_windows:,} x "
          f"{per_copy / n_windows / 1e6:.2f} MB (seqmux.splits.disk_bytes) |")
    print(f"| training | {steps * step_at_batch / 3600:,.1f} hours | {step:.2f} s a step of {args.batch} windows, "
          f"scaled to {batch}, x {steps} steps |")
    print(f"| reading the training data | {steps * batch * read / 3600:,.2f} hours | {read * 1e3:.0f} ms a window x "
          f"{steps * batch:,} |")
    print(f"| training memory | {train_peak:.1f} GB | peak of the training process at batch {args.batch} |")
    if device.type == "cuda":
        print(f"| GPU memory | {gpu_peak:.1f} GB | torch.cuda.max_memory_allocated at batch {args.batch} |")


if __name__ == "__main__":
    main()
