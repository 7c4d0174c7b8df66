"""Turn an LJSpeech-style folder into stage D manifests, with rough word timings.

    python -m omni.ljspeech --root data/LJSpeech-1.1 --out data/ljspeech

LJSpeech (Ito & Johnson 2017, https://keithito.com/LJ-Speech-Dataset/) is one speaker reading
non-fiction, 13,100 clips (about 24 h) at 22,050 Hz: `wavs/ID.wav` and `metadata.csv` with one
`ID|text|normalized text` line per clip (the third field spells out numbers and abbreviations).
Any single-speaker folder in this layout works. This writes the manifests of
`python -m omni.speech_data --voice` (audio path relative to the manifest's folder, the
normalized transcript, speaker, duration, source, and "words"), so the stage D configs read
either. Nothing is copied or converted; the features are cached on first use.

Splits, a fixed rule: clips sorted by id, clip i goes to test when i % every == 0, to val when
i % every == 1, else to train (every 50: 2% each, spread over the whole book).

Word timings are a rough alignment. LJSpeech has none, so each clip's transcript is spoken by
eSpeak (omni/tts.py) and eSpeak's word starts are stretched to the clip's real duration. That is
right where the reader's pace is even and off by a few hundred ms around pauses; a Talker that
learns from it still has to learn the fine timing from the audio. The stage B recogniser could
align better (CTC forced alignment), but it is the judge of the Talker's speech: timings taught
by it would let the Talker learn what the judge wants to hear, so it must never teach it.
Missing or unreadable wavs, empty transcripts and clips whose eSpeak words do not match the
transcript are counted and reported, never dropped silently.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import soundfile as sf

from omni.config import UserError, writable_dir
from omni.paths import repo_path
from omni.speech_data import normalize, word_starts
from omni.tts import parse_voice, synthesize_with_words


def read_metadata(root: Path) -> list[dict]:
    """(id, normalized transcript) of every line of `root/metadata.csv`, sorted by id."""
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise UserError(f"{meta} not found: --root must be an LJSpeech-style folder (wavs/ and metadata.csv)")
    rows = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip():
            raise UserError(f"{meta}:{n}: expected 'ID|text|normalized text'")
        text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]  # normalized, if given
        rows.append({"id": fields[0].strip(), "text": normalize(text)})
    return sorted(rows, key=lambda r: r["id"])


def estimate_words(text: str, duration: float, voice: str) -> list[float] | None:
    """Word start times (s) for a clip of `duration` seconds saying `text`: eSpeak's word starts,
    stretched to the clip; None when eSpeak's events do not match the words."""
    wav, events = synthesize_with_words(text, parse_voice(voice))
    starts = word_starts(text, events, len(wav) / 16000)
    if starts is None:
        return None
    scale = duration / (len(wav) / 16000)  # (real seconds) per (eSpeak second)
    return [round(t * scale, 3) for t in starts]


def _timed_rows(args: tuple[list[dict], str, str, str]) -> list[dict]:
    """One chunk of clips: read each wav's header, time its words. Each row gets a "problem" or not."""
    chunk, root, out_dir, voice = args
    rows = []
    for r in chunk:
        path = Path(root) / "wavs" / f"{r['id']}.wav"
        if not r["text"]:
            rows.append({**r, "problem": "empty transcript"})
            continue
        try:
            duration = sf.info(str(path)).duration
        except Exception:  # missing file, not audio: libsndfile says which, we count it
            rows.append({**r, "problem": "missing or unreadable wav"})
            continue
        words = estimate_words(r["text"], duration, voice) if duration > 0 else None
        if duration <= 0 or words is None:
            rows.append({**r, "problem": "empty audio" if duration <= 0 else "words not matched"})
            continue
        rows.append({"id": r["id"], "audio": os.path.relpath(path, out_dir), "text": r["text"],
                     "speaker": Path(root).name, "duration": round(duration, 3), "source": "ljspeech",
                     "words": words})
    return rows


def prepare(root: str | Path, out: str | Path, every: int = 50, voice: str = "en-us+m1",
            workers: int = 2) -> dict[str, Path]:
    """Write train/val/test.jsonl to `out`; returns {split: manifest path}."""
    t0 = time.time()
    root, out_dir = repo_path(root), writable_dir(out)
    if every < 3:
        raise UserError(f"--every {every}: must be at least 3 (test and val take one clip in every `every`)")
    parse_voice(voice)  # a bad name fails before any work
    clips = read_metadata(root)
    chunks = [(clips[k: k + 200], str(root), str(out_dir), voice) for k in range(0, len(clips), 200)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = [r for part in pool.map(_timed_rows, chunks, chunksize=1) for r in part]
    else:
        rows = [r for c in chunks for r in _timed_rows(c)]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    problems: dict[str, list[str]] = {}
    for i, r in enumerate(rows):  # rows keep the sorted order of `clips`: i is the clip's rank by id
        if "problem" in r:
            problems.setdefault(r["problem"], []).append(r["id"])
            continue
        split = "test" if i % every == 0 else "val" if i % every == 1 else "train"
        lines[split].append(json.dumps({k: v for k, v in r.items() if k != "id"}))
    paths = {}
    for split, part in lines.items():
        paths[split] = out_dir / f"{split}.jsonl"
        paths[split].write_text("".join(line + "\n" for line in part))
        print(f"{split:>5}: {len(part)} clips -> {paths[split]}")
    skipped = ", ".join(f"{len(ids)} {what} (e.g. {ids[0]})" for what, ids in sorted(problems.items()))
    print(f"{len(clips)} metadata lines; skipped {sum(map(len, problems.values()))}: {skipped or 'none'}; "
          f"word starts are eSpeak's, stretched to each clip ({time.time() - t0:.0f}s)")
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder with wavs/ and metadata.csv, e.g. data/LJSpeech-1.1")
    p.add_argument("--out", default="data/ljspeech", help="where the manifests go")
    p.add_argument("--every", type=int, default=50, help="one clip in `every` goes to test, one to val")
    p.add_argument("--voice", default="en-us+m1", help="the eSpeak voice whose word timings are stretched")
    p.add_argument("--workers", type=int, default=2, help="processes timing words in parallel")
    a = p.parse_args(argv)
    return prepare(a.root, a.out, a.every, a.voice, a.workers)


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
