"""Turn LLaVA-style instruction data into stage E manifests (for the GPU config).

LLaVA's visual instruction data (Liu et al. 2023, LLaVA-Instruct-150K and llava_v1_5_mix665k.json)
is one JSON list; each entry names a COCO picture and a conversation:

    [{"id": "000000033471", "image": "000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus in the image is white and red."}, ...]}, ...]

This script writes the manifest format of the shapes world, which sft_omni.py reads, one picture a
line: {"image": path relative to the manifest, "caption": the first answer, "questions": [{"q", "a"}]}
(each human/gpt pair of the conversation is one question; "<image>" is dropped, since the chat
template places the picture itself):

    python -m omni.llava --json llava_instruct_150k.json --images coco/train2017 --out data/llava

A seeded shuffle sets --held-out pictures aside as val.jsonl and as many as test.jsonl; the rest is
train.jsonl. Entries without a picture (text-only turns), with a missing picture file or with a
malformed conversation are skipped, counted and reported by reason.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path

from omni.config import UserError, writable_dir
from omni.paths import repo_path


def convert(entry, images: Path, out_dir: Path) -> dict:
    """One LLaVA entry -> one manifest record; ValueError(reason) when it cannot be used."""
    if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
        raise ValueError("malformed entry")
    if not isinstance(entry.get("image"), str):
        raise ValueError("no picture (text-only)")
    path = images / entry["image"]
    if not path.is_file():
        raise ValueError("picture file missing")
    turns = entry["conversations"]
    pairs = []
    for human, gpt in zip(turns[::2], turns[1::2]):
        if not (isinstance(human, dict) and isinstance(gpt, dict) and human.get("from") == "human"
                and gpt.get("from") == "gpt" and isinstance(human.get("value"), str)
                and isinstance(gpt.get("value"), str)):
            raise ValueError("malformed conversation (turns must alternate human, gpt)")
        q = " ".join(human["value"].replace("<image>", " ").split())
        a = gpt["value"].strip()
        if q and a:
            pairs.append({"q": q, "a": a})
    if not pairs:
        raise ValueError("malformed conversation (no question with an answer)")
    return {"image": os.path.relpath(path.resolve(), out_dir.resolve()), "caption": pairs[0]["a"], "questions": pairs}


def build(json_path: str, images: str, out: str, held_out: int = 500, seed: int = 0, limit: int = 0) -> dict[str, int]:
    src = repo_path(json_path)
    if not src.is_file():
        raise UserError(f"--json {json_path}: file not found (LLaVA's instruction JSON, e.g. llava_instruct_150k.json)")
    try:
        entries = json.loads(src.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--json {json_path}: not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise UserError(f"--json {json_path}: expected a JSON list of entries, as LLaVA's files are")
    image_dir = repo_path(images)
    if not image_dir.is_dir():
        raise UserError(f"--images {images}: folder not found (the COCO pictures the entries name)")
    out_dir = writable_dir(out)
    records, skipped = [], Counter()
    for entry in entries:
        try:
            records.append(convert(entry, image_dir, out_dir))
        except ValueError as e:
            skipped[str(e)] += 1
    random.Random(seed).shuffle(records)
    if limit:
        records = records[:limit]
    if len(records) <= 2 * held_out:
        raise UserError(f"--json {json_path}: {len(records)} usable entries, too few for --held-out {held_out} "
                        "pictures in val and in test")
    splits = {"val": records[:held_out], "test": records[held_out: 2 * held_out], "train": records[2 * held_out:]}
    for name, part in splits.items():
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    counts = {name: len(part) for name, part in splits.items()}
    why = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()) or "none"
    print(f"{out}: {counts['train']} train / {counts['val']} val / {counts['test']} test pictures, "
          f"{sum(len(r['questions']) for r in records)} questions; skipped {sum(skipped.values())} entries ({why})")
    return {**counts, "skipped": sum(skipped.values())}


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description="Turn LLaVA-style instruction JSON into stage E manifests.")
    p.add_argument("--json", required=True, help="LLaVA instruction file (a JSON list of entries)")
    p.add_argument("--images", required=True, help="folder of the pictures the entries name (COCO train2017)")
    p.add_argument("--out", default="data/llava", help="output folder for train/val/test.jsonl")
    p.add_argument("--held-out", type=int, default=500, help="pictures in val and in test, each")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--limit", type=int, default=0, help="keep at most this many pictures (0 = all)")
    a = p.parse_args(argv)
    return build(a.json, a.images, a.out, a.held_out, a.seed, a.limit)


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
