"""The main job: every stage on its tiny config and the built-in offline data, one after another,
then a summary of each stage's held-out metric.

    python -m omni.pipeline                 # all stages that exist
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

from omni.paths import ROOT

# stage -> (commands, run directory, [(metric key, label, format)])
STAGES = {
    "A": ([["train_text.py", "--config", "configs/thinker_tiny.json", "--resume", "auto"],
           ["-m", "omni.sample", "runs/thinker_tiny/best.pt", "--prompt", "It is a truth universally acknowledged",
            "--tokens", "60"]],
          "runs/thinker_tiny",
          [("bpb", "held-out bits per byte", "{:.3f}"), ("unigram_bpb", "unigram reference", "{:.3f}"),
           ("ppl", "held-out perplexity", "{:.1f}")]),
    "B": ([["-m", "omni.speech_data", "--out", "data/speech_tiny"],
           ["train_audio_enc.py", "--config", "configs/audio_enc_tiny.json", "--resume", "auto"]],
          "runs/audio_enc_tiny",
          [("test_cer", "unseen-voice CER", "{:.1%}"), ("test_wer", "unseen-voice WER", "{:.1%}"),
           ("val_cer", "validation CER", "{:.1%}")]),
    "C": ([["-m", "omni.shapes", "--out", "data/shapes_tiny"],
           ["train_vision.py", "--config", "configs/vision_tiny.json", "--resume", "auto"]],
          "runs/vision_tiny",
          [("test_t2i", "unseen-pair caption->image top-1 of 10", "{:.1%}"),
           ("test_colour", "unseen-pair colour", "{:.1%}"), ("test_shape", "unseen-pair shape", "{:.1%}")]),
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
        for cmd in STAGES[s][0]:
            run(cmd)
    print(f"\nsummary ({time.time() - t0:.0f}s in all):")
    for s in args.stages:
        _, run_dir, keys = STAGES[s]
        metrics = json.loads((ROOT / run_dir / "metrics.json").read_text())
        print(f"  stage {s} ({run_dir}): " + ", ".join(f"{label} {fmt.format(metrics[k])}" for k, label, fmt in keys))


if __name__ == "__main__":
    main()
