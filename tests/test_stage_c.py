"""Stage C end to end: train_vision.py runs, writes its metrics and figure, resumes exactly, and a
missing tokenizer or data set is one clear line."""
import json
import subprocess
import sys

import pytest

from omni import shapes
from omni.paths import ROOT
from omni.tokenizer import train_tokenizer
from tests.conftest import assert_resume_exact, run_stage


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small shapes world and a tiny tokenizer trained on its captions (stage A's stands in)."""
    d = tmp_path_factory.mktemp("stage_c")
    shapes.build(d / "shapes", n_train=192, n_val=60, n_test=60, seed=1)
    captions = [json.loads(line)["caption"] for line in (d / "shapes" / "train.jsonl").read_text().splitlines()]
    train_tokenizer(captions, d / "tokenizer.model", 400)
    return [f"--data.{s}={d / 'shapes' / s}.jsonl" for s in ("train", "val", "test")] + \
        [f"--data.tokenizer={d / 'tokenizer.model'}"]


def test_train_vision_debug_runs_end_to_end(tmp_path, setup):
    m = run_stage("train_vision", tmp_path, *setup)
    for split in ("val", "test"):
        for k in ("t2i", "i2t", "colour", "shape", "count"):
            assert 0.0 <= m[f"{split}_{k}"] <= 1.0
    assert m["step"] == 6 and m["loss"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test_t2i"] == m["test_t2i"]
    for name in ("curves.png", "retrievals.png", "best.pt"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_resume_is_exact(tmp_path, setup):
    assert_resume_exact("train_vision", tmp_path, *setup)


@pytest.mark.parametrize("key, value, message", [
    ("data.tokenizer", "nowhere/tokenizer.model", "data.tokenizer: nowhere/tokenizer.model not found; run stage A"),
    ("data.train", "nowhere/train.jsonl", "nowhere/train.jsonl: manifest not found"),
])
def test_missing_tokenizer_or_data_is_one_clear_line(tmp_path, setup, key, value, message):
    r = subprocess.run([sys.executable, "train_vision.py", "--debug", *setup, f"--{key}={value}",
                        f"--train.out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr[-500:]
