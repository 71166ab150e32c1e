"""Benchmark: exact ISM of this project (fast and naive) against tangermeme's
``saturation_mutagenesis`` (fast=True and fast=False), side by side in one process, on the same
windows, substitutions and threads.

Models (random He-normal weights, eval mode), each at its usual length:

* ``beluga``: DeepSEA Beluga, the published layout (``BelugaFamily``), 2,000 bp;
* ``legacy_beluga``: the same weights in the legacy layout (``LegacyBeluga``: Lambda modules
  with Python lambdas), to check that it takes the fast path at the same speed;
* ``basset``: Basset-like CNN (``BassetLike``), 600 bp;
* ``bpnet``: BPNet-like dilated residual stack with a global-pool head (``BPNetLike``), 1,000 bp.

Every method computes the same numbers: the model's outputs on each single substitution of one
window (a few N's in it), from the logits where the model ends in a sigmoid (``logit_model``:
what the target stage computes). Per method:

* this project's fast ISM: every substitution of the window (``fast_substitution_predictions``,
  its cached plan built beforehand, timed apart as the one-off cost), the fastest of
  ``--rounds`` runs;
* this project's naive ISM: ``--naive-sample`` substitutions (a run of positions in the middle;
  naive cost per mutant does not depend on the position), rounds interleaved with tangermeme's
  fast=False on the same positions, the fastest round of each;
* tangermeme fast=True as a user calls it: ``saturation_mutagenesis(model, X, raw_outputs=True)``
  at its default batch size (32), every substitution, its capture and its own check against
  fast=False included; its rule that skips the fast path for jobs under 30 s is lifted
  (``_FAST_MIN_SECONDS = 0``) so that fast=True is what runs, and a fall-back warning aborts;
* tangermeme fast=True steady state: its captured model (``_FastISM``) built once, then
  ``predict_edits`` on every substitution, the fastest of ``--rounds`` runs at each of
  ``--tangermeme-batches``: the strongest form of that baseline (no one-off costs);
* tangermeme fast=False: ``saturation_mutagenesis(..., fast=False)`` on the same run of
  positions as this project's naive sample.

``legacy_beluga``'s rounds are interleaved with the published layout's (same weights, same
window), and their ratio printed.

``toys``: tangermeme's own toy models at their size (L = 100; defined in ``tests/test_ism_peer.py``,
the ported tests), every substitution of one window, rounds interleaved: this project's library
call ``predict_substitutions(method="fast")`` (the cost model's choice of incremental or naive
ISM included), its incremental path forced (``method="incremental"``), its naive ISM, and
tangermeme's fast=True built once (``predict_edits``, the best of its batch sizes). Each round
runs the methods in another (seeded) random order and times every method right after one untimed
call of its own, so each is measured warm whatever ran before it. 'same window': both keep the window's reference (this
project's plan its activations, ``predict_substitutions`` its output; tangermeme its example's);
'new window': both forget it before each call.

``beluga_steady``: Beluga's fast ISM against tangermeme's fast path built once on the substitutions
of ``--positions`` positions in the middle of one window, rounds interleaved with the GEMM peak:
the Beluga row's ratio, short enough for a loaded machine (with ``--clock thread``).

GEMM peak: the fp32 matrix-multiply throughput of this device at the benchmark's threads
(``torch.mm`` of 2,048 x 2,048 matrices, the fastest of several, measured between the fast ISM
rounds so that both see the same load), and for each model the fraction of it that fast ISM
reaches on the multiply-adds it must do (``Plan.macs_per_mutant``): the physical limit of this
algorithm here is 1.0.

Deviations: each method's float32 outputs against this project's naive ISM in float64, on the
substitutions of the first and last 4 positions and of 12 positions in the middle.

    PYTHONPATH=. python benchmarks/fast_ism.py                    # CUDA when present
    PYTHONPATH=. python benchmarks/fast_ism.py --device cpu --threads 2 --models beluga,basset

tangermeme is an optional benchmark dependency: ``pip install tangermeme==1.6.0`` (without it,
only this project's methods run).
"""

import argparse
import copy
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqmux.architectures import BassetLike, BPNetLike, LegacyBeluga  # noqa: E402
from seqmux.encoding import N_TOKEN, one_hot  # noqa: E402
from seqmux.fast_ism import analysable, chunk_size, fast_substitution_predictions, get_plan  # noqa: E402
from seqmux.ism import logit_model, naive_substitution_predictions  # noqa: E402
from seqmux.models import BELUGA, BelugaFamily  # noqa: E402
from seqmux.runtime import choose_device  # noqa: E402
from seqmux.variants import substitutions  # noqa: E402

LENGTHS = {"beluga": 2000, "legacy_beluga": 2000, "basset": 600, "bpnet": 1000}
TOY_LENGTH = 100


def gemm_peak(device, n=2048, rounds=5):
    """Multiply-adds per second of an fp32 ``n x n`` GEMM on ``device`` (the fastest of ``rounds``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)
    best = min(timed(lambda: torch.mm(a, b, out=c), device)[1] for _ in range(rounds))
    return n ** 3 / best


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter     # --clock thread: this thread's CPU time (a shared machine's waits left out)


def timed(fn, device):
    sync(device)
    t0 = CLOCK()
    out = fn()
    sync(device)
    return out, CLOCK() - t0


@torch.no_grad()
def he_init(model, seed):
    """He-normal weights, small biases, random batch-norm statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * np.sqrt(2.0 / m.weight[0].numel()))
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
        elif isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def build(name, seed):
    if name in ("beluga", "legacy_beluga"):
        model = he_init(BelugaFamily(**BELUGA), seed)
        if name == "legacy_beluga":
            legacy = LegacyBeluga(**BELUGA)
            legacy.load_state_dict(model.state_dict())
            model = legacy.eval()
        return model
    if name == "basset":
        return he_init(BassetLike(), seed)
    if name == "bpnet":
        return he_init(BPNetLike(), seed)
    raise SystemExit(f"unknown model {name!r} (one of {', '.join(LENGTHS)})")


def window(rng, length, n_count=4):
    tokens = rng.integers(0, 4, length).astype(np.uint8)
    tokens[rng.choice(np.arange(1, length - 1), n_count, replace=False)] = N_TOKEN
    return tokens


def tangermeme_runs(head, x, off, alt, device, batches, rounds):
    """tangermeme's fast=True (public call; steady state): outputs at (off, alt) and seconds, or
    ``None`` when tangermeme is not installed."""
    try:
        import tangermeme.saturation_mutagenesis as tsm
        from tangermeme._fastism import _FastISM
    except ImportError:
        return None
    tsm._FAST_MIN_SECONDS = 0.0           # always the fast path (else it runs fast=False for short jobs)
    X = x.unsqueeze(0).cpu()
    res = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, dt = timed(lambda: tsm.saturation_mutagenesis(head, X, raw_outputs=True, fast=True, device=device),
                        device)
    fell_back = [str(w.message) for w in caught if "using fast=False" in str(w.message)]
    y_hat = out.y_hat[0]                                       # [4, L, F]
    res["call"] = (y_hat[alt.cpu(), off.cpu()], dt, fell_back[0] if fell_back else "")
    X8 = tsm._to_int8(X)
    with torch.no_grad():
        fast = _FastISM(head, X8, None, 0, X.shape[-1], device, torch.float32, False)
        _, chars, positions = tsm._single_edits(X8[0], 0, X.shape[-1])
        best = None
        for bs in batches:
            for _ in range(rounds):
                y, dt = timed(lambda: fast.predict_edits(0, chars, positions, bs), device)
                if best is None or dt < best[1]:
                    best = (y, dt, bs)
    y, dt, bs = best
    grid = torch.full((4, X.shape[-1]) + tuple(y.shape[1:]), float("nan"))
    grid[chars, positions] = y.float().cpu()
    res["steady"] = (grid[alt.cpu(), off.cpu()], dt, bs, len(chars))
    return res


def has_tangermeme():
    try:
        import tangermeme  # noqa: F401
    except ImportError:
        print("tangermeme not installed: its columns are left out (pip install -r benchmarks/requirements.txt)")
        return False
    return True


def tangermeme_naive(head, x, span, device):
    """Seconds of tangermeme's fast=False over the positions ``span`` of the window."""
    import tangermeme.saturation_mutagenesis as tsm

    a, b = span
    return timed(lambda: tsm.saturation_mutagenesis(head, x.unsqueeze(0).cpu(), start=a, end=b, raw_outputs=True,
                                                    fast=False, batch_size=64, device=device), device)[1]


def bench(name, args, device, rng, results):
    length = LENGTHS[name]
    model = build(name, args.seed).to(device)
    head = logit_model(model, length) or model
    t0 = time.perf_counter()
    ok, detail = analysable(head, length)
    one_off = time.perf_counter() - t0
    n_par = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n== {name}: L={length}, {n_par:.1f} M parameters")
    print(f"fast ISM plan ({one_off:.2f} s, once per model): {'analysable' if ok else 'NOT analysable'}: {detail}")
    if ok:
        plan = get_plan(head, length)
        chunk = chunk_size(plan, args.chunk, torch.float32, device)
        print(f"multiply-adds per mutant (fast): {plan.macs_per_mutant() / 1e6:.1f} M; chunk {chunk} mutants")
    tokens = window(rng, length)
    x = torch.from_numpy(one_hot(tokens)).to(device)
    offsets, alts = substitutions(tokens)
    off = torch.from_numpy(offsets.astype(np.int64)).to(device)
    alt = torch.from_numpy(alts.astype(np.int64)).to(device)
    m = len(off)
    with torch.no_grad():
        ref = head(x.unsqueeze(0))[0]
        fast_substitution_predictions(head, x, off[:64], alt[:64], ref, args.chunk)       # warm-up
        pair = None
        if name == "legacy_beluga":      # its rounds interleaved with the published layout's, same weights
            published = build("beluga", args.seed).to(device)
            pair = logit_model(published, length) or published
            fast_substitution_predictions(pair, x, off[:64], alt[:64], ref, args.chunk)
        t_fast = t_pair = float("inf")
        peak = 0.0
        for _ in range(args.rounds):     # the fastest of the rounds: a shared machine only slows runs down
            fast, t = timed(lambda: fast_substitution_predictions(head, x, off, alt, ref, args.chunk), device)
            t_fast = min(t_fast, t)
            peak = max(peak, gemm_peak(device, rounds=2))    # interleaved: the same load as the fast rounds
            if pair is not None:
                t_pair = min(t_pair, timed(lambda: fast_substitution_predictions(pair, x, off, alt, ref, args.chunk),
                                           device)[1])
        positions = max(1, args.naive_sample // 3)
        a = length // 2 - positions // 2
        span = (a, a + positions)
        in_span = torch.nonzero((off >= span[0]) & (off < span[1])).flatten()
        naive_substitution_predictions(head, x, off[in_span[:8]], alt[in_span[:8]], args.naive_batch)  # warm-up
        with_tg = not args.no_tangermeme and name != "legacy_beluga" and has_tangermeme()
        t_naive = t_tg_naive = float("inf")
        for _ in range(args.rounds):     # the two naive ISMs interleaved, the fastest round of each
            t_naive = min(t_naive, timed(lambda: naive_substitution_predictions(
                head, x, off[in_span], alt[in_span], args.naive_batch), device)[1])
            if with_tg:
                t_tg_naive = min(t_tg_naive, tangermeme_naive(head, x, span, device))
        # float64 reference on the substitutions of both ends and of 12 positions in the span
        check_pos = np.r_[np.arange(4), np.arange(length - 4, length), np.arange(span[0], span[0] + 12)]
        check = torch.from_numpy(np.flatnonzero(np.isin(offsets, check_pos))).to(device)
        head64 = copy.deepcopy(head).double()
        y64 = naive_substitution_predictions(head64, x.double(), off[check], alt[check], args.naive_batch)
        del head64
        naive32 = naive_substitution_predictions(head, x, off[check], alt[check], args.naive_batch)
    row = dict(model=name, L=length, fast=t_fast / m, naive=t_naive / len(in_span), m=m,
               peak=plan.macs_per_mutant() * m / t_fast / peak if ok else float("nan"),
               dev_fast=(fast[check].double() - y64).abs().max().item(),
               dev_naive=(naive32.double() - y64).abs().max().item(), scale=y64.abs().max().item())
    print(f"this project fast : {row['fast'] * 1e3:8.3f} ms per mutant ({m} substitutions, {t_fast:.1f} s); "
          f"{row['peak']:.1%} of the GEMM peak on its multiply-adds")
    if pair is not None:
        row["published"] = t_pair / m
        print(f"  the published layout, same weights, rounds interleaved: {row['published'] * 1e3:8.3f} ms per mutant")
    print(f"this project naive: {row['naive'] * 1e3:8.3f} ms per mutant ({len(in_span)} substitutions, "
          f"{t_naive:.1f} s)")
    if with_tg:
        tg = tangermeme_runs(head, x, off, alt, device, args.tangermeme_batches, args.rounds)
        if tg is not None:
            y, dt, fell_back = tg["call"]
            row["tg_call"] = dt / m
            if fell_back:
                print(f"tangermeme's call ran fast=False: {fell_back}")
                row["tg_fell_back"] = True
            row["dev_tg_fast"] = (y[check.cpu()].double() - y64.cpu()).abs().max().item()
            y, dt, bs, n = tg["steady"]
            row["tg_steady"], row["tg_batch"] = dt / n, bs
            row["tg_naive"] = t_tg_naive / len(in_span)
            print(f"tangermeme fast=True, call (batch 32): {row['tg_call'] * 1e3:8.3f} ms per mutant "
                  f"({m}, {row['tg_call'] * m:.1f} s, capture and check included)")
            print(f"tangermeme fast=True, steady (batch {bs}): {row['tg_steady'] * 1e3:8.3f} ms per mutant")
            print(f"tangermeme fast=False (batch 64):      {row['tg_naive'] * 1e3:8.3f} ms per mutant "
                  f"({len(in_span)})")
    print(f"max |deviation| from float64 naive ({len(check)} substitutions; largest |output| {row['scale']:.2f}): "
          f"fast32 {row['dev_fast']:.2e}, naive32 {row['dev_naive']:.2e}"
          + (f", tangermeme fast32 {row['dev_tg_fast']:.2e}" if "dev_tg_fast" in row else ""))
    results.append(row)


def bench_toys(args, device, rng):
    """tangermeme's toy models (L = 100): rows of ms per window, rounds interleaved."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_ism_peer import TOYS, toy

    from seqmux.ism import _REFERENCES, bind, predict_substitutions

    rows = []
    for name in TOYS:
        model, output, fast = toy(name, args.seed, torch.float32)
        if not fast:
            continue
        model = model.to(device)
        net = bind(model, (), {}, output)
        tokens = window(rng, TOY_LENGTH, n_count=1)
        x = torch.from_numpy(one_hot(tokens)).to(device)
        offsets, alts = substitutions(tokens)
        off = torch.from_numpy(offsets.astype(np.int64)).to(device)
        alt = torch.from_numpy(alts.astype(np.int64)).to(device)
        times = {k: float("inf") for k in ("fast", "incremental", "naive", "tangermeme", "fast new", "tangermeme new")}

        def new_window():               # forget the window's reference activations (a new window each call)
            plan = get_plan(net, TOY_LENGTH)
            if not isinstance(plan, str):
                plan.window = None
            _REFERENCES.pop(model, None)
            if tg is not None:
                tg._example = None

        calls = {           # the new-window calls first, then (untimed) both caches filled again
            "fast new": lambda: (new_window(), predict_substitutions(model, x, off, alt, "fast", args.chunk,
                                                                     output=output)),
        }
        same = {
            "fast": lambda: predict_substitutions(model, x, off, alt, "fast", args.chunk, output=output),
            "incremental": lambda: predict_substitutions(model, x, off, alt, "incremental", args.chunk, output=output),
            "naive": lambda: predict_substitutions(model, x, off, alt, "naive", args.naive_batch, output=output),
        }
        tg = None
        if not args.no_tangermeme and has_tangermeme():
            import tangermeme.saturation_mutagenesis as tsm
            from tangermeme._fastism import _FastISM

            X8 = tsm._to_int8(x.unsqueeze(0).cpu())
            with torch.no_grad():
                tg = _FastISM(net, X8, None, 0, TOY_LENGTH, device, torch.float32, False)
            _, chars, positions = tsm._single_edits(X8[0], 0, TOY_LENGTH)
            for bs in args.tangermeme_batches:
                calls[f"tangermeme new {bs}"] = (lambda b: lambda: (new_window(), tg.predict_edits(0, chars, positions,
                                                                                                   b)))(bs)
                same[f"tangermeme {bs}"] = (lambda b: lambda: tg.predict_edits(0, chars, positions, b))(bs)
        calls.update(same)
        keys = list(calls)
        with torch.no_grad():
            for fn in calls.values():
                fn()                                         # plans, captures, warm-up
            order = np.random.default_rng(args.seed)
            for _ in range(max(5 * args.rounds, 15)):    # tiny runs: many rounds, the fastest counts
                # the methods in another (seeded) random order each round, every method timed right
                # after one untimed call of its own: each is measured warm, whatever ran before it
                # (the first call after another method's ran 20 to 35% slower on this CPU)
                for key in order.permutation(keys):
                    calls[key]()
                    t = timed(calls[key], device)[1]
                    key = key.rsplit(" ", 1)[0] if key.startswith("tangermeme") else key
                    times[key] = min(times[key], t)
        from seqmux.fast_ism import _REPORTED

        plan_choice = "naive" if _REPORTED.get(net) == "is faster with naive ISM" else "incremental"
        rows.append(dict(model=name, m=len(off), choice=plan_choice, **times))
        print(f"{name}: fast (library, ran {plan_choice}) {times['fast'] * 1e3:.2f} ms, "
              f"incremental {times['incremental'] * 1e3:.2f} ms, "
              f"naive {times['naive'] * 1e3:.2f} ms, tangermeme fast=True built {times['tangermeme'] * 1e3:.2f} ms "
              f"({len(off)} substitutions)")
    print(f"\ntangermeme's toy models on {device}, L = {TOY_LENGTH} (ms per window; ratios: tangermeme's built "
          "fast path over this project's; 'same window': both reuse the window's reference activations between "
          "calls, 'new window': both recompute them each call)")
    print("| model | fast (library call) | it ran | incremental | naive | tangermeme fast=True built "
          "| vs tangermeme | fast vs own naive | fast, new window | tangermeme, new window | vs tangermeme, new |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fast'] * 1e3:.2f} | {r['choice']} | {r['incremental'] * 1e3:.2f} "
              f"| {r['naive'] * 1e3:.2f} "
              f"| {r['tangermeme'] * 1e3:.2f} | {r['tangermeme'] / r['fast']:.2f}x | {r['naive'] / r['fast']:.2f}x "
              f"| {r['fast new'] * 1e3:.2f} | {r['tangermeme new'] * 1e3:.2f} "
              f"| {r['tangermeme new'] / r['fast new']:.2f}x |")


def bench_steady(args, device, rng):
    """``beluga_steady``: Beluga's fast ISM against tangermeme's fast path built once, on the
    substitutions of ``--positions`` positions in the middle of one window (per-mutant cost does
    not depend on the position away from the ends), rounds interleaved with the GEMM peak; float32
    deviations against float64 naive ISM on 12 of them. Short enough for a loaded machine."""
    import tangermeme.saturation_mutagenesis as tsm
    from tangermeme._fastism import _FastISM

    length = LENGTHS["beluga"]
    model = build("beluga", args.seed).to(device)
    head = logit_model(model, length) or model
    tokens = window(rng, length)
    x = torch.from_numpy(one_hot(tokens)).to(device)
    offsets, alts = substitutions(tokens)
    a = length // 2 - args.positions // 2
    sel = np.flatnonzero((offsets >= a) & (offsets < a + args.positions))
    off = torch.from_numpy(offsets[sel].astype(np.int64)).to(device)
    alt = torch.from_numpy(alts[sel].astype(np.int64)).to(device)
    m = len(sel)
    with torch.no_grad():
        ref = head(x[None])[0]
        fast_substitution_predictions(head, x, off[:16], alt[:16], ref, args.chunk)         # plan, warm-up
        tg = _FastISM(head, tsm._to_int8(x[None].cpu()), None, 0, length, device, torch.float32, False)
        tg.predict_edits(0, alt[:16].cpu(), off[:16].cpu(), 512)
        t_fast = t_tg = float("inf")
        peak = 0.0
        for _ in range(args.rounds):
            fast, t = timed(lambda: fast_substitution_predictions(head, x, off, alt, ref, args.chunk), device)
            t_fast = min(t_fast, t)
            peak = max(peak, gemm_peak(device, rounds=2))
            y_tg, t = timed(lambda: tg.predict_edits(0, alt.cpu(), off.cpu(), 512), device)
            t_tg = min(t_tg, t)
        check = torch.arange(0, m, max(1, m // 12), device=device)[:12]
        y64 = naive_substitution_predictions(copy.deepcopy(head).double(), x.double(), off[check], alt[check], 64)
        naive32 = naive_substitution_predictions(head, x, off[check], alt[check], 64)
    macs = get_plan(head, length).macs_per_mutant()
    print(f"\n== beluga, steady state: {m} substitutions of positions {a}..{a + args.positions - 1}")
    print(f"this project fast: {t_fast / m * 1e3:.3f} ms per mutant; tangermeme fast=True built once (batch 512): "
          f"{t_tg / m * 1e3:.3f} ms per mutant: {t_tg / t_fast:.2f}x; GEMM peak {peak / 1e9:.1f} G multiply-adds/s, "
          f"fast ISM reaches {macs * m / t_fast / peak:.1%} of it")
    print(f"max |deviation| from float64 naive ({len(check)} substitutions; largest |output| "
          f"{y64.abs().max():.2f}): fast32 {(fast[check].double() - y64).abs().max():.2e}, naive32 "
          f"{(naive32.double() - y64).abs().max():.2e}, tangermeme fast32 "
          f"{(y_tg[check.cpu()].double() - y64.cpu()).abs().max():.2e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="toys,beluga,legacy_beluga,basset,bpnet",
                    help="comma-separated; toys: tangermeme's toy models; beluga_steady: Beluga against "
                    "tangermeme's built fast path on --positions positions")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--naive-sample", type=int, default=300, help="naive ISM substitutions per model and round")
    ap.add_argument("--chunk", type=int, default=512, help="fast ISM chunk (batch_size; see chunk_size)")
    ap.add_argument("--naive-batch", type=int, default=64)
    ap.add_argument("--tangermeme-batches", default="128,512", help="batch sizes of its steady-state runs")
    ap.add_argument("--no-tangermeme", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each fast method (this project's; tangermeme's steady state): the fastest counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--positions", type=int, default=200, help="beluga_steady: positions of the window it mutates")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall time, or this thread's CPU time (with --threads 1 on a CPU shared with other jobs)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter
    args.tangermeme_batches = [int(b) for b in args.tangermeme_batches.split(",")]
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = choose_device(args.device, "benchmarks/fast_ism.py", "--device")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    try:
        import tangermeme
        tg_version = tangermeme.__version__
    except ImportError:
        tg_version = "not installed"
    print(f"device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"tangermeme {tg_version}; load average {os.getloadavg()[0]:.2f}; clock {args.clock}")
    rng = np.random.default_rng(args.seed)
    results = []
    t0 = time.perf_counter()
    args.peak = gemm_peak(device)
    print(f"fp32 GEMM peak: {args.peak / 1e9:.1f} G multiply-adds/s (2048 x 2048 torch.mm, "
          f"{torch.get_num_threads()} threads)")
    for model in args.models.split(","):
        if model.strip() == "toys":
            bench_toys(args, device, rng)
        elif model.strip() == "beluga_steady":
            bench_steady(args, device, rng)
        else:
            bench(model.strip(), args, device, rng, results)
    print(f"\nsummary on {device} (ms per mutant; ratios are the other method's time over this project's fast)")
    print("| model | L | fast | naive | tangermeme fast=True call | steady | fast=False | vs call | vs steady "
          "| naive / tangermeme naive | dev fast32 | dev naive32 | dev tangermeme fast32 | GEMM peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by = {r["model"]: r for r in results}
    for r in results:
        tg = "tg_call" in r
        cells = [r["model"], r["L"], f"{r['fast'] * 1e3:.3f}", f"{r['naive'] * 1e3:.2f}",
                 (f"{r['tg_call'] * 1e3:.3f}" + (" (ran fast=False)" if r.get("tg_fell_back") else "")) if tg else "",
                 f"{r['tg_steady'] * 1e3:.3f}" if tg else "",
                 f"{r['tg_naive'] * 1e3:.2f}" if tg else "",
                 f"{r['tg_call'] / r['fast']:.2f}x" if tg else "", f"{r['tg_steady'] / r['fast']:.2f}x" if tg else "",
                 f"{r['naive'] / r['tg_naive']:.2f}" if tg else "", f"{r['dev_fast']:.1e}", f"{r['dev_naive']:.1e}",
                 f"{r['dev_tg_fast']:.1e}" if tg else "", f"{r['peak']:.0%}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if "legacy_beluga" in by:
        r = by["legacy_beluga"]
        print(f"legacy-layout Beluga fast ISM / published layout (interleaved rounds): "
              f"{r['fast'] / r['published']:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
