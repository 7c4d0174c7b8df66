"""Checkpoints: plain dicts of tensors and numbers, so they load with `weights_only=True` (a
checkpoint from someone else cannot run code on your machine).

A run directory looks like

    runs/thinker_tiny/
      config.json          the resolved config of the run
      log.jsonl            every logged value, one JSON object a line
      step_000500.pt       step checkpoints (the newest `keep_last` are kept)
      latest.pt            a copy of the newest step checkpoint
      best.pt              the checkpoint with the best held-out metric so far
      meta.json            readable summary: step, metrics and files of the newest checkpoints
      curves.png           the training curves, drawn at the end

Every write goes to a temporary file first, is flushed to the disk (`os.fsync`), and is then
renamed over the target (`os.replace` is atomic), so neither an interrupted save nor a power cut
leaves a half-written checkpoint under a real name. Without the fsync the rename can reach the
disk before the data does, and after a crash the newest checkpoint is an empty file. Should one
be unreadable anyway (a disk that lies, a file copied by hand), `--resume auto` skips it and
continues from the newest readable one.

Each checkpoint records the `stage` that wrote it ("A", "B", "C", "D-codec", "D-talker", "E"), so
a later stage that is handed the wrong file says which stage it came from and what it expected
(`load_stage_checkpoint`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from torch import nn

from omni.config import UserError
from omni.device import to_device
from omni.paths import repo_path

STEP_RE = re.compile(r"step_(\d+)\.pt$")

# What each stage trains, for error messages: "a stage B checkpoint (the audio encoder)".
STAGES = {"A": ("the Thinker", "runs/thinker_tiny/best.pt"),
          "B": ("the audio encoder", "runs/audio_enc_tiny/best.pt"),
          "C": ("the vision encoder", "runs/vision_tiny/best.pt"),
          "D-codec": ("the speech codec", "runs/codec_tiny/best.pt"),
          "D-talker": ("the Talker", "runs/talker_tiny/best.pt"),
          "E": ("the omni model", "runs/omni_tiny/best.pt")}


def step_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}.pt"


def _tmp(path: Path) -> Path:
    """The temporary file beside `path`, one per process: under torchrun every rank may write the same
    file (a feature cache, a tokenizer), and a shared name would let one rank rename another's away."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _commit(tmp: Path, path: Path) -> None:
    """Flush `tmp` to the disk, rename it over `path`, then flush the folder entry of the rename."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is already durable enough
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: Path) -> None:
    """Tensors are saved from the CPU, so a checkpoint written on a GPU loads with a plain
    `torch.load(path, weights_only=True)` on a machine without one."""
    tmp = _tmp(path)
    torch.save(to_device(obj, torch.device("cpu"), non_blocking=False), tmp)
    _commit(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(text)
    _commit(tmp, path)


def atomic_copy(src: Path, dst: Path) -> None:
    tmp = _tmp(dst)
    shutil.copyfile(src, tmp)
    _commit(tmp, dst)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely, or explain clearly why it cannot be read."""
    p = repo_path(path)
    if not p.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # not a checkpoint, a truncated one, or one that holds code
        if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; a cut-off one loses its index
            why = "not a PyTorch checkpoint, or one cut off while it was written (the stage scripts write best.pt, " \
                  "latest.pt and step_*.pt)"
        elif "Weights only load failed" in str(e):
            why = "it holds objects other than tensors and plain values, which weights_only loading refuses " \
                  "(written by another program?)"
        else:
            why = f"damaged ({type(e).__name__})"
        raise UserError(f"{path}: cannot read this checkpoint: {why}") from None


def checkpoint_stage(state: dict) -> str:
    """The stage that wrote a checkpoint: its `stage` field, or, for checkpoints written before
    that field existed, a guess from the top-level keys of the config saved in it."""
    if state.get("stage"):
        return state["stage"]
    cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
    if "codec" in cfg:  # stage D's config also holds "audio": look for it first
        return "D-talker" if cfg.get("phase") == "talker" else "D-codec"
    if "projector" in cfg:
        return "E"
    if "vision" in cfg:
        return "C"
    if "audio" in cfg:
        return "B"
    if isinstance(cfg.get("model"), dict) and "vocab_size" in cfg["model"]:
        return "A"
    return ""


def describe_stage(stage: str) -> str:
    """"B" -> "a stage B checkpoint (the audio encoder)"."""
    if not stage:
        return "a checkpoint of no known stage"
    what = STAGES.get(stage, ("unknown model", ""))[0]
    return f"a stage {stage} checkpoint ({what})"


def load_stage_checkpoint(path: str | Path, expected: str | tuple[str, ...]) -> dict:
    """Load a checkpoint that one of the `expected` stages wrote, or say clearly which stage it
    came from and which one is needed (one line, not a KeyError deep inside a model)."""
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    state = load_checkpoint(path)
    found = checkpoint_stage(state)
    if found not in expected:
        want = " or ".join(f"{describe_stage(s)}, e.g. {STAGES[s][1]}" if s in STAGES else describe_stage(s)
                           for s in expected)
        raise UserError(f"{path}: this is {describe_stage(found)}; this command needs {want}")
    return state


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The step checkpoints of a run, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("step_*.pt") if (m := STEP_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """'' -> None (fresh run); 'auto' -> the newest readable step checkpoint in run_dir (or None
    if the run has none yet); anything else is a path. With 'auto', an unreadable checkpoint (an
    empty or truncated file left by a crash) is skipped with one line saying so."""
    if not resume:
        return None
    if resume == "auto":
        steps = step_checkpoints(run_dir)
        for p in reversed(steps):
            try:
                torch.load(p, map_location="cpu", weights_only=True, mmap=True)  # mmap: a check, not a copy
                return p
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped the same way
                print(f"resume auto: skipping {p} (unreadable: {type(e).__name__}, {p.stat().st_size} bytes)")
        if steps:
            raise UserError(f"{run_dir}: none of its {len(steps)} step checkpoints can be read; "
                            "start again with --train.overwrite=true")
        return None
    p = repo_path(resume)
    if not p.is_file():
        raise UserError(f"--resume {resume}: checkpoint not found (use a step_*.pt path or 'auto')")
    return p


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (0 keeps them all)."""
    if keep_last > 0:
        for p in step_checkpoints(run_dir)[:-keep_last]:
            p.unlink()


def load_weights(model: nn.Module, state_dict: dict, where: str) -> None:
    """Strict load that says what differs instead of printing a wall of key names."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {extra[0]})")
        if shapes:
            parts.append(f"shape mismatch {len(shapes)} (e.g. {shapes[0]})")
        raise UserError(f"{where}: weights do not fit this model: {'; '.join(parts)}. "
                        "Was it made with a different config?")
    model.load_state_dict(state_dict)


def write_meta(run_dir: Path, step: int, metrics: dict, best: dict, stage: str = "") -> None:
    meta = {"stage": stage, "step": step, "latest": f"step_{step:06d}.pt", "metrics": metrics, "best": best}
    atomic_write_text(json.dumps(meta, indent=2) + "\n", run_dir / "meta.json")
