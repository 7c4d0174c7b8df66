"""Generate text from a saved Thinker checkpoint.

    python -m omni.sample runs/thinker_tiny/best.pt --prompt "It is a truth" --tokens 80
    python -m omni.sample runs/thinker_tiny/best.pt --temperature 0     # greedy

The checkpoint carries its config; the tokenizer is read from the same run directory.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from omni.checkpoint import load_stage_checkpoint, load_weights
from omni.config import UserError, from_dict
from omni.paths import repo_path
from omni.thinker import Thinker, ThinkerConfig, generate
from omni.tokenizer import Tokenizer


def load_thinker(path: str) -> tuple[Thinker, Tokenizer]:
    """A Thinker and its tokenizer from a stage A checkpoint (model in eval mode, on CPU)."""
    state = load_stage_checkpoint(path, "A")
    model_cfg = from_dict(ThinkerConfig, state["config"]["model"], where=str(path))
    model = Thinker(model_cfg)
    load_weights(model, state["model"], str(path))
    return model.eval(), Tokenizer(repo_path(path).parent / "tokenizer.model")


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a stage A checkpoint, e.g. runs/thinker_tiny/best.pt")
    ap.add_argument("--prompt", default="It is a truth universally acknowledged", help="text to continue")
    ap.add_argument("--tokens", type=int, default=100, help="how many tokens to generate")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    ap.add_argument("--top_k", type=int, default=40, help="sample among the k most likely tokens")
    ap.add_argument("--seed", type=int, default=0, help="seed for the sampling")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        raise UserError(f"--tokens {args.tokens}: give at least 1")
    model, tok = load_thinker(args.checkpoint)
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise UserError("--prompt: nothing to continue; give some text, e.g. --prompt \"It is a truth\"")
    ids = torch.tensor([prompt])
    tokens = min(args.tokens, model.cfg.max_seq_len - ids.size(1))
    if tokens <= 0:
        raise UserError(f"--prompt: {ids.size(1)} tokens leave no room in max_seq_len={model.cfg.max_seq_len}")
    t0 = time.time()
    out = generate(model, ids, tokens, args.temperature, args.top_k or None,
                   generator=torch.Generator().manual_seed(args.seed))
    text = args.prompt + tok.decode(out[0, ids.size(1):].tolist())
    print(text)
    print(f"({tokens} tokens in {time.time() - t0:.2f}s with the KV cache)", file=sys.stderr)
    return text


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
