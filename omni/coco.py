"""Turn a COCO-style captions file into TinyOmni's image manifests (for the GPU config).

COCO captions (Chen et al. 2015, https://cocodataset.org) ship as one JSON file per split:

    {"images": [{"id": 9, "file_name": "000000000009.jpg", ...}, ...],
     "annotations": [{"image_id": 9, "id": 1, "caption": "A plate of food."}, ...]}

with about five captions per picture. This script writes the same manifest format as the shapes
world, one picture a line, its first caption in "caption" and all of them in "captions" (training
picks one at random for each batch, evaluation uses the first):

    python -m omni.coco --captions annotations/captions_train2017.json --images train2017/ --out data/coco

Pictures stay where they are (the manifest holds paths relative to its own folder). A seeded
shuffle of the pictures sets held_out of them aside as val.jsonl and as many as test.jsonl; the
rest is train.jsonl. Pictures with no caption or no file are counted and reported.
"""
import argparse
import json
import os
import random
import sys
from pathlib import Path

from omni.config import UserError, writable_dir
from omni.paths import repo_path


def read_coco(captions: Path, images: Path) -> tuple[list[dict], dict[str, int]]:
    """Records {"image": absolute path, "caption", "captions"} in image-id order, and skip counts."""
    if not captions.is_file():
        raise UserError(f"--captions {captions}: file not found (COCO's annotations/captions_*.json)")
    if not images.is_dir():
        raise UserError(f"--images {images}: folder not found (the folder of the split's .jpg files)")
    try:
        data = json.loads(captions.read_text())
        files = {im["id"]: im["file_name"] for im in data["images"]}
        texts: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            texts.setdefault(ann["image_id"], []).append(" ".join(ann["caption"].split()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"--captions {captions}: not a COCO captions file ({type(e).__name__}: {e}); "
                        "expected 'images' with id/file_name and 'annotations' with image_id/caption") from None
    records, skipped = [], {"no caption": 0, "no file": 0}
    for image_id in sorted(files):
        path = images / files[image_id]
        caps = [c for c in texts.get(image_id, []) if c]
        if not caps:
            skipped["no caption"] += 1
        elif not path.is_file():
            skipped["no file"] += 1
        else:
            records.append({"image": str(path.resolve()), "caption": caps[0], "captions": caps, "coco_id": image_id})
    return records, skipped


def write_manifests(records: list[dict], out: Path, held_out: int, seed: int = 0) -> dict[str, int]:
    """Shuffle with a fixed seed, set aside val and test, write the three manifests."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = min(held_out, len(records) // 3)
    splits = {"val": order[:held_out], "test": order[held_out:2 * held_out], "train": order[2 * held_out:]}
    out.mkdir(parents=True, exist_ok=True)
    for name, idx in splits.items():
        tmp = out / f"{name}.jsonl.tmp"
        with open(tmp, "w") as f:
            for k in sorted(idx):
                rec = dict(records[k], image=os.path.relpath(records[k]["image"], out))
                f.write(json.dumps(rec) + "\n")
        os.replace(tmp, out / f"{name}.jsonl")
    return {name: len(idx) for name, idx in splits.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="COCO captions JSON -> TinyOmni image manifests.")
    p.add_argument("--captions", required=True, help="COCO captions file, e.g. annotations/captions_train2017.json")
    p.add_argument("--images", required=True, help="folder of that split's pictures, e.g. train2017/")
    p.add_argument("--out", default="data/coco", help="output folder for train/val/test.jsonl")
    p.add_argument("--held-out", type=int, default=5000, help="pictures in each of val and test")
    a = p.parse_args(argv)
    try:
        writable_dir(a.out)  # fail before reading a large captions file
        records, skipped = read_coco(repo_path(a.captions), repo_path(a.images))
        if not records:
            raise UserError(f"--captions {a.captions}: no picture has both a caption and a file in {a.images}")
        counts = write_manifests(records, repo_path(a.out), a.held_out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)
    lost = ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
    print(f"wrote {counts} pictures to {a.out}" + (f"; skipped {lost}" if lost else ""))


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
