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

Every write goes to a temporary file first and is then renamed over the target (`os.replace`
is atomic), so an interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from omni.config import UserError
from omni.paths import repo_path

STEP_RE = re.compile(r"step_(\d+)\.pt$")


def step_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}.pt"


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely, or explain clearly why it cannot be read."""
    p = repo_path(path)
    if not p.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, not a checkpoint, or one that holds code
        raise UserError(f"{path}: cannot read this checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The step checkpoints of a run, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("step_*.pt") if (m := STEP_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """'' -> None (fresh run); 'auto' -> the newest step checkpoint in run_dir (or None if the
    run has none yet); anything else is a path."""
    if not resume:
        return None
    if resume == "auto":
        steps = step_checkpoints(run_dir)
        return steps[-1] if steps else None
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


def write_meta(run_dir: Path, step: int, metrics: dict, best: dict) -> None:
    meta = {"step": step, "latest": f"step_{step:06d}.pt", "metrics": metrics, "best": best}
    atomic_write_text(json.dumps(meta, indent=2) + "\n", run_dir / "meta.json")
