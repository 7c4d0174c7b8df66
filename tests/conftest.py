"""Shared test helpers: run a stage's main() on a tiny config, and check exact resume."""
from __future__ import annotations

import importlib

import pytest
import torch

from omni.config import parse_args


def run_stage(module_name: str, out_dir, *args: str) -> dict:
    """Run a stage script's main() with --debug settings, into out_dir; return its final metrics."""
    mod = importlib.import_module(module_name)
    cls = next(v for k, v in vars(mod).items() if k.endswith("StageConfig"))
    cfg = parse_args(cls, ["--debug", f"--train.out_dir={out_dir}", *args], mod.DEBUG)
    return mod.main(cfg)


def assert_resume_exact(module_name: str, tmp_path, *args: str) -> None:
    """N steps in one go must give bit-identical weights and optimizer state to the same run
    stopped half-way (train.stop_at_step) and resumed with --resume auto. And a finished run resumed
    again (the main job run a second time) trains nothing and reports the same held-out metrics."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    first = run_stage(module_name, straight, *args)
    again = run_stage(module_name, straight, *args, "--resume", "auto")
    timing = ("seconds", "rtf")
    assert sorted(again) == sorted(first)
    assert {k: v for k, v in again.items() if not any(t in k for t in timing)} == \
        {k: v for k, v in first.items() if not any(t in k for t in timing)}
    a = torch.load(straight / "latest.pt", weights_only=True)
    half = a["step"] // 2
    run_stage(module_name, split, *args, f"--train.stop_at_step={half}")
    assert torch.load(split / "latest.pt", weights_only=True)["step"] == half
    run_stage(module_name, split, *args, "--resume", "auto")
    b = torch.load(split / "latest.pt", weights_only=True)
    assert b["step"] == a["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights differ after resume: {k}"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"])


@pytest.fixture(autouse=True)
def _small_threads(monkeypatch):
    """Tests run on 2 cores next to other work: one thread each keeps them predictable (the
    OMP_NUM_THREADS setting is what train.threads=0 follows inside a stage's main)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
