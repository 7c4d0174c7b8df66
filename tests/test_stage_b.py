"""Stage B end to end on a tiny speech set: the script runs in a subprocess, resume is exact, a
missing data set is one clear line."""
import json
import subprocess
import sys

import pytest
import torch

from omni.paths import ROOT
from omni.speech_data import build
from tests.conftest import assert_resume_exact, run_stage


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """17 clips (16 sentences and one bare answer) in three manifests; returns the command-line flags
    that point the stage at them."""
    paths = build(tmp_path_factory.mktemp("speech"), seed=1, train=10, val=3, test=3, workers=1, shards=1)
    return [f"--data.{split}={p}" for split, p in paths.items()]


def test_train_audio_enc_debug_runs_end_to_end_in_a_subprocess(tmp_path, speech):
    r = subprocess.run([sys.executable, "train_audio_enc.py", "--debug", f"--train.out_dir={tmp_path}",
                        *speech], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unseen voices: test CER" in r.stdout and "test | ref:" in r.stdout
    assert "11 of 11 clips usable" in r.stdout  # 10 sentences + 1 bare answer
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val_cer", "val_wer", "test_cer", "test_wer", "loss", "step"} <= set(metrics)
    assert metrics["step"] == 6 and 0 <= metrics["test_cer"] <= 5
    assert (tmp_path / "curves.png").stat().st_size > 1000
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert any(k.startswith("encoder.") for k in state["model"]) and "head.weight" in state["model"]


def test_stage_b_resume_is_exact(tmp_path, speech):
    assert_resume_exact("train_audio_enc", tmp_path, *speech)


def test_batches_are_a_pure_function_of_their_number(tmp_path, speech, monkeypatch):
    """get_batch(i) must not depend on what was drawn before (the basis of exact resume)."""
    import train_audio_enc

    seen = {}

    def capture(task, cfg, full):
        seen["a"] = [task.get_batch(i) for i in (0, 1, 2, 7)]
        seen["b"] = [task.get_batch(i) for i in (7, 2, 1, 0)][::-1]
        return {"step": 0, "train_seconds": 0.0}

    monkeypatch.setattr(train_audio_enc, "fit", capture)
    run_stage("train_audio_enc", tmp_path, *speech)
    for x, y in zip(seen["a"], seen["b"]):
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    assert not torch.equal(seen["a"][0][0], seen["a"][1][0])


def test_missing_data_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "train_audio_enc.py", "--debug", f"--train.out_dir={tmp_path}",
                        f"--data.train={tmp_path}/nope.jsonl"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nope.jsonl not found" in r.stderr and "omni.speech_data" in r.stderr
