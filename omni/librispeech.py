"""Turn a LibriSpeech folder into TinyOmni manifests, split by speaker.

    python -m omni.librispeech --root /data/LibriSpeech/train-clean-100 --out data/librispeech

LibriSpeech (Panayotov et al. 2015, https://www.openslr.org/12) is read audiobooks, laid out as
SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac with one SPEAKER-CHAPTER.trans.txt per chapter holding
"SPEAKER-CHAPTER-UTT TRANSCRIPT" lines in upper case. This writes the same JSON-lines manifests
as `omni.speech_data` (audio path relative to the manifest's folder, text in lower case,
speaker, duration), so `train_audio_enc.py` trains on either without a change. Whole speakers
go to val and test: as with the synthetic voices, the test split measures new speakers.
Nothing is copied or converted; the features are cached on first use.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import soundfile as sf

from omni.config import UserError, writable_dir
from omni.paths import repo_path


def read_transcripts(root: Path) -> list[dict]:
    """Every utterance under `root`: flac path, lower-case text, speaker id."""
    files = sorted(root.glob("*/*/*.trans.txt"))
    if not files:
        raise UserError(f"{root}: no SPEAKER/CHAPTER/*.trans.txt files; --root must be a LibriSpeech "
                        "subset folder such as LibriSpeech/train-clean-100")
    rows = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            if not text.strip():
                raise UserError(f"{f}:{n}: expected 'UTTERANCE-ID TRANSCRIPT'")
            rows.append({"path": f.parent / f"{utt}.flac", "text": text.strip().lower(),
                         "speaker": utt.split("-")[0]})
    return rows


def prepare(root: str | Path, out: str | Path, val_fraction: float = 0.05, test_fraction: float = 0.05,
            seed: int = 0) -> dict[str, Path]:
    """Write train/val/test.jsonl to `out`; returns {split: manifest path}."""
    root, out_dir = repo_path(root), repo_path(out)
    rows = read_transcripts(root)
    speakers = sorted({r["speaker"] for r in rows})
    if len(speakers) < 3:
        raise UserError(f"{root}: {len(speakers)} speaker(s); a speaker split needs at least 3")
    random.Random(seed).shuffle(speakers)
    n_val = max(1, round(val_fraction * len(speakers)))
    n_test = max(1, round(test_fraction * len(speakers)))
    split_of = {s: "test" for s in speakers[:n_test]}
    split_of.update({s: "val" for s in speakers[n_test: n_test + n_val]})
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    missing = 0
    for r in rows:
        if not r["path"].is_file():
            missing += 1  # listed in a transcript but not on disk: counted, reported below
            continue
        duration = sf.info(str(r["path"])).duration
        row = {"audio": os.path.relpath(r["path"], out_dir), "text": r["text"], "speaker": r["speaker"],
               "duration": round(duration, 3)}
        lines[split_of.get(r["speaker"], "train")].append(json.dumps(row))
    paths = {}
    for split, part in lines.items():
        paths[split] = out_dir / f"{split}.jsonl"
        paths[split].write_text("".join(line + "\n" for line in part))
        print(f"{split:>5}: {len(part)} utterances -> {paths[split]}")
    print(f"{len(speakers)} speakers ({n_val} val, {n_test} test); "
          f"{missing} transcript lines without a .flac file")
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="a subset folder, e.g. LibriSpeech/train-clean-100")
    p.add_argument("--out", default="data/librispeech", help="where the manifests go")
    p.add_argument("--val-fraction", type=float, default=0.05, help="fraction of speakers held out for val")
    p.add_argument("--test-fraction", type=float, default=0.05, help="fraction of speakers held out for test")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    writable_dir(a.out)
    return prepare(a.root, a.out, a.val_fraction, a.test_fraction, a.seed)


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
