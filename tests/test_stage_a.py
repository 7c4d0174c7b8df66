"""Stage A end to end: the script runs, learns, writes a usable checkpoint; the sampler works."""
import json
import subprocess
import sys

import pytest
import torch

from omni.config import UserError
from omni.paths import ROOT
from omni.sample import load_thinker
from omni.sample import main as sample_main
from tests.conftest import run_stage


def test_train_text_debug_runs_end_to_end_in_a_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "train_text.py", "--debug", f"--train.out_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held-out: loss" in r.stdout and "unigram reference" in r.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"loss", "ppl", "bpb", "unigram_bpb", "step"} <= set(metrics)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_stage_a_learns_beyond_unigram(tmp_path):
    """A slightly longer toy run must beat the unigram reference on held-out chapters."""
    m = run_stage("train_text", tmp_path, "--train.max_steps=100", "--train.lr=5e-3", "--train.eval_every=100",
                  "--train.warmup_steps=10", "--model.d_model=64", "--model.tie_embeddings=false",
                  "--train.batch_size=16")
    assert m["bpb"] < m["unigram_bpb"], m


def test_saved_checkpoint_reloads_to_identical_logits_and_samples(tmp_path):
    run_stage("train_text", tmp_path)
    model, tok = load_thinker(str(tmp_path / "best.pt"))
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert set(state["model"]) == set(model.state_dict())
    x = torch.tensor([tok.encode("It is a truth")])
    a, _ = model(x)
    b, _ = load_thinker(str(tmp_path / "best.pt"))[0](x)
    assert torch.equal(a, b)
    text = sample_main([str(tmp_path / "best.pt"), "--prompt", "Emma", "--tokens", "5", "--temperature", "0"])
    assert text.startswith("Emma") and len(text) > len("Emma")
    for flags, said in ((["--prompt", ""], "--prompt: nothing to continue"),
                        (["--tokens", "0"], "--tokens 0: give at least 1")):
        with pytest.raises(UserError, match=said):  # a user's mistake: one clear line, not a traceback
            sample_main([str(tmp_path / "best.pt"), *flags])
