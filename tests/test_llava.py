"""omni.llava on a tiny fixture in LLaVA's instruction format: usable entries become manifest lines
that the image loader reads, the rest are skipped and counted by reason, mistakes are one line."""
import json
import subprocess
import sys

from PIL import Image

from omni.llava import build
from omni.omni_data import question_kind
from omni.paths import ROOT
from omni.vision import load_image_manifest


def _fixture(d):
    (d / "coco").mkdir()
    for k in range(5):
        Image.new("RGB", (64, 40 + k), (40 * k, 100, 200)).save(d / "coco" / f"{k:012d}.jpg")
    conv = [{"from": "human", "value": "<image>\nWhat colour is the wall?"}, {"from": "gpt", "value": "It is blue."},
            {"from": "human", "value": "Is it day?"}, {"from": "gpt", "value": "Yes."}]
    entries = [{"id": str(k), "image": f"{k:012d}.jpg", "conversations": conv} for k in range(5)]
    entries += [{"id": "x", "image": "missing.jpg", "conversations": conv},
                {"id": "t", "conversations": conv},  # text-only
                {"id": "b", "image": f"{0:012d}.jpg", "conversations": [conv[1], conv[0]]}]  # gpt speaks first
    (d / "llava.json").write_text(json.dumps(entries))


def test_llava_fixture_becomes_manifests(tmp_path):
    _fixture(tmp_path)
    counts = build(str(tmp_path / "llava.json"), str(tmp_path / "coco"), str(tmp_path / "out"), held_out=1)
    assert counts == {"val": 1, "test": 1, "train": 3, "skipped": 3}
    records, images = load_image_manifest(tmp_path / "out" / "train.jsonl", 48)
    assert images.shape == (3, 3, 48, 48)
    r = records[0]
    assert r["questions"] == [{"q": "What colour is the wall?", "a": "It is blue."}, {"q": "Is it day?", "a": "Yes."}]
    assert r["caption"] == "It is blue." and question_kind(r["questions"][0]["q"]) == "other"


def test_llava_mistakes_are_one_line(tmp_path):
    _fixture(tmp_path)
    r = subprocess.run([sys.executable, "-m", "omni.llava", "--json", str(tmp_path / "nope.json"), "--images",
                        str(tmp_path / "coco"), "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.json: file not found" in r.stderr
