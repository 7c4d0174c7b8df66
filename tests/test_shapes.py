"""The shapes world and the COCO converter: determinism, the held-out split, captions and answers
that agree with the objects, and the manifest format."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from omni import shapes
from omni.coco import main as coco_main
from omni.paths import ROOT


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    shapes.build(out, n_train=400, n_val=60, n_test=120, seed=3)
    return out, {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
                 for s in ("train", "val", "test")}


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path, world):
    out, _ = world
    shapes.build(tmp_path, n_train=400, n_val=60, n_test=120, seed=3)
    for name in ("train.jsonl", "test.jsonl", "train/000007.png", "test/000011.png"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    a = shapes.make_example(3, "train", 7)[1]
    assert shapes.make_example(4, "train", 7)[1]["caption"] != a["caption"]


def test_held_out_pairs_never_in_train_or_val_and_in_every_test_picture(world):
    _, data = world
    held = set(shapes.HELD_OUT)
    for split in ("train", "val"):
        for rec in data[split]:
            assert not {(o["colour"], o["shape"]) for o in rec["objects"]} & held, rec["caption"]
            for c, s in held:  # not even named in a training question
                assert f"{c} {s}" not in json.dumps(rec["questions"])
    assert all({(o["colour"], o["shape"]) for o in rec["objects"]} & held for rec in data["test"])
    seen = {(o["colour"], o["shape"]) for rec in data["train"] for o in rec["objects"]}
    assert {c for c, _ in seen} == set(shapes.COLOURS) and {s for _, s in seen} == set(shapes.SHAPES)


def test_captions_and_answers_agree_with_the_objects(world):
    _, data = world
    for rec in data["train"] + data["test"]:
        objs = rec["objects"]
        assert 1 <= len(objs) <= 4
        assert len({o["shape"] for o in objs}) == len(objs) and len({o["position"] for o in objs}) == len(objs)
        assert rec["caption"] == shapes.caption(objs)
        for o in objs:
            assert f"{o['size']} {o['colour']} {o['shape']} {shapes.WHERE[o['position']]}" in rec["caption"]
        answers = {qa["q"]: qa["a"] for qa in rec["questions"]}
        assert answers["how many shapes are there?"] == shapes.COUNT_WORDS[len(objs) - 1]
        for o in objs:
            assert answers[f"what colour is the {o['shape']}?"] == o["colour"]
            assert answers[f"where is the {o['colour']} {o['shape']}?"] == o["position"]
            assert answers[f"what shape is {shapes.WHERE[o['position']]}?"] == o["shape"]
        present = {f"{o['colour']} {o['shape']}" for o in objs}
        for q, a in answers.items():
            if q.startswith("is there"):
                assert a == ("yes" if q.split(" ", 3)[3].rstrip("?") in present else "no"), q


def test_training_families_differ_from_their_base_in_one_shape(world):
    _, data = world
    base, edits = data["train"][0], data["train"][1:4]
    assert all(r["family"] == base["family"] for r in edits)
    for rec in edits:
        changed = [(a, b) for a, b in zip(base["objects"], rec["objects"]) if a != b]
        assert len(changed) == 1 and {k for k in changed[0][0] if changed[0][0][k] != changed[0][1][k]} == {"shape"}


def test_coco_layout_converts_to_manifests(tmp_path):
    images = tmp_path / "train2017"
    images.mkdir()
    for i, mode in [(1, "RGB"), (2, "L"), (3, "RGB"), (5, "RGB")]:
        Image.new(mode, (40, 30)).save(images / f"{i:012d}.jpg")
    coco = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30} for i in (1, 2, 3, 4, 5)],
            "annotations": [{"image_id": 1, "id": 10, "caption": "A cat  on a mat. "},
                            {"image_id": 1, "id": 11, "caption": "A sleepy cat."},
                            {"image_id": 2, "id": 12, "caption": "A grey dog."},
                            {"image_id": 4, "id": 13, "caption": "No file for this one."},
                            {"image_id": 5, "id": 14, "caption": "A red bus."}]}  # picture 3: no caption
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(coco))
    out = tmp_path / "coco"
    coco_main(["--captions", str(tmp_path / "annotations" / "captions_train2017.json"), "--images", str(images),
               "--out", str(out), "--held-out", "1"])
    lines = {s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()]
             for s in ("train", "val", "test")}
    assert [len(lines[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    recs = {r["coco_id"]: r for rs in lines.values() for r in rs}
    assert set(recs) == {1, 2, 5}  # 3 has no caption, 4 no file
    assert recs[1]["caption"] == "A cat on a mat." and recs[1]["captions"] == ["A cat on a mat.", "A sleepy cat."]
    assert (out / recs[2]["image"]).resolve() == (images / "000000000002.jpg").resolve()  # relative to the manifest


def test_coco_missing_file_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "omni.coco", "--captions", str(tmp_path / "nope.json"),
                        "--images", str(tmp_path), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.json: file not found" in r.stderr


def test_world_lines_hold_captions_questions_and_answers_but_no_held_out_pair():
    lines = shapes.world_lines(200, seed=3)
    assert lines == shapes.world_lines(200, seed=3) and lines != shapes.world_lines(200, seed=4)
    assert {"how many shapes are there?", "yes", "no"} <= set(lines)
    assert sum(line.startswith("a ") for line in lines) == 200  # one caption a picture
    for colour, shape in shapes.HELD_OUT:
        assert not any(f"{colour} {shape}" in line for line in lines), (colour, shape)


@pytest.mark.parametrize("flag", ["--n-train", "--n-test", "--family"])
def test_a_count_below_one_is_one_clear_line(tmp_path, flag):
    r = subprocess.run([sys.executable, "-m", "omni.shapes", "--out", str(tmp_path), flag, "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {flag} 0: must be at least 1"
    assert not list(tmp_path.iterdir())  # nothing drawn
