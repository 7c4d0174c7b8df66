"""Transcribe your own recordings with a stage B checkpoint, and measure the recogniser on speech
the project never makes.

    python -m omni.transcribe runs/audio_enc_tiny/best.pt clip.wav [more.flac ...]
    python -m omni.transcribe runs/audio_enc_tiny/best.pt --other-synth 40    # needs flite

Any file soundfile reads (wav, flac, ogg) at any sample rate: it is resampled to the model's
rate (16 kHz) with `omni.audio.resample`, and a stereo file is folded to mono by averaging its
channels. One line per file, `path: transcript`. A missing, unreadable or empty file is one
line on stderr; the others are still transcribed, and the command exits with code 2 at the end.

--other-synth N asks a question the stage B test split cannot: the test voices are new, but
they are still eSpeak NG's. Here a different synthesizer, flite (CMU's Festival-lite: diphone
and statistical-parametric voices, nothing like eSpeak's formant sound), reads N short Austen
sentences that no split of data/speech_tiny holds, and eSpeak voices the model never heard read
the same sentences, so the gap between the two error rates is the cost of a new synthesizer
alone. flite is a system package (`apt-get install flite`); without it the measurement stops
with one line saying so. Chapter: chapters/04_stage_b_audio_encoder.md.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from omni.audio import load_audio
from omni.config import UserError, writable_dir
from omni.metrics import cer, wer
from omni.paths import repo_path
from omni.recogniser import Recogniser, load_recogniser

FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # flite's built-in voices (`flite -lv`); kal is 8 kHz


def read_clip(path: str | Path, sample_rate: int) -> np.ndarray:
    """A file as a mono float32 waveform (N,) at `sample_rate`, or a UserError naming the file."""
    p = repo_path(path)
    if not p.is_file():
        raise UserError(f"{path}: file not found")
    try:
        wav = load_audio(p, sample_rate)  # (N,): channels averaged, resampled
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: cannot read this audio file ({str(e).splitlines()[0][:120]}); "
                        "use wav, flac or ogg") from None
    if len(wav) < sample_rate // 10:
        raise UserError(f"{path}: {len(wav) / sample_rate * 1000:.0f} ms of audio, too short to transcribe")
    return wav


def transcribe_files(rec: Recogniser, paths: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """[(path, transcript)] of the readable files, and one error line per file that is not."""
    clips, errors = [], []
    for path in paths:
        try:
            clips.append((path, read_clip(path, rec.front_end.sample_rate)))
        except UserError as e:
            errors.append(str(e))
    texts = rec.transcribe([w for _, w in clips], rec.front_end.sample_rate) if clips else []
    return [(path, t) for (path, _), t in zip(clips, texts)], errors


# ---------------------------------------------------------------------------------------------
# The recogniser on another synthesizer: flite against unseen eSpeak voices, same sentences.


def unseen_sentences(n: int, seed: int = 0, corpus: str = "data/austen",
                     speech_data: str = "data/speech_tiny") -> tuple[list[str], int]:
    """n Austen sentences (as written) whose transcript is in no manifest of the stage B data,
    chosen at random with `seed`; also how many candidates were left out for being there."""
    from omni.audio import read_manifest
    from omni.speech_data import SPLITS, austen_sentences, normalize

    used = {r["text"] for s in SPLITS if (m := repo_path(speech_data) / f"{s}.jsonl").is_file()
            for r in read_manifest(m)}
    if not used:
        raise UserError(f"{speech_data}: no manifests; build the stage B data first (python -m omni.speech_data)")
    book = austen_sentences(repo_path(corpus))
    fresh = [s for s in book if normalize(s) not in used]
    if len(fresh) < n:
        raise UserError(f"--other-synth {n}: only {len(fresh)} Austen sentences are outside {speech_data}")
    return random.Random(seed).sample(fresh, n), len(book) - len(fresh)


def flite_say(text: str, voice: str, path: Path) -> tuple[np.ndarray, int]:
    """Have flite read `text` with `voice` into `path`; the waveform (N,) and its sample rate."""
    r = subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], capture_output=True, text=True)
    if r.returncode != 0 or not path.is_file():
        raise UserError(f"flite -voice {voice} failed (exit {r.returncode}): {r.stderr.strip()[:200]}")
    wav, sr = sf.read(str(path), dtype="float32")
    return wav, sr


def other_synth(rec: Recogniser, n: int, out: str, seed: int = 0) -> dict[str, float]:
    """Print the error rates of `rec` on n unseen sentences read by flite's voices and by unseen
    eSpeak voices; the clips are written to `out` to listen to. Returns the overall rates."""
    from omni.speech_data import TEST_VARIANTS, normalize
    from omni.tts import Voice, english_accents, synthesize

    if shutil.which("flite") is None:
        raise UserError("--other-synth needs the flite synthesizer: `apt-get install flite` (Debian, Ubuntu) "
                        "or `brew install flite` (macOS)")
    folder = writable_dir(out, "--synth-out")
    texts, overlap = unseen_sentences(n, seed)
    refs = [normalize(t) for t in texts]
    print(f"{n} short Austen sentences (seed {seed}) that no split of data/speech_tiny holds "
          f"({overlap} others are in it, left out)")
    sr = rec.front_end.sample_rate
    rng = random.Random(seed)
    rows = []  # (synthesizer, voice, reference, hypothesis)
    flite_rates = {}
    for k, text in enumerate(texts):  # as written, the way the stage B data gives them to eSpeak
        voice = FLITE_VOICES[k % len(FLITE_VOICES)]
        wav, flite_rates[voice] = flite_say(text, voice, folder / f"flite_{k:03d}_{voice}.wav")
        hyp = rec.transcribe([read_clip(folder / f"flite_{k:03d}_{voice}.wav", sr)], sr)[0]
        rows.append(("flite", voice, refs[k], hyp))
        # the same sentence by an eSpeak voice of the test split (a held-out variant, any accent)
        ev = Voice(rng.choice(english_accents()), TEST_VARIANTS[k % len(TEST_VARIANTS)],
                   rng.randint(140, 200), rng.randint(30, 70))
        wav = synthesize(text, ev, sr)
        sf.write(folder / f"espeak_{k:03d}.wav", wav, sr, subtype="PCM_16")
        rows.append(("eSpeak", ev.speaker_id, refs[k], rec.transcribe([wav], sr)[0]))

    def line(label: str, pick: list[tuple]) -> str:
        r, h = [p[2] for p in pick], [p[3] for p in pick]
        return f"{label:<34}{len(pick):>6}{cer(r, h):>9.2%}{wer(r, h):>9.2%}"

    print(f"{'':<34}{'clips':>6}{'CER':>9}{'WER':>9}")
    print(line("eSpeak NG, voices never heard", [r for r in rows if r[0] == "eSpeak"]))
    print(line("flite, all voices", [r for r in rows if r[0] == "flite"]))
    for v in FLITE_VOICES:
        print(line(f"  flite {v} ({flite_rates[v] // 1000} kHz)", [r for r in rows if r[1] == v]))
    print("examples (flite):")
    for _, voice, ref, hyp in [r for r in rows if r[0] == "flite"][:len(FLITE_VOICES)]:
        print(f"  {voice:<6} ref: {ref}\n         hyp: {hyp}")
    print(f"clips in {out}")
    pick = {s: [r for r in rows if r[0] == s] for s in ("flite", "eSpeak")}
    return {f"{s}_{m.__name__}": m([p[2] for p in ps], [p[3] for p in ps]) for s, ps in pick.items()
            for m in (cer, wer)}


def main(argv: list[str] | None = None) -> list[tuple[str, str]] | dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a stage B checkpoint, e.g. runs/audio_enc_tiny/best.pt")
    ap.add_argument("files", nargs="*", help="audio files to transcribe (wav, flac, ogg; any sample rate)")
    ap.add_argument("--other-synth", type=int, default=0, metavar="N",
                    help="measure the model on N sentences read by flite and by unseen eSpeak voices")
    ap.add_argument("--synth-out", default="data/other_synth", help="where --other-synth writes its clips")
    ap.add_argument("--seed", type=int, default=0, help="which sentences and voices --other-synth picks")
    args = ap.parse_args(argv)
    if not args.files and not args.other_synth:
        raise UserError("give audio files to transcribe (or --other-synth N)")
    rec = load_recogniser(args.checkpoint)
    if args.other_synth:
        return other_synth(rec, args.other_synth, args.synth_out, args.seed)
    results, errors = transcribe_files(rec, args.files)
    for path, text in results:
        print(f"{path}: {text}")
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    if errors:
        raise UserError(f"{len(errors)} of {len(args.files)} files could not be transcribed (see above)")
    return results


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
