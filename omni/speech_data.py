"""Build TinyOmni's speech data offline: sentences spoken by many synthetic voices, or by one.

    python -m omni.speech_data --out data/speech_tiny            # about 2 minutes on 2 cores
    python -m omni.speech_data --out data/voice_tiny --voice en-us+m1   # one voice, for stage D

Sentences come from two places: short sentences of the Austen novels (`data/austen`, the stage A
corpus) and the captions, questions and answers of the tiny image world (`omni/shapes.py`) that
stages C and E use. eSpeak NG (`omni/tts.py`) speaks them. A voice identity is an accent (British,
American, Scottish, ...) x a variant (eSpeak's timbres: m1..m8, f1, f4, klatt, ...) with its own
speaking rate and pitch.

Splits (the point of the test split is generalisation to new speakers, not memory):
- train: voices made of the training variants (in every accent);
- val:   the same voices as train, Austen sentences never used in training;
- test:  only voices whose variant never occurs in training, in any accent (optionally whole
         accents too, --test-accents), and Austen sentences never used in training.
The image-world sentences come from a small grammar, so the same one can occur in two splits;
what the test split holds out there is the voice. Each split also holds bare answers ("purple",
"top left", "three": stage E's answers, --answer-share of its size, source "answer"), so that the
recogniser, the judge of stage E's spoken answers, has heard a word said on its own; a model that
only ever heard sentences hears eSpeak's own "bottom" as "butom" (chapter 8).
Output: `wav/*.wav` (16 kHz mono) and `train.jsonl`, `val.jsonl`, `test.jsonl` with one line per
clip: {"audio": "wav/train_000000.wav", "text": ..., "speaker": ..., "duration": seconds,
"source": "austen", "world" or "answer"} (`source` is optional in a manifest; it lets the stage report
error rates per kind of sentence).

One voice (--voice ACCENT+VARIANT, stage D's voice to imitate): the same sentence kinds spoken by
that voice alone, every sentence text (normalized) at most once in the whole set, so val and test
sentences are never trained on; test is mostly image-world sentences (--test-world-share). Rows
also hold "words": the start time in seconds of each word of `text.split()`, from eSpeak's own
word events (the clip's end ends the last word), and "phonemes": eSpeak's phoneme events, [start
in seconds, mnemonic] in order (the Talker's phoneme teacher). A clip whose events do not match its words one
to one (eSpeak read something as two words, or skipped one) is left out and counted. The train split
also holds every bare answer of the image world ("purple", "top left", "three", "yes": stage E's
answers, which the Talker speaks) --answer-copies times each; val and test never hold them.

Determinism: the same seed gives the same sentences, voices and audio. eSpeak keeps state from one
utterance to the next (pitch flutter phase, noise generators), so each shard of clips is spoken in
a fresh process, in a fixed order; variants with breath noise are left out because eSpeak's breath
noise differs from run to run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import soundfile as sf

from omni import shapes
from omni.config import UserError, writable_dir
from omni.paths import repo_path
from omni.text_data import CHAPTER_RE, paragraphs
from omni.tts import Voice, WordEvent, english_accents, parse_voice, synthesize, synthesize_timed, voice_variants

# Variants that sound like a person (no robots, echoes, whispers or breath noise).
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Gene", "Jacky", "Mike",
            "max", "paul", "quincy", "robert", "travis", "michel", "boris", "ed", "Lee", "marcelo",
            "f1", "f4", "Annie", "Andrea", "anika", "aunty", "belinda", "linda", "steph", "steph2", "shelby",
            "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "adam", "benjamin", "david", "edward"]
TEST_VARIANTS = ["m3", "f4", "klatt3", "steph", "travis", "Gene"]  # never heard in training, in any accent
TEST_ACCENTS: list[str] = []  # accents never heard in training (try en-gb-scotland: a harder test)
SPLITS = ("train", "val", "test")
ANSWERS = sorted({*shapes.COLOURS, *shapes.SHAPES, *shapes.SIZES, *shapes.POSITIONS, *shapes.COUNT_WORDS,
                  "yes", "no"})  # every answer of the image world's questions (omni.shapes.questions)
ABBREV = ("Mr.", "Mrs.", "Dr.", "St.")  # a full stop after these does not end a sentence


def normalize(text: str) -> str:
    """The transcript of a spoken sentence: lower case, words and inner apostrophes only."""
    text = re.sub(r"[-_]", " ", text.lower())
    words = [w.strip("'") for w in re.sub(r"[^a-z' ]", " ", text).split()]
    return " ".join(w for w in words if w)


def austen_sentences(folder: Path, min_words: int = 4, max_words: int = 10,
                     top_words: int = 1000) -> list[str]:
    """Short sentences that eSpeak reads as written: letters and punctuation only (no digits,
    which it would speak as words the transcript does not hold), no all-caps words (it may spell
    them), no headings, and only the `top_words` most frequent words of the novels, so that a
    model trained on a few hours of speech has heard every word it is asked to spell (the test
    is about new voices, not about spelling words never heard)."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise UserError(f"{folder}: no .txt books found; the Austen corpus belongs in data/austen")
    books = [CHAPTER_RE.sub("", f.read_text(encoding="utf-8")) for f in files]
    common = {w for w, _ in Counter(w for b in books for w in normalize(b).split()).most_common(top_words)}
    out = []
    for book in books:
        for para in paragraphs(book):
            pieces, merged = re.split(r"(?<=[.!?])\s+", para.replace("_", "")), []
            for p in pieces:  # glue "Mr." back to the name that follows it
                if merged and merged[-1].endswith(ABBREV):
                    merged[-1] += " " + p
                else:
                    merged.append(p)
            for s in merged:
                s = s.strip("\"' -")
                words = normalize(s).split()
                if (min_words <= len(s.split()) <= max_words and re.fullmatch(r"[A-Za-z ,.;:!?'\"-]+", s)
                        and not re.search(r"\b[A-Z]{2,}\b", s) and words and set(words) <= common):
                    out.append(s)
    return sorted(set(out))


def spoken_form(text: str) -> str:
    """The text eSpeak speaks for a one-voice clip: the sentence with its punctuation (prosody)
    but without quotes, underscores and hyphens, so that each word eSpeak reports is one word of
    `normalize(text)` at the position eSpeak says (quotes shift its positions, see omni/tts.py)."""
    text = re.sub(r"\s*--+\s*", ", ", text.replace("_", "").replace('"', ""))
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", "", text)  # quote marks; inner apostrophes stay
    text = re.sub(r"([,.;:!?])\s*,", r"\1", text)  # "Ah!, so" -> "Ah! so"
    return re.sub(r"\s+", " ", text).strip(" ,")


def word_starts(spoken: str, events: list[WordEvent], duration: float) -> list[float] | None:
    """Start times (s) of the words of `normalize(spoken)` from eSpeak's word events, or None when
    the events do not match the words: each event must fall inside its own word, in order, with
    starts rising and inside the clip. eSpeak speaks some pairs as one unit ("on the", "of the",
    "to be", "would have": one dictionary entry) and reports only the first word; a word without
    an event therefore shares the start of the word before it (a tie, counted by the caller)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", spoken) if normalize(m.group())]
    if any(len(normalize(spoken[a:b]).split()) != 1 for a, b in spans):
        return None  # a token that is two words (or none) cannot be timed
    starts: list[float | None] = [None] * len(spans)
    k = 0
    for e in events:  # events and words are both in text order: walk them together
        while k < len(spans) and spans[k][1] <= e.text_position:
            k += 1
        if k == len(spans) or e.text_position < spans[k][0] or starts[k] is not None:
            return None  # outside every word, or a second event on one word
        starts[k] = e.start
    timed = [t for t in starts if t is not None]
    if starts[0] is None or any(a >= b for a, b in zip(timed, timed[1:])) or not 0 <= timed[-1] < duration:
        return None
    for i in range(1, len(starts)):  # joined words take the start of their unit
        starts[i] = starts[i - 1] if starts[i] is None else starts[i]
    return starts


def world_sentence(rng: random.Random) -> str:
    """A caption, a question or an answer about a random picture of the tiny image world."""
    objects = shapes.sample_objects(rng, must_hold_out=False)
    kind = rng.random()
    if kind < 0.4:
        return shapes.caption(objects[: rng.randint(1, 2)])  # one or two objects: 2-4 seconds
    qa = rng.choice(shapes.questions(objects, rng, avoid_held_out=True))
    if kind < 0.85:
        return qa["q"]
    o = rng.choice(objects)
    return rng.choice([f"the {o['shape']} is {o['colour']}", f"it is {shapes.WHERE[o['position']]}",
                       f"there are {shapes.COUNT_WORDS[len(objects) - 1]} shapes", f"yes, it is {qa['a']}"])


def make_voices(rng: random.Random, test_accents: list[str], test_variants: list[str],
                rate: tuple[int, int], pitch: tuple[int, int]) -> dict[str, list[Voice]]:
    """Every accent x variant pair is one speaker with its own rate and pitch. Pairs with a
    held-out accent or variant speak only in the test split."""
    for name in test_variants:
        if name not in VARIANTS:
            raise UserError(f"--test-variants: '{name}' is not one of {', '.join(VARIANTS)}")
    for name in test_accents:
        if name not in english_accents():
            raise UserError(f"--test-accents: '{name}' is not one of {', '.join(english_accents())}")
    known = set(voice_variants())
    voices: dict[str, list[Voice]] = {"train": [], "test": []}
    for accent in english_accents():
        for variant in VARIANTS:
            if variant not in known:  # an older espeak-ng-data may lack a named variant
                continue
            v = Voice(accent, variant, rng.randint(*rate), rng.randint(*pitch))
            voices["test" if accent in test_accents or variant in test_variants else "train"].append(v)
    voices["val"] = voices["train"]
    return voices


def plan(seed: int, sizes: dict[str, int], austen_share: float, corpus: Path,
         test_accents: list[str], test_variants: list[str], rate=(140, 200), pitch=(30, 70),
         answer_share: float = 0.0) -> list[dict]:
    """Every clip to make (split, index, sentence, voice), decided up front from the seed; then
    answer_share x the split's size more clips of bare answers ("purple", "top left"; source
    "answer") spoken by the split's voices."""
    rng = random.Random(seed)
    voices = make_voices(rng, test_accents, test_variants, rate, pitch)
    book = austen_sentences(corpus)
    rng.shuffle(book)
    n_book = {s: round(sizes[s] * austen_share) for s in SPLITS}
    if sum(n_book.values()) > len(book):
        raise UserError(f"{corpus}: only {len(book)} short sentences for {sum(n_book.values())} "
                        "Austen clips; lower the sizes or --austen-share")
    clips, start = [], 0
    for split in SPLITS:  # disjoint slices: no Austen sentence is in two splits
        texts = [(t, "austen") for t in book[start: start + n_book[split]]]
        texts += [(world_sentence(rng), "world") for _ in range(sizes[split] - n_book[split])]
        start += n_book[split]
        rng.shuffle(texts)
        for i, (text, source) in enumerate(texts):
            clips.append({"split": split, "index": i, "spoken": text, "source": source,
                          "voice": rng.choice(voices[split])})
    # Bare answers last, from a generator of their own: the sentence clips, their voices and (since
    # each shard speaks its clips in list order) their audio are the same with or without them.
    rng = random.Random(f"{seed}-answers")
    for split in SPLITS:
        clips += [{"split": split, "index": sizes[split] + i, "spoken": rng.choice(ANSWERS), "source": "answer",
                   "voice": rng.choice(voices[split])} for i in range(round(sizes[split] * answer_share))]
    return clips


def plan_one_voice(seed: int, voice: Voice, sizes: dict[str, int], austen_share: float,
                   test_world_share: float, corpus: Path, answer_copies: int = 16,
                   answer_rate_spread: int = 15) -> list[dict]:
    """Every clip of a one-voice set: each normalized sentence at most once in the whole set (so no
    val or test sentence is trained on), test first so it gets the most common world sentences; then
    each bare answer answer_copies times in train only (one-word utterances: how stage E's answers sound),
    the copies at speaking rates spread evenly over the voice's rate +- answer_rate_spread words per
    minute, so the Talker hears each lone word at several lengths, not one."""
    rng = random.Random(seed)
    book = austen_sentences(corpus)
    rng.shuffle(book)
    seen: set[str] = set()
    book = [t for t in book if not (normalize(t) in seen or seen.add(normalize(t)))]
    seen.clear()
    n_book = {s: round(sizes[s] * (1 - test_world_share if s == "test" else austen_share)) for s in SPLITS}
    if sum(n_book.values()) > len(book):
        raise UserError(f"{corpus}: only {len(book)} short sentences for {sum(n_book.values())} "
                        "Austen clips; lower the sizes or --austen-share")
    clips, start = [], 0
    # copy k of each answer at rate - spread + k * (2 spread / (copies - 1)); one copy keeps the voice's own rate
    n = max(1, answer_copies - 1)
    paced = [replace(voice, rate=voice.rate - answer_rate_spread + round(2 * answer_rate_spread * k / n))
             for k in range(answer_copies)] if answer_copies > 1 else [voice] * answer_copies
    seen |= {normalize(a) for a in ANSWERS}  # never drawn as a val or test sentence
    for split in ("test", "val", "train"):
        texts = [(t, "austen", voice) for t in book[start: start + n_book[split]]]
        start += n_book[split]
        tries = 0
        while len(texts) < sizes[split]:  # distinct image-world sentences, drawn from the grammar
            t = world_sentence(rng)
            tries += 1
            if normalize(t) not in seen:
                seen.add(normalize(t))
                texts.append((t, "world", voice))
            elif tries > 200 * sizes[split]:
                raise UserError(f"the image world has about {len(seen)} distinct sentences, too few for "
                                f"--{split} {sizes[split]}; lower the sizes or raise --austen-share")
        if split == "train":
            texts += [(a, "world", v) for a in ANSWERS for v in paced]
        rng.shuffle(texts)
        clips += [{"split": split, "index": i, "spoken": t, "source": src, "voice": v, "timed": True}
                  for i, (t, src, v) in enumerate(texts)]
    return clips


def _speak_shard(args: tuple[list[dict], str]) -> list[dict]:
    """Runs in a fresh process: synthesize, write wavs, return manifest rows. A one-voice clip
    ("timed") also gets its word starts; one whose events do not match is marked, not written."""
    shard, out = args
    rows = []
    for c in shard:
        row = {"split": c["split"], "index": c["index"], "text": normalize(c["spoken"]),
               "speaker": c["voice"].speaker_id, "source": c["source"]}
        if c.get("timed"):
            spoken = spoken_form(c["spoken"])
            wav, events, phonemes = synthesize_timed(spoken, c["voice"])
            row["words"] = word_starts(spoken, events, len(wav) / 16000)
            if row["words"] is None or normalize(spoken) != row["text"]:
                rows.append({**row, "unmatched": spoken})
                continue
            row["words"] = [round(t, 3) for t in row["words"]]
            row["phonemes"] = [[round(p.start, 3), p.symbol] for p in phonemes]
        else:
            wav = synthesize(c["spoken"], c["voice"])
        rel = f"wav/{c['split']}_{c['index']:06d}.wav"
        sf.write(Path(out) / rel, wav, 16000, subtype="PCM_16")
        rows.append({**row, "audio": rel, "duration": round(len(wav) / 16000, 3)})
    return rows


def build(out: str | Path, seed: int = 0, train: int = 6000, val: int = 300, test: int = 600,
          austen_share: float = 0.25, corpus: str = "data/austen", test_accents=TEST_ACCENTS,
          test_variants=TEST_VARIANTS, workers: int = 2, shards: int = 2, voice: str | None = None,
          rate: int = 175, pitch: int = 50, test_world_share: float = 0.8,
          answer_copies: int = 16, answer_share: float = 0.1, answer_rate_spread: int = 15) -> dict[str, Path]:
    """Write the data set to `out`; returns {split: manifest path}. A folder already built with the
    same settings is left as it is (its build.json says how it was made). With `voice`
    ('ACCENT+VARIANT') it is a one-voice set with word timings (see the module docstring)."""
    t0 = time.time()
    out_dir = repo_path(out)
    one = parse_voice(voice, rate, pitch) if voice else None  # a bad name fails before any work
    settings = {"seed": seed, "train": train, "val": val, "test": test, "austen_share": austen_share,
                "corpus": corpus, "test_accents": list(test_accents), "test_variants": list(test_variants),
                "shards": shards, "answer_share": answer_share}
    if one:
        settings = {"seed": seed, "voice": one.speaker_id, "train": train, "val": val, "test": test,
                    "austen_share": austen_share, "test_world_share": test_world_share, "corpus": corpus,
                    "shards": shards, "events": "words+phonemes", "answer_copies": answer_copies,
                    "answer_rate_spread": answer_rate_spread}
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    done = out_dir / "build.json"
    built = done.is_file() and json.loads(done.read_text()) == settings
    if built and all(p.is_file() for p in paths.values()):
        print(f"{out}: already built with these settings (see {done.name}); delete the folder to rebuild")
        return paths
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    sizes = {"train": train, "val": val, "test": test}
    if one:
        clips = plan_one_voice(seed, one, sizes, austen_share, test_world_share, repo_path(corpus), answer_copies,
                               answer_rate_spread)
    else:
        clips = plan(seed, sizes, austen_share, repo_path(corpus), list(test_accents), list(test_variants),
                     answer_share=answer_share)
    jobs = [(clips[k::shards], str(out_dir)) for k in range(shards)]
    # spawn + one task per process: every shard starts from eSpeak's freshly loaded state
    with mp.get_context("spawn").Pool(max(1, min(workers, shards)), maxtasksperchild=1) as pool:
        rows = [r for part in pool.map(_speak_shard, jobs, chunksize=1) for r in part]
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["index"]))
    unmatched = [r for r in rows if "unmatched" in r]
    rows = [r for r in rows if "unmatched" not in r]
    for split in SPLITS:
        keys = ("audio", "text", "speaker", "duration", "source") + (("words", "phonemes") if one else ())
        part = [{k: r[k] for k in keys} for r in rows if r["split"] == split]
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in part))
        hours = sum(r["duration"] for r in part) / 3600
        print(f"{split:>5}: {len(part):5d} clips, {hours:.2f} h, {len({r['speaker'] for r in part})} voices "
              f"-> {Path(out) / paths[split].name}")
    if one:
        _report_words(rows, unmatched)
    done.write_text(json.dumps(settings, indent=2) + "\n")  # written last: a killed build is redone
    print(f"built {len(rows)} clips in {time.time() - t0:.0f}s")
    return paths


def _report_words(rows: list[dict], unmatched: list[dict]) -> None:
    """The word timings' report line, and a few clips to look at (a proxy for listening)."""
    n_words = sum(len(r["words"]) for r in rows)
    ties = Counter(" ".join(r["text"].split()[i - 1: i + 1]) for r in rows
                   for i in range(1, len(r["words"])) if r["words"][i] == r["words"][i - 1])
    example = f" (e.g. {unmatched[0]['unmatched']!r})" if unmatched else ""
    print(f"word timings: {n_words} words in {len(rows)} clips; skipped {len(unmatched)} clips whose eSpeak "
          f"word events did not match the words{example}; {sum(ties.values())} words share their start with "
          f"the word before (eSpeak speaks them as one unit: {', '.join(p for p, _ in ties.most_common(4))})")
    per_word = [r["duration"] / len(r["words"]) for r in rows]
    print(f"durations {min(r['duration'] for r in rows):.2f}-{max(r['duration'] for r in rows):.2f} s, "
          f"{sum(per_word) / len(per_word):.2f} s per word on average")
    for r in rows[:: max(1, len(rows) // 3)][:3]:
        print(f"  {r['audio']} ({r['duration']:.2f} s): "
              + " ".join(f"{w}@{t:.2f}" for w, t in zip(r["text"].split(), r["words"])))


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/speech_tiny", help="output folder (relative to the repo root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voice", help="ACCENT+VARIANT, e.g. en-us+m1: a one-voice set with word timings")
    p.add_argument("--rate", type=int, default=175, help="--voice: words per minute")
    p.add_argument("--pitch", type=int, default=50, help="--voice: base pitch, 0..100")
    p.add_argument("--train", type=int, help="training clips (default 6000; 3000 with --voice)")
    p.add_argument("--val", type=int, help="validation clips (default 300; 100 with --voice)")
    p.add_argument("--test", type=int, help="test clips (default 600; 200 with --voice)")
    p.add_argument("--test-world-share", type=float, default=0.8,
                   help="--voice: fraction of image-world sentences in test (the rest are Austen)")
    p.add_argument("--answer-copies", type=int, default=16,
                   help="--voice: copies of each bare answer (\"purple\", \"top left\") in train")
    p.add_argument("--answer-rate-spread", type=int, default=15,
                   help="--voice: the copies' speaking rates spread evenly over --rate +- this (words per minute)")
    p.add_argument("--austen-share", type=float, default=0.25, help="fraction of Austen sentences")
    p.add_argument("--answer-share", type=float, default=0.1,
                   help="many voices: bare answers (\"purple\", \"top left\") added to each split, "
                        "as a fraction of its size")
    p.add_argument("--corpus", default="data/austen", help="folder of .txt books")
    p.add_argument("--test-accents", default=",".join(TEST_ACCENTS), help="comma-separated held-out accents")
    p.add_argument("--test-variants", default=",".join(TEST_VARIANTS), help="held-out variants, a,b,...")
    p.add_argument("--workers", type=int, default=2, help="processes speaking in parallel")
    a = p.parse_args(argv)
    writable_dir(a.out)  # one clear line instead of a traceback from a worker process
    split_list = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    sizes = [n if n is not None else d for n, d in zip((a.train, a.val, a.test),
                                                        (3000, 100, 200) if a.voice else (6000, 300, 600))]
    return build(a.out, a.seed, *sizes, a.austen_share, a.corpus, split_list(a.test_accents),
                 split_list(a.test_variants), a.workers, voice=a.voice, rate=a.rate, pitch=a.pitch,
                 test_world_share=a.test_world_share, answer_copies=a.answer_copies, answer_share=a.answer_share,
                 answer_rate_spread=a.answer_rate_spread)


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
