"""The shared training loop: schedule, checkpoints, exact resume, the NaN guard. The loop's own toy
tasks run on the CPU wherever the tests run (their batches are CPU tensors, their checks exact);
the stages' debug runs use the machine's GPU when it has one."""
import json
import os

import pytest
import torch
from torch import nn

from omni import checkpoint
from omni.config import UserError
from omni.trainer import Task, TrainConfig, fit, lr_at
from tests.conftest import assert_resume_exact


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def _regression_task(poison_at=None):
    """y = x @ w_true with a linear model; batch i is drawn from a generator seeded by i."""
    torch.manual_seed(0)
    w_true = torch.randn(8, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 1))

    def get_batch(i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(32, 8, generator=g)
        y = x @ w_true
        if poison_at is not None and i >= poison_at:
            y = y * float("nan")
        return x, y

    def loss(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1]), {}

    def evaluate(m):
        x, y = get_batch(10_000)
        return {"loss": nn.functional.mse_loss(m(x), y).item()}

    return Task(model, get_batch, loss, evaluate)


def test_fit_learns_and_writes_run_dir(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), device="cpu", max_steps=60, lr=1e-2, warmup_steps=5, eval_every=20,
                      ckpt_every=20, log_every=10, keep_last=2, weight_decay=0.0)
    out = fit(_regression_task(), cfg, {"note": "test"})
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r["loss"] for r in records if r["kind"] == "eval"]
    assert evals[-1] < 0.2 * evals[0]
    assert out["loss"] == evals[-1]
    assert [p.name for p in checkpoint.step_checkpoints(tmp_path)] == ["step_000040.pt", "step_000060.pt"]
    for name in ("latest.pt", "best.pt", "config.json", "meta.json", "curves.png"):
        assert (tmp_path / name).exists(), name
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["best"]["value"] == min(evals) and best["config"] == {"note": "test"}


def test_resuming_without_the_log_starts_a_new_one(tmp_path, capsys):
    """A finished run resumed (an evaluation only) after its log.jsonl was lost: one line says so, a new
    log starts at the resumed step and the curves are drawn from it, instead of a traceback at the end."""
    cfg = TrainConfig(out_dir=str(tmp_path), device="cpu", max_steps=20, lr=1e-2, warmup_steps=5, eval_every=10,
                      ckpt_every=10, log_every=10, weight_decay=0.0)
    fit(_regression_task(), cfg, {})
    (tmp_path / "log.jsonl").unlink()
    (tmp_path / "curves.png").unlink()
    cfg.resume = "auto"
    fit(_regression_task(), cfg, {})  # nothing left to train: it evaluates, then draws the curves
    assert "log.jsonl: not found; a new log starts at step 20" in capsys.readouterr().out
    assert (tmp_path / "curves.png").exists()
    (tmp_path / "log.jsonl").unlink()
    cfg.max_steps = 30  # and a run that goes on logs from where it resumed
    fit(_regression_task(), cfg, {})
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps and min(steps) > 20 and (tmp_path / "curves.png").exists()


def test_grad_accum_sums_micro_batches(tmp_path):
    """Two micro-batches of 32 accumulate to the gradient of their mean: same as one step on both."""
    t = _regression_task()
    t.model = nn.Linear(8, 1)
    init = {k: v.clone() for k, v in t.model.state_dict().items()}
    fit(t, TrainConfig(out_dir=str(tmp_path / "a"), device="cpu", max_steps=1, grad_accum=2, warmup_steps=1), {})
    a = t.model.weight.detach().clone()
    t.model.load_state_dict(init)
    both = [t.get_batch(0), t.get_batch(1)]
    t.get_batch = lambda i: (torch.cat([b[0] for b in both]), torch.cat([b[1] for b in both]))
    fit(t, TrainConfig(out_dir=str(tmp_path / "b"), device="cpu", max_steps=1, grad_accum=1, warmup_steps=1), {})
    assert torch.allclose(a, t.model.weight.detach(), atol=1e-6)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), device="cpu", max_steps=30, ckpt_every=5, eval_every=100, log_every=5)
    with pytest.raises(UserError, match=r"loss became nan at step 12.*step_000010\.pt"):
        fit(_regression_task(poison_at=12), cfg, {})
    last = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert last["step"] == 10 and all(torch.isfinite(v).all() for v in last["model"].values())


def test_frozen_prefix_does_not_move(tmp_path):
    t = _regression_task()
    before = t.model[0].weight.detach().clone()
    fit(t, TrainConfig(out_dir=str(tmp_path), device="cpu", max_steps=5, lr_scale={"0.": 0.0}), {})
    assert torch.equal(before, t.model[0].weight) and not t.model[0].weight.requires_grad


def test_resume_is_exact_for_stage_a(tmp_path):
    assert_resume_exact("train_text", tmp_path)


def test_compiled_training_resumes_exactly(tmp_path):
    """train.compile: the training steps run through torch.compile (and AdamW fused on a CPU too), and a
    compiled run stopped half-way and resumed still ends bit for bit where the straight run did. On two
    threads: there the compiled code's scatter sums used atomics (fails without deterministic mode)."""
    try:
        assert_resume_exact("train_text", tmp_path, "--train.compile=true", "--train.threads=2")
    finally:
        torch.use_deterministic_algorithms(False)  # the run switched it on for this process
    state = torch.load(tmp_path / "straight" / "latest.pt", weights_only=True)
    assert state["config"]["train"]["compile"] is True


def test_compile_without_a_cpp_compiler_is_one_clear_line(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config
    if torch.cuda.is_available():
        pytest.skip("on a GPU torch.compile generates Triton kernels, not C++")
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), device="cpu", max_steps=2, compile=True)
    with pytest.raises(UserError, match=r"train\.compile: no C\+\+ compiler found.*--train\.compile=false"):
        fit(_regression_task(), cfg, {})


def test_broken_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "step_000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read this checkpoint: not a PyTorch checkpoint, or one cut off"):
        checkpoint.load_checkpoint(bad)
    torch.save({"step": 1, "task": TrainConfig()}, bad)  # a dataclass: code that weights_only refuses to run
    with pytest.raises(UserError, match="cannot read this checkpoint: it holds objects other than tensors"):
        checkpoint.load_checkpoint(bad)
    bad.write_bytes(bad.read_bytes()[:200])  # a save cut off part-way
    with pytest.raises(UserError, match="cannot read this checkpoint: not a PyTorch checkpoint, or one cut off"):
        checkpoint.load_checkpoint(bad)
    with pytest.raises(UserError, match="not found"):
        checkpoint.resolve_resume(str(tmp_path / "nope.pt"), tmp_path)


def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes under torchrun (gloo backend on CPU) train one model through DDP."""
    import subprocess
    import sys

    from omni.paths import ROOT

    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                        "train_text.py", "--debug", f"--train.out_dir={tmp_path}", "--train.max_steps=4",
                        "--train.device=cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("held-out: loss") == 1  # only rank 0 prints
    state = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert state["step"] == 4
