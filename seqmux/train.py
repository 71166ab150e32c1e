"""Training the Multiplexer on the split files: Adam + MSE, validation, early stopping, resuming.

- Data: ``SplitDataset`` over the memory-mapped train / validation files; batches come from
  ``StepBatches``, whose order is a function of ``(seed, step)`` only (one seeded permutation per
  epoch), so a resumed run sees exactly the batches an uninterrupted run would have seen.
- Every ``validate_every`` steps (and at the last step) the validation loss (MSE over every entry)
  is computed; the lowest one gives the best weights. After ``patience`` validations without
  improvement training stops early (0: never).
- Checkpoints live in ``checkpoint_dir`` (not a declared output, so Snakemake does not delete them
  when the job fails): ``last.pt`` (a ``seqmux.checkpoint`` of kind ``multiplexer_resume``:
  model, optimizer, scheduler, scaler, RNG states; as metadata the progress (step, best validation
  loss, early-stopping counter) and a hash of everything that defines the run), ``best.pt`` (best
  weights, kind ``multiplexer``) and ``log.csv`` (one row per step). A rerun with the same hash
  resumes from ``last.pt``; a different hash (new config or new splits) or an unreadable file
  starts over.
- Random draws: the network's start and each epoch's batch order come from ``seqmux.seeding``
  (track ``multiplexer``, streams ``init`` and ``batches:<epoch>``).
  SIGTERM / Ctrl-C write a checkpoint before exiting.
- Device: ``auto`` takes the CUDA device with the most free memory (Snakemake does not set
  ``CUDA_VISIBLE_DEVICES`` on a local run), else the CPU. Mixed precision (bfloat16, or float16
  with loss scaling where bfloat16 is missing) only on CUDA.
"""

import csv
import hashlib
import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from . import seeding
from .errors import InputError
from .multiplexer import KIND, TRACK, build_multiplexer, n_parameters, save_multiplexer
from .outputs import atomic_path
from .runtime import choose_device, progress
from .splits import SplitDataset, check_split, target_rms

log = logging.getLogger(__name__)

CSV_FIELDS = ["step", "epoch", "train_loss", "validation_loss", "lr", "elapsed_s"]
KILL_ENV = "SEQMUX_KILL_AFTER_STEP"  # tests: SIGKILL the process right after this step
RESUME_KIND = "multiplexer_resume"  # the checkpoint kind of ``last.pt`` (model, optimizer, progress)


def cpu_has_native_bf16():
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere
    bfloat16 is emulated and slower than float32."""
    try:  # torch's own reading of the CPU's flags (a private API: absent, the answer is no)
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def autocast_for(device, enabled):
    """``(context, scaler)`` for mixed precision: on CUDA bfloat16 (float16 with a gradient
    scaler where the GPU has no bfloat16); on a CPU with native bfloat16 (``cpu_has_native_bf16``)
    bfloat16 autocast (the demo Multiplexer's step: 1.4x faster); plain float32 elsewhere."""
    if not enabled:
        return nullcontext, None
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None
        return nullcontext, None
    if device.type != "cuda":
        return nullcontext, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


class StepBatches:
    """Batch sampler: the index lists of steps ``start .. end - 1``. Epoch ``e`` is a permutation
    drawn from the ``seqmux.seeding`` stream ``(seed, "multiplexer", "batches:e")``; the last
    incomplete batch of an epoch is dropped (unless the split is smaller than one batch)."""

    def __init__(self, n, batch_size, seed, start, end):
        self.n, self.seed, self.start, self.end = n, int(seed), int(start), int(end)
        self.batch_size = min(int(batch_size), n)
        self.per_epoch = max(n // self.batch_size, 1)

    def permutation(self, epoch):
        gen = seeding.torch_generator(self.seed, TRACK, f"batches:{epoch}")
        return torch.randperm(self.n, generator=gen)

    def __len__(self):
        return max(self.end - self.start, 0)

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.end):
            e, j = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield perm[j * self.batch_size:(j + 1) * self.batch_size].tolist()


def split_fingerprint(table, info):
    """A short hash of a split's contents (metadata, window ids, first and last targets)."""
    h = hashlib.sha256(json.dumps(info, sort_keys=True).encode())
    h.update(str(table.num_rows).encode())
    ids = table.column("window_id").to_numpy()
    h.update(np.ascontiguousarray(ids).tobytes())
    if table.num_rows:
        ds = SplitDataset(table)
        h.update(ds.target(0).tobytes())
        h.update(ds.target(len(ds) - 1).tobytes())
    return h.hexdigest()[:16]


def run_hash(parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_splits(train_path, validation_path):
    """Train and validation tables with their info; InputError on a missing or empty train split
    and on windows of different length / different outputs."""
    train, tinfo = check_split(train_path, "train split")
    val, vinfo = check_split(validation_path, "validation split")
    if train.num_rows == 0:
        raise InputError(train_path, "rows", 0, "the train split is empty: no window to train on")
    for key in ("length", "n_outputs", "mode"):
        if vinfo[key] != tinfo[key]:
            raise InputError(validation_path, key, vinfo[key], f"the train split {train_path} has {tinfo[key]}")
    return train, tinfo, val, vinfo


def make_scheduler(opt, kind, steps, lr):
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    raise InputError("config", "multiplexer.train.lr_schedule", kind, "expected constant, onecycle or cosine")


class ExponentialAverage:
    """An exponential moving average of a model's weights and buffers (BatchNorm statistics):
    after each optimizer step ``avg <- avg + (1 - d) (w - avg)`` with ``d = min(decay, (1 + n) /
    (10 + n))`` at update ``n`` (a short memory at the start, when the weights move fast). Its
    ``model`` (a copy, in eval mode) is the one validated and written: small-batch steps are noisy,
    their average is not."""

    def __init__(self, model, decay):
        import copy

        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        # averaged (weights, BatchNorm statistics) and copied (BatchNorm's step counters), sorted once
        self.averaged = ([a for a, _ in pairs if a.is_floating_point()], [b for a, b in pairs if a.is_floating_point()])
        self.copied = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(*self.averaged, 1 - d)
        for a, b in self.copied:
            a.copy_(b)

    def state_dict(self):
        return dict(model=self.model.state_dict(), updates=self.updates)

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def asinh(u):
    """``torch.asinh`` from vectorised operations (``log1p``, ``hypot``): the same values to float
    rounding, in a sixth of ``torch.asinh``'s time forward and two thirds of it forward and backward
    on a CPU (one thread, a demo batch). Finite for ``|u|`` below 2^127 (``2 |u|`` must be a float32)."""
    a = u.abs()
    return torch.copysign(torch.log1p(a + a * (a / (1 + torch.hypot(a, torch.ones_like(a))))), u)


def training_loss(pred, exact, loss_weight=0.0, rms=None, loss_asinh=0.0):
    """Weighted mean of ``(pred - exact)^2``, ``sum(w err) / sum(w)`` with ``w = 1 + loss_weight
    |exact| / rms`` (plain MSE when ``loss_weight`` is 0): the large effects count more, the
    loss keeps the plain MSE's scale (so the same learning rate). With ``loss_asinh`` (``k``, 0:
    off) the errors are measured on ``c asinh(effect / c)``, ``c = k rms``: the effect itself below
    ``c``, about ``c log(2 |effect| / c)`` with its sign above, so that an effect of 10 ``c`` missed by
    10% costs about twice what one of ``c`` missed by 10% costs, not 100 times it."""
    if loss_asinh:
        c = float(loss_asinh) * float(rms)
        pred, exact_c = c * asinh(pred / c), c * asinh(exact / c)
    else:
        exact_c = exact
    err = (pred - exact_c) ** 2
    if not loss_weight:
        return err.mean()
    w = 1 + (loss_weight / max(float(rms), 1e-30)) * exact.abs()
    return (w * err).sum() / w.sum()


@torch.no_grad()
def validation_loss(model, loader, device, autocast):
    """Mean squared error over every entry of the validation split (eval mode)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            pred = model(x)
        total += float(((pred.float() - y) ** 2).sum())
        count += y.numel()
    model.train()
    return total / max(count, 1)


def _read_csv(path, upto):
    if not Path(path).is_file():
        return []
    with open(path) as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto]


def _write_csv(path, rows):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


class _Stop:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and exits."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_multiplexer(train_path, validation_path, model_out, last_out, log_out, plot_out, checkpoint_dir,
                      preset="demo", sizes=None, mask_reference=True, lr=1e-3, batch_size=16, steps=1000,
                      validate_every=100, patience=5, lr_schedule="constant", device="auto", amp=True,
                      num_workers=0, seed=1, scale_targets=True, loss_weight=0.0, ema=0.0, loss_asinh=0.0):
    """Stage: train a Multiplexer, write the best weights (``model_out``), the last weights
    (``last_out``), the per-step CSV log (``log_out``) and the loss-curve plot (``plot_out``).

    Resumes from ``checkpoint_dir/last.pt`` when it belongs to the same run (same hash of config
    and splits). ``scale_targets``: the model's ``output_scale`` is the RMS of the training targets
    (``seqmux.splits.target_rms``), else 1. ``loss_weight`` (``a``, 0: the published plain MSE):
    the loss is the mean squared error weighted by ``1 + a |exact| / rms`` (``rms``: the RMS
    of the training targets, see ``training_loss``), so that the few large effects are not
    drowned by the many near-zero ones; ``loss_asinh`` (``k``, 0: off) takes those errors on
    ``asinh(effect / (k rms))`` (``training_loss``); the validation loss stays the plain MSE. ``ema`` (a decay,
    0: off, the published recipe): validation, the best and the last weights are those of an
    exponential moving average of the weights (``ExponentialAverage``). Returns a dict of run facts.
    """
    from .plots import plot_loss_curve

    train, tinfo, val, vinfo = load_splits(train_path, validation_path)
    length, n_out = tinfo["length"], tinfo["n_outputs"]
    sizes = dict(sizes or {})
    hparams = dict(preset=preset, sizes=sizes, mask_reference=mask_reference, lr=lr, batch_size=batch_size,
                   steps=steps, validate_every=validate_every, patience=patience, lr_schedule=lr_schedule,
                   seed=seed, amp=amp, scale_targets=scale_targets)
    if loss_weight:  # absent when 0, so that a run of the published recipe keeps its checkpoint hash
        hparams["loss_weight"] = loss_weight
    if ema:  # likewise
        hparams["ema"] = ema
    if loss_asinh:  # likewise
        hparams["loss_asinh"] = loss_asinh
    key = run_hash(dict(hparams, train=split_fingerprint(train, tinfo), validation=split_fingerprint(val, vinfo)))
    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    last_ck, best_ck, csv_ck = ckdir / "last.pt", ckdir / "best.pt", ckdir / "log.csv"

    dev = choose_device(device, "config", "multiplexer.train.device")
    scale, rms = 1.0, None
    if scale_targets or loss_weight or loss_asinh:
        rms = target_rms(train)
        log.info("target RMS on the training split: %.6g", rms)
    if scale_targets:
        scale = rms
    model = build_multiplexer(preset, length, n_out, sizes, mask_reference, scale, seed=seed).to(dev)
    average = ExponentialAverage(model, ema) if ema else None
    kept = average.model if average else model  # the weights validated and written
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = make_scheduler(opt, lr_schedule, steps, lr)
    autocast, scaler = autocast_for(dev, amp)
    state = dict(step=0, best_val=math.inf, best_step=0, bad=0, done=False, elapsed=0.0)

    resumed = None
    if last_ck.is_file():
        try:
            ck, meta = ckpt.load(last_ck, RESUME_KIND, field="training checkpoint")
        except InputError as err:  # a file of the previous format, or damaged: not resumable
            log.info("checkpoint %s cannot be resumed (%s): starting over", last_ck, err.problem)
            ck, meta = {}, {}
        if meta.get("hash") == key:
            model.load_state_dict(ck["model"])
            if average is not None:
                average.load_state_dict(ck["average"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            torch.set_rng_state(ck["rng"]["torch"])
            if dev.type == "cuda" and ck["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ck["rng"]["cuda"], dev)
            state.update(meta["progress"])
            resumed = state["step"]
            log.info("resuming from checkpoint %s at step %d (best validation loss %.6g at step %d)",
                     last_ck, state["step"], state["best_val"], state["best_step"])
        elif meta:
            log.info("checkpoint %s belongs to another run (hash %s, this run %s): starting over",
                     last_ck, meta.get("hash"), key)
    if resumed is None:
        for p in (last_ck, best_ck, csv_ck):
            p.unlink(missing_ok=True)
    rows = _read_csv(csv_ck, state["step"])

    train_ds, val_ds = SplitDataset(train), SplitDataset(val)
    log.info("multiplexer %s: %d parameters, %d train / %d validation windows of %d bp, %d outputs, on %s "
             "(%s)", preset, n_parameters(model), len(train_ds), len(val_ds), length, n_out, dev,
             "mixed precision" if autocast is not nullcontext else "float32")
    loader_args = dict(num_workers=num_workers, pin_memory=dev.type == "cuda")
    sampler = StepBatches(len(train_ds), batch_size, seed, state["step"], steps)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler,
                                         generator=seeding.torch_generator(seed, TRACK, "loader"), **loader_args)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size, shuffle=False, **loader_args)

    def checkpoint():
        _write_csv(csv_ck, rows)
        ckpt.save(last_ck, RESUME_KIND, dict(
            model=model, average=average.state_dict() if average else None, optimizer=opt.state_dict(),
            scheduler=sched.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            rng=dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None)),
            hash=key, hparams=hparams, progress=dict(state))

    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    started = time.time() - state["elapsed"]
    model.train()
    bar = progress(total=steps, initial=state["step"], desc="train multiplexer")
    with _Stop() as stop:
        for idx in (loader if not state["done"] else []):
            x, y = idx
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast():
                pred = model(x)
            loss = training_loss(pred.float(), y, loss_weight, rms, loss_asinh)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite training loss at step {state['step'] + 1}")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if average is not None:
                average.update()
            lr_now = opt.param_groups[0]["lr"]
            sched.step()
            state["step"] += 1
            step = state["step"]
            state["elapsed"] = time.time() - started
            row = dict(step=step, epoch=f"{step / sampler.per_epoch:.3f}", train_loss=f"{loss_value:.6g}",
                       validation_loss="", lr=f"{lr_now:.6g}", elapsed_s=f"{state['elapsed']:.2f}")
            rows.append(row)
            bar.update(1)
            stopping = False
            if step % validate_every == 0 or step == steps:
                if len(val_ds):
                    vloss = validation_loss(kept, val_loader, dev, autocast)
                    row["validation_loss"] = f"{vloss:.6g}"
                    if vloss < state["best_val"]:
                        state.update(best_val=vloss, best_step=step, bad=0)
                        ckpt.save(best_ck, KIND, kept, step=step, validation_loss=vloss)
                    else:
                        state["bad"] += 1
                    stopping = bool(patience) and state["bad"] >= patience
                    bar.set_postfix(loss=f"{loss_value:.4g}", val=f"{vloss:.4g}", best=state["best_step"])
                    log.info("step %d: train loss %.5g, validation loss %.5g (best %.5g at step %d)", step,
                             loss_value, vloss, state["best_val"], state["best_step"])
                else:
                    log.info("step %d: train loss %.5g (no validation windows)", step, loss_value)
                state["done"] = stopping or step == steps
                if stopping:
                    log.info("early stop at step %d: no improvement in %d validations", step, patience)
                checkpoint()
            if kill_after and step == kill_after:
                bar.close()
                log.info("test hook %s=%d: killing the process", KILL_ENV, kill_after)
                logging.shutdown()
                os.kill(os.getpid(), signal.SIGKILL)
            if stop.requested is not None:
                checkpoint()
                bar.close()
                log.info("signal %d: checkpoint written at step %d, exiting", stop.requested, step)
                raise SystemExit(1)
            if stopping:
                break
    bar.close()
    if not state["done"]:  # a loader that ended early (cannot happen) or steps = 0
        state["done"] = True
        checkpoint()

    last_state = {k: v.detach().cpu() for k, v in kept.state_dict().items()}
    if best_ck.is_file():
        best_state, best = ckpt.load(best_ck, KIND, field="training checkpoint")
        best_step, best_val = best["step"], best["validation_loss"]
    else:  # no validation windows: the last weights are the best we have
        best_state, best_step, best_val = last_state, state["step"], None
    facts = dict(steps_done=state["step"], best_step=best_step, best_validation_loss=best_val,
                 train_seconds=round(state["elapsed"], 2), n_parameters=n_parameters(model), device=str(dev),
                 resumed_from_step=resumed, hparams=hparams)
    model.load_state_dict(best_state)
    save_multiplexer(model.cpu(), model_out, tinfo["output_names"], tinfo["mode"], preset, extra=dict(train=facts))
    model.load_state_dict(last_state)
    save_multiplexer(model, last_out, tinfo["output_names"], tinfo["mode"], preset,
                     extra=dict(train=dict(facts, weights="last")))
    Path(log_out).parent.mkdir(parents=True, exist_ok=True)
    _write_csv(log_out, rows)
    plot_loss_curve(log_out, plot_out)
    log.info("trained %d steps in %.1f s; best validation loss %s at step %d", state["step"], state["elapsed"],
             best_val, best_step)
    return facts
