"""One training loop for all five stages.

A stage hands `fit` a `Task`: the model, a `get_batch(i)` that returns micro-batch number i, a
`loss` and an `evaluate` on held-out data. The loop owns everything else: device and mixed
precision, AdamW with warmup then cosine decay, gradient accumulation and clipping, periodic
evaluation, progress and logs, checkpoints, exact resume, a NaN guard, and DDP under torchrun.

Exact resume rests on one rule: `get_batch(i)` is a pure function of i (and the seed). The
position in the data stream is then just the step number, and a checkpoint that stores the
weights, the optimizer and scaler state, the RNG states and the step continues exactly where an
uninterrupted run would have gone (bit-identical on CPU; see tests/test_trainer.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from omni import checkpoint as ckpt
from omni.config import UserError, cpu_threads
from omni.device import Runtime, setup_runtime, to_device
from omni.logs import JsonlLog, plot_curves
from omni.paths import repo_path


@dataclass
class TrainConfig:
    out_dir: str = "runs/debug"  # run directory (relative to the repository root)
    seed: int = 1337  # seeds the weights, the data order and augmentation
    max_steps: int = 1000  # optimizer steps in the whole run (the lr schedule spans these)
    batch_size: int = 16  # examples per micro-batch
    grad_accum: int = 1  # micro-batches summed into one optimizer step
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 100  # linear warmup from 0 to lr over these steps
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.1  # AdamW decay, applied to matrices only (not norms or biases)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    lr_scale: dict[str, float] = field(default_factory=dict)  # lr multiplier by parameter-name prefix; 0 freezes
    eval_every: int = 200  # steps between held-out evaluations (and one at the end)
    log_every: int = 20  # steps between status lines
    ckpt_every: int = 200  # steps between step checkpoints (and one at the end)
    keep_last: int = 3  # step checkpoints kept on disk (0 = all)
    stop_at_step: int = 0  # stop early at this step as if interrupted (0 = run to max_steps)
    resume: str = ""  # checkpoint to continue from: a path, "auto" = newest in out_dir, "" = fresh
    overwrite: bool = False  # a fresh run may replace the checkpoints of an earlier run in out_dir
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: str = "auto"  # autocast precision: auto, fp32, bf16 or fp16
    deterministic: bool = True  # deterministic kernels on a GPU or compiled: resume is bit for bit (plain CPU: always)
    threads: int = 0  # CPU threads for torch (0 = every core this process may use, or OMP_NUM_THREADS if set)
    compile: bool = False  # torch.compile the training steps: fused kernels, after 20 s to 2 min of compiling (ch. 1)

    def __post_init__(self):
        for k in ("max_steps", "batch_size", "grad_accum", "eval_every", "log_every", "ckpt_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be at least 1, got {getattr(self, k)}")


@dataclass
class Task:
    model: nn.Module  # the whole model (parameters not in the optimizer are frozen)
    get_batch: Callable[[int], object]  # micro-batch number -> batch of CPU tensors; pure in its argument
    loss: Callable[[nn.Module, object], tuple[torch.Tensor, dict]]  # (model, batch) -> (loss, extra logs)
    evaluate: Callable[[nn.Module], dict]  # held-out metrics; runs in eval mode under no_grad
    best_metric: str = "loss"  # the evaluate() key that picks best.pt
    best_mode: str = "min"  # "min" or "max"
    count: Callable[[object], int] = lambda b: 0  # units in a batch (tokens, seconds...), for throughput
    unit: str = "ex"  # the name of those units in the status line
    stage: str = ""  # which stage trains ("A", "B", "C", "D-codec", "D-talker", "E"); saved in each checkpoint
    partial: bool = False  # some batches leave trainable parameters unused (DDP must then look for them)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, rt: Runtime) -> torch.optim.AdamW:
    """AdamW with one group per (lr scale, decay or not). A 0 scale freezes those parameters."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        scale = next((s for prefix, s in cfg.lr_scale.items() if name.startswith(prefix)), 1.0)
        if scale == 0:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        groups.setdefault((scale, p.dim() >= 2), []).append(p)
    if not groups:
        raise UserError("train.lr_scale: every parameter is frozen, nothing would train")
    param_groups = [{"params": ps, "lr_scale": s, "weight_decay": cfg.weight_decay if decay else 0.0}
                    for (s, decay), ps in groups.items()]
    # One fused kernel per update on a GPU, and on a CPU with train.compile (3.3 against 0.9 ms a step for the
    # tiny Thinker on 2 threads); the plain CPU run keeps the per-tensor loop its published numbers came from.
    fused = rt.device.type == "cuda" or cfg.compile
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def compiled(model: nn.Module) -> nn.Module:
    """torch.compile (Ansel et al. 2024): TorchInductor fuses the elementwise work between the matmuls
    (norms, RoPE, activations) into generated kernels, C++ on a CPU, Triton on a GPU. On a CPU that
    needs a C++ compiler; without one the first step would fail deep inside torch, so say it first."""
    if not torch.cuda.is_available():
        from torch._inductor import cpp_builder  # where inductor looks for its compiler (CXX, g++, clang++)
        try:
            cpp_builder.get_cpp_compiler()
        except Exception as e:  # noqa: BLE001 - any failure to find one means the same to the user
            raise UserError(f"train.compile: no C++ compiler found for torch.compile on this CPU ({e}); "
                            "install one (g++ or clang++) or set --train.compile=false") from None
    return torch.compile(model)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def run_evaluation(task: Task, rt: Runtime) -> dict:
    """The held-out evaluation, always run the same way: eval mode, no gradients, the run's autocast
    (a stage that evaluates again after `fit`, as stage E does for a run resumed past its end,
    gets the very numbers the run printed; in fp32 instead of bf16 they would differ on a GPU)."""
    task.model.eval()
    with torch.no_grad(), rt.autocast():
        out = {k: float(v) for k, v in task.evaluate(task.model).items()}
    task.model.train()
    return out


def fit(task: Task, cfg: TrainConfig, full_config: dict) -> dict:
    """Train `task.model` for cfg.max_steps; return the final held-out metrics (plus timing)."""
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.deterministic, compiled=cfg.compile)
    torch.set_num_threads(cpu_threads(cfg.threads))
    run_dir = repo_path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = task.model.to(rt.device)
    optimizer = make_optimizer(model, cfg, rt)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.needs_scaler)
    step, best, metrics = 0, {}, {}
    resume_path = ckpt.resolve_resume(cfg.resume, run_dir)
    if resume_path is not None:
        # a stage resumes only its own checkpoints: --resume with another stage's file is one clear line
        state = ckpt.load_stage_checkpoint(resume_path, task.stage) if task.stage else ckpt.load_checkpoint(resume_path)
        ckpt.load_weights(model, state["model"], str(resume_path))
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, best, metrics = state["step"], state["best"], state["metrics"]
        if rt.is_main:
            print(f"resumed from {resume_path} at step {step}")
    else:
        old = ckpt.step_checkpoints(run_dir)
        if old and not cfg.overwrite:
            raise UserError(f"{cfg.out_dir} already holds a run ({old[-1].name}): continue it with "
                            "--resume auto, or start again with --train.overwrite=true")
        for p in [*old, run_dir / "latest.pt", run_dir / "best.pt"]:
            p.unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)  # the stage built its model under its own seed; this seeds dropout
    train_model = model
    if rt.world_size > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=task.partial)
    if cfg.compile:  # only the training steps: evaluation and checkpoints use the plain model
        train_model = compiled(train_model)
    log = JsonlLog(run_dir / "log.jsonl", step if resume_path else None) if rt.is_main else None
    if rt.is_main:
        ckpt.atomic_write_text(json.dumps(full_config, indent=2) + "\n", run_dir / "config.json")

    def save(path_step: int) -> None:
        state = {"stage": task.stage, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "step": path_step,
                 "best": best, "metrics": metrics, "config": full_config}
        path = ckpt.step_path(run_dir, path_step)
        ckpt.atomic_save(state, path)
        ckpt.atomic_copy(path, run_dir / "latest.pt")
        ckpt.prune(run_dir, cfg.keep_last)
        ckpt.write_meta(run_dir, path_step, metrics, best, task.stage)

    stop = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    show_bar = rt.is_main and sys.stderr.isatty()  # in a log file the status lines say it all
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not show_bar, dynamic_ncols=True,
               desc=run_dir.name, leave=False)
    model.train()
    first_step = step
    t_start, t_log, units = time.time(), time.time(), 0
    while step < stop:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        loss_sum, extra = 0.0, {}
        for micro in range(cfg.grad_accum):
            i = (step * cfg.grad_accum + micro) * rt.world_size + rt.rank
            batch = task.get_batch(i)
            units += task.count(batch)
            batch = to_device(batch, rt.device)
            sync = micro == cfg.grad_accum - 1 or rt.world_size == 1
            ctx = contextlib.nullcontext() if sync else train_model.no_sync()
            with ctx, rt.autocast():
                loss, extra = task.loss(train_model, batch)
                scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        if not math.isfinite(loss_sum):
            last = ckpt.step_checkpoints(run_dir)
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            raise UserError(f"loss became {loss_sum} at step {step}: stopping; {where}. "
                            "Try a lower train.lr, or train.dtype=fp32", code=1)
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        gnorm = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if rt.is_main and (step % cfg.log_every == 0 or step == stop):
            dt = max(time.time() - t_log, 1e-9)
            rate = units * rt.world_size / dt
            eta = (time.time() - t_start) / max(1, step - first_step) * (cfg.max_steps - step)
            record = {"kind": "train", "step": step, "loss": loss_sum, "lr": lr, "grad_norm": gnorm,
                      f"{task.unit}_per_s": rate, **{k: float(v) for k, v in extra.items()}}
            log.write(record)
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.1e}")
            tqdm.write(f"step {step:>5}/{cfg.max_steps} | loss {loss_sum:.4f} | lr {lr:.2e} | "
                       f"{rate / 1000:.1f}k {task.unit}/s | eta {_fmt_eta(eta)}")
            t_log, units = time.time(), 0
        is_best = False
        if rt.is_main and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            t_eval = time.time()
            metrics = run_evaluation(task, rt)
            log.write({"kind": "eval", "step": step, **metrics})
            tqdm.write(f"eval step {step}: " + " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            value = metrics.get(task.best_metric)
            if value is not None and ("value" not in best or
                                      (value < best["value"]) == (task.best_mode == "min")):
                best, is_best = {"metric": task.best_metric, "value": value, "step": step}, True
            t_log += time.time() - t_eval  # evaluation time does not count against throughput
        if rt.is_main and (step % cfg.ckpt_every == 0 or step == stop or is_best):
            save(step)
            if is_best:
                ckpt.atomic_copy(ckpt.step_path(run_dir, step), run_dir / "best.pt")
        if rt.world_size > 1:
            torch.distributed.barrier()
    bar.close()
    if rt.is_main and step == cfg.max_steps:
        plot_curves(run_dir)
    return {**metrics, "step": step, "train_seconds": time.time() - t_start}
