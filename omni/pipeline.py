"""The main job: every stage on its tiny config and the built-in offline data, one after another,
then a summary of each stage's held-out metric.

    python -m omni.pipeline                 # all five stages, then the omni demo
    python -m omni.pipeline --stages A      # only some

Each step is an ordinary command, printed before it runs, so you can run any of them by hand.
Training steps pass `--resume auto`: after an interruption, the same command carries on from the
newest checkpoint instead of starting again (and a finished stage is not trained twice).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass

from omni.paths import ROOT


@dataclass
class Stage:
    commands: list[list[str]]  # python arguments, run in order; training commands resume (--resume auto)
    reports: list[tuple[str, list[tuple[str, str, str]]]]  # (run directory, [(metrics.json key, label, format)])


STAGES = {
    "A": Stage([["train_text.py", "--config", "configs/thinker_tiny.json", "--resume", "auto"],
                ["-m", "omni.sample", "runs/thinker_tiny/best.pt", "--prompt", "It is a truth universally acknowledged",
                 "--tokens", "60"]],
               [("runs/thinker_tiny", [("bpb", "held-out bits per byte", "{:.3f}"),
                                       ("unigram_bpb", "unigram reference", "{:.3f}"),
                                       ("ppl", "held-out perplexity", "{:.1f}")])]),
    "B": Stage([["-m", "omni.speech_data", "--out", "data/speech_tiny"],
                ["train_audio_enc.py", "--config", "configs/audio_enc_tiny.json", "--resume", "auto"]],
               [("runs/audio_enc_tiny", [("test_cer", "unseen-voice CER", "{:.1%}"),
                                         ("test_wer", "unseen-voice WER", "{:.1%}"),
                                         ("val_cer", "validation CER", "{:.1%}")])]),
    "C": Stage([["-m", "omni.shapes", "--out", "data/shapes_tiny"],
                ["train_vision.py", "--config", "configs/vision_tiny.json", "--resume", "auto"]],
               [("runs/vision_tiny", [("test_t2i", "unseen-pair caption->image top-1 of 10", "{:.1%}"),
                                      ("test_colour", "unseen-pair colour", "{:.1%}"),
                                      ("test_shape", "unseen-pair shape", "{:.1%}")])]),
    "D": Stage([["-m", "omni.speech_data", "--out", "data/voice_tiny", "--voice", "en-us+m1"],
                ["train_talker.py", "--config", "configs/codec_tiny.json", "--resume", "auto"],
                ["train_talker.py", "--config", "configs/talker_tiny.json", "--resume", "auto"],
                ["-m", "omni.say", "runs/talker_tiny/best.pt", "a small red circle at the top",
                 "--out", "runs/talker_tiny/hello.wav"]],
               [("runs/codec_tiny", [("cer_vocoder", "held-out CER through the vocoder", "{:.1%}"),
                                     ("cer_codec", "through the codec", "{:.1%}"),
                                     ("bitrate", "bits per second", "{:.0f}")]),
                ("runs/talker_tiny", [("gen_cer", "Talker speech CER", "{:.1%}"),
                                      ("gen_cer_original", "eSpeak original CER", "{:.1%}"),
                                      ("gen_ended", "ended by themselves", "{:.0%}"),
                                      ("gen_rtf", "real-time factor", "{:.3f}")])]),
    "E": Stage([["-m", "omni.omni_data", "--out", "data/omni_tiny"],
                ["sft_omni.py", "--config", "configs/omni_tiny.json", "--resume", "auto"],
                ["-m", "omni.chat", "--demo"]],
               [("runs/omni_tiny", [("qa", "typed image QA (unseen pairs)", "{:.1%}"),
                                    ("spoken", "spoken by unseen voices", "{:.1%}"),
                                    ("asr_cer", "transcription CER", "{:.1%}"),
                                    ("bpb", "held-out bits per byte", "{:.3f}"),
                                    ("spoken_answers", "spoken answers heard as said", "{:.1%}"),
                                    ("spoken_answers_espeak", "eSpeak saying them", "{:.1%}")])]),
}


def run(cmd: list[str]) -> None:
    print(f"\n$ python {' '.join(cmd)}", flush=True)
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT)
    if r.returncode != 0:
        print(f"error: step failed (exit {r.returncode}): python {' '.join(cmd)}", file=sys.stderr)
        sys.exit(r.returncode)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="".join(STAGES),
                    help=f"which stages to run, e.g. A or AB (default {''.join(STAGES)})")
    args = ap.parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        print(f"error: --stages: unknown stage '{unknown[0]}' (choose from {''.join(STAGES)})", file=sys.stderr)
        sys.exit(2)
    t0 = time.time()
    for s in args.stages:
        for cmd in STAGES[s].commands:
            run(cmd)
    print(f"\nsummary ({time.time() - t0:.0f}s in all):")
    for s in args.stages:
        for run_dir, keys in STAGES[s].reports:
            metrics = json.loads((ROOT / run_dir / "metrics.json").read_text())
            print(f"  stage {s} ({run_dir}): " + ", ".join(f"{label} {fmt.format(metrics[k])}"
                                                            for k, label, fmt in keys if k in metrics))


if __name__ == "__main__":
    main()
