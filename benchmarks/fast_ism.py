"""Benchmark: fast (incremental, exact) ISM against naive ISM, on full-size Beluga and the demo model.

Full-size Beluga (the published layout, random He-normal weights) on ``--windows`` random 2,000 bp
windows with a few N's. Fast ISM runs every substitution of each window (6,000, N's give 4) in one
``substitution_effects`` call (what the target stage runs: log-fold changes from the logits), its
reference pass included, as a user sees it; naive ISM, whose cost per mutant is flat, runs a random sample of
``--naive-sample`` of the same substitutions per window. The two are interleaved
(``--rounds`` fast calls per window, the naive sample split between them) so that a machine shared
with other work slows both alike. The one-off analysis of a model (its plan) is timed apart.
Then the same for the demo model (400 bp, JASPAR filters), where naive ISM runs every substitution.

Prints the device, the time per mutant of each, their ratio, and the largest |log-fold change|
deviation between them on the shared substitutions; and, for scale, how far naive ISM in float32
is from naive ISM in float64 on a few of them (the float32 noise floor).

    PYTHONPATH=. python benchmarks/fast_ism.py                      # CUDA when present
    PYTHONPATH=. python benchmarks/fast_ism.py --device cpu --windows 2 --naive-sample 1000
"""

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqmux.encoding import N_TOKEN, one_hot  # noqa: E402
from seqmux.fast_ism import analysable, get_plan  # noqa: E402
from seqmux.ism import substitution_effects  # noqa: E402
from seqmux.runtime import choose_device  # noqa: E402
from seqmux.models import BELUGA, BelugaFamily, build_demo_model  # noqa: E402
from seqmux.variants import substitutions  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_tokens(rng, length, n_fraction):
    tokens = rng.integers(0, 4, length).astype(np.uint8)
    n = max(1, int(round(n_fraction * length)))
    tokens[rng.choice(length, n, replace=False)] = N_TOKEN
    return tokens


@torch.no_grad()
def he_init(model, seed):
    """He-normal weights (std sqrt(2 / fan_in)) and small biases (std 0.01) in every conv and
    dense layer: signals keep their scale through the layers, log-fold changes are of order 0.1,
    reference logits within about +-5."""
    gen = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * np.sqrt(2.0 / fan_in))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.01)
    return model.eval()


def bench_model(name, model, length, args, device, rng, f64_sample):
    model = model.to(device).eval()
    ok, detail = analysable(model, length)
    print(f"\n== {name}: L={length}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    print(f"fast ISM plan: {'analysable' if ok else 'NOT analysable'}: {detail}")
    if ok:
        plan = get_plan(model, length)
        print(f"multiply-adds per mutant: fast {plan.macs_per_mutant() / 1e6:.1f} M")
    # one-off analysis, timed apart (a fresh model object of the same weights)
    fresh = type(model).__new__(type(model))
    fresh.__dict__ = model.__dict__.copy()
    t0 = time.perf_counter()
    get_plan(fresh, length)
    sync(device)
    print(f"one-off plan (trace + position-major dense weights): {time.perf_counter() - t0:.2f} s per model")
    del fresh
    # warm-up (allocator, oneDNN primitives) on a throw-away window
    tok = random_tokens(rng, length, args.n_fraction)
    x = torch.from_numpy(one_hot(tok)).to(device)
    off, alt = (torch.from_numpy(a.astype(np.int64)).to(device) for a in substitutions(tok))
    substitution_effects(model, x, off[:args.fast_batch], alt[:args.fast_batch], "logfold", "fast", args.fast_batch)
    substitution_effects(model, x, off[:args.naive_batch], alt[:args.naive_batch], "logfold", "naive",
                         args.naive_batch)

    fast_time = naive_time = 0.0
    fast_count = naive_count = 0
    worst, scale, floor = 0.0, 0.0, 0.0
    for w in range(args.windows):
        tok = random_tokens(rng, length, args.n_fraction)
        x = torch.from_numpy(one_hot(tok)).to(device)
        offsets, alts = substitutions(tok)
        off = torch.from_numpy(offsets.astype(np.int64)).to(device)
        alt = torch.from_numpy(alts.astype(np.int64)).to(device)
        m = len(offsets)
        sample = np.sort(rng.choice(m, min(args.naive_sample, m), replace=False))
        parts = np.array_split(sample, args.rounds)
        naive_parts = []
        for r in range(args.rounds):
            sync(device)
            t0 = time.perf_counter()
            ref_f, lf_fast = substitution_effects(model, x, off, alt, "logfold", "fast", args.fast_batch)
            sync(device)
            fast_time += time.perf_counter() - t0
            fast_count += m
            idx = torch.from_numpy(parts[r]).to(device)
            t0 = time.perf_counter()
            ref_n, lf_n = substitution_effects(model, x, off[idx], alt[idx], "logfold", "naive", args.naive_batch)
            sync(device)
            naive_time += time.perf_counter() - t0
            naive_count += len(idx)
            naive_parts.append(lf_n)
        idx = torch.from_numpy(sample).to(device)
        lf_naive, lf_fast = torch.cat(naive_parts), lf_fast[idx]
        dev = (lf_naive - lf_fast).abs().max().item()
        worst, scale = max(worst, dev), max(scale, lf_naive.abs().max().item())
        top = torch.logit(ref_f.double()).abs().max().item()
        print(f"window {w}: {m} substitutions ({int((tok == N_TOKEN).sum())} N), fast {args.rounds} x {m}, "
              f"naive {len(sample)}; max |log-fold deviation| {dev:.2e} (largest reference |logit| {top:.1f})")
        if f64_sample:
            # float32 noise floor: both methods against naive ISM in float64 on a few substitutions
            pick = np.sort(rng.choice(len(sample), min(f64_sample, len(sample)), replace=False))
            sub = torch.from_numpy(sample[pick]).to(device)
            m64 = copy.deepcopy(model).double()
            _, lf64 = substitution_effects(m64, x.double(), off[sub], alt[sub], "logfold", "naive", args.naive_batch)
            pick_t = torch.from_numpy(pick).to(device)
            floor_naive = (lf_naive[pick_t].double() - lf64).abs().max().item()
            floor_fast = (lf_fast[pick_t].double() - lf64).abs().max().item()
            floor = max(floor, floor_naive)
            print(f"          float64 check on {len(pick)}: |naive32 - naive64| {floor_naive:.2e}, "
                  f"|fast32 - naive64| {floor_fast:.2e}")
            del m64
    fast_pm, naive_pm = fast_time / fast_count, naive_time / naive_count
    print(f"{name}: fast ISM  {fast_pm * 1e3:9.3f} ms per mutant ({fast_count} mutants, {fast_time:.1f} s)")
    print(f"{name}: naive ISM {naive_pm * 1e3:9.3f} ms per mutant ({naive_count} mutants, {naive_time:.1f} s)")
    print(f"{name}: speed-up {naive_pm / fast_pm:.1f}x; max |log-fold deviation| {worst:.2e} "
          f"(largest |log-fold| {scale:.2f}"
          + (f"; float32 noise floor, naive vs float64: {floor:.2e})" if f64_sample else ")"))
    return naive_pm / fast_pm, worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=2, help="windows per model (default 2)")
    ap.add_argument("--naive-sample", type=int, default=1000,
                    help="substitutions per window that naive ISM runs (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="fast calls per window interleaved with naive (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--fast-batch", type=int, default=1024, help="mutants per fast ISM chunk (default 1024)")
    ap.add_argument("--naive-batch", type=int, default=64, help="mutants per naive forward pass (default 64)")
    ap.add_argument("--n-fraction", type=float, default=0.005, help="fraction of N's in a window (default 0.005)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--models", default="beluga,demo", help="comma list of beluga, demo")
    ap.add_argument("--f64-sample", type=int, default=None,
                    help="substitutions per window also run in float64, for the float32 noise floor "
                         "(default 32 for beluga, 1000 for demo; 0: skip)")
    args = ap.parse_args(argv)

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device, "command line", "--device")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({where}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average {os.getloadavg()[0]:.2f}")
    print(f"fast chunk {args.fast_batch} mutants, naive batch {args.naive_batch}, float32, TF32 off")
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    results = {}
    for name in args.models.split(","):
        if name == "beluga":
            model = he_init(BelugaFamily(**BELUGA).eval(), args.seed)
            results[name] = bench_model("beluga (full size)", model, BELUGA["length"], args, device, rng,
                                        32 if args.f64_sample is None else args.f64_sample)
        elif name == "demo":
            from seqmux.motifs import choose_motifs

            motifs = choose_motifs(12, np.random.default_rng(args.seed))
            calib = one_hot(np.stack([random_tokens(rng, 400, 0) for _ in range(64)]))
            model = build_demo_model(motifs, 400, 16, args.seed, calibration_sequences=calib, downstream="structured")
            results[name] = bench_model("demo", model, 400, args, device, rng,
                                        1000 if args.f64_sample is None else args.f64_sample)
        else:
            ap.error(f"unknown model {name!r}")
    print(f"\nsummary on {device}: " + "; ".join(f"{k} {r:.1f}x (max dev {d:.1e})" for k, (r, d) in results.items())
          + f"; total {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
