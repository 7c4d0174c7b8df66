"""Stage C end to end: train_vision.py runs, writes its metrics and figure, resumes exactly, and a
missing tokenizer or data set is one clear line; its colour-edited hard negatives look drawn."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

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
    assert_resume_exact("train_vision", tmp_path, *setup, "--data.recolour=0.5")  # with repainted pictures too


@pytest.mark.parametrize("key, value, message", [
    ("data.tokenizer", "nowhere/tokenizer.model", "data.tokenizer: nowhere/tokenizer.model not found; run stage A"),
    ("data.train", "nowhere/train.jsonl", "nowhere/train.jsonl: manifest not found"),
])
def test_missing_tokenizer_or_data_is_one_clear_line(tmp_path, setup, key, value, message):
    r = subprocess.run([sys.executable, "train_vision.py", "--debug", *setup, f"--{key}={value}",
                        f"--train.out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr[-500:]


def test_recolour_repaints_one_object_as_if_it_had_been_drawn_in_that_colour(monkeypatch):
    """train_vision's colour hard negatives: repainting object k of a drawn picture must give the
    picture drawn with k in the new colour (same background, places, sizes), up to pixel rounding
    and a few border pixels where two objects meet."""
    monkeypatch.setattr(shapes, "jittered", lambda colour, rng: shapes.RGB[colour])  # known fills
    rng, off, changed, total = random.Random(0), 0, 0, 0
    for seed in range(100):
        objects = shapes.sample_objects(rng, must_hold_out=False)
        k = rng.randrange(len(objects))
        edited = [dict(o, colour=rng.choice([c for c in shapes.COLOURS if c != o["colour"]])) if n == k else o
                  for n, o in enumerate(objects)]
        before, after = (torch.tensor(np.array(shapes.render(objs, random.Random(seed)))).permute(2, 0, 1)
                         for objs in (objects, edited))
        got = shapes.recolour(before, objects, k, shapes.RGB[edited[k]["colour"]])
        off += ((got.int() - after.int()).abs().amax(0) > 3).sum().item()
        changed += ((before.int() - after.int()).abs().amax(0) > 3).sum().item()
        total += after[0].numel()
    assert changed > 0.02 * total  # the edits are large: a repaint that did nothing would fail below
    assert off < 0.005 * changed, (off, changed)
