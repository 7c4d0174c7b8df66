"""Prepare TinyStories for stage A at GPU scale.

    python -m omni.tinystories --root data/tinystories_raw --out data/tinystories
    python train_text.py --config configs/thinker_small.json

TinyStories (Eldan & Li 2023, https://huggingface.co/datasets/roneneldan/TinyStories) is about
2.7 million short stories written by GPT-4 (and GPT-3.5) in the vocabulary of a small child: a
corpus on which a model of a few tens of millions of parameters learns to write coherent English.
Download the files once, by hand, into --root; nothing is downloaded here:

    https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt
    https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt

This picks the first layout --root holds, in this order:
- TinyStoriesV2-GPT4-train.txt and -valid.txt (stories separated by <|endoftext|>), the valid
  file is the held-out split;
- TinyStories-train.txt and TinyStories-valid.txt (the first release, same format);
- TinyStories_all_data/*.json (JSON arrays of {"story": ...}); every 100th story is held out.
Then `omni.text_prepare` does the work (tokenizer on a sample, uint16 token files).
"""
from __future__ import annotations

import argparse

from omni.config import UserError
from omni.paths import repo_path
from omni.text_prepare import add_arguments, prepare

TXT_PAIRS = [("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"),
             ("TinyStories-train.txt", "TinyStories-valid.txt")]
JSON_FOLDER = "TinyStories_all_data"


def find_layout(root) -> dict:
    """prepare()'s source arguments for the first TinyStories layout found in `root`."""
    folder = repo_path(root)
    for train, valid in TXT_PAIRS:
        if (folder / train).is_file() and (folder / valid).is_file():
            return {"root": folder / train, "val_root": folder / valid}
    if sorted((folder / JSON_FOLDER).glob("*.json")):
        return {"root": folder / JSON_FOLDER, "val_every": 100, "text_key": "story"}
    raise UserError(f"--root {root}: no TinyStories files; download {TXT_PAIRS[0][0]} and {TXT_PAIRS[0][1]} "
                    "into it (links in python -m omni.tinystories --help)")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/tinystories_raw", help="the folder holding the downloaded files")
    add_arguments(p, out="data/tinystories")
    a = p.parse_args(argv)
    return prepare(out=a.out, vocab_size=a.vocab_size, sample_sentences=a.sample_sentences, threads=a.threads,
                   seed=a.seed, **find_layout(a.root))


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
