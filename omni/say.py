"""Speak a sentence with a trained Talker: text -> Thinker tokens -> Talker codes -> codec -> Griffin-Lim.

    python -m omni.say runs/talker_tiny/best.pt "a small red circle at the top" --out hello.wav
    python -m omni.say runs/talker_tiny/best.pt "a big blue star" --temperature 0 --out star.wav  # greedy

The Talker checkpoint carries its config, which names the codec checkpoint and the stage A
tokenizer it was trained with; both are loaded from there. The real-time factor printed is the
seconds of compute per second of speech (below 1 = faster than real time), for the Talker alone
and for the whole chain including the codec decoder and Griffin-Lim.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from omni.audio import FrontEndConfig
from omni.checkpoint import load_stage_checkpoint, load_weights
from omni.codec import HOP, Codec, load_codec
from omni.config import UserError, from_dict
from omni.griffin_lim import mel_to_wav
from omni.paths import repo_path
from omni.speech_data import normalize
from omni.talker import Talker, TalkerConfig, generate
from omni.talker_data import FRAME_RATE, word_tokens
from omni.thinker import Thinker, ThinkerConfig
from omni.tokenizer import Tokenizer


def build_talker(cfg: TalkerConfig) -> Talker:
    """A fresh Talker around the stage A Thinker named in cfg.thinker: its token embedding table
    (frozen), and for cond='hidden' the whole Thinker (frozen)."""
    state = load_stage_checkpoint(cfg.thinker, "A")
    thinker = None
    if cfg.cond == "hidden":
        thinker = Thinker(from_dict(ThinkerConfig, state["config"]["model"], f"{cfg.thinker} (model config)"))
        load_weights(thinker, state["model"], cfg.thinker)
        if not hasattr(thinker, "hidden"):
            raise UserError("talker.cond=hidden needs Thinker.hidden (omni/thinker.py); use talker.cond=embed")
    return Talker(cfg, state["model"]["tok_emb.weight"], thinker)


def load_talker(path: str) -> tuple[Talker, Tokenizer, Codec, FrontEndConfig]:
    """A trained Talker (eval mode), its tokenizer, its codec and front end, from a stage D Talker checkpoint."""
    state = load_stage_checkpoint(path, "D-talker")
    full = state["config"]
    cfg = from_dict(TalkerConfig, full["talker"], f"{path} (talker config)")
    model = build_talker(cfg)
    load_weights(model, state["model"], str(path))
    return (model.eval(), Tokenizer(repo_path(cfg.tokenizer)), load_codec(cfg.codec),
            from_dict(FrontEndConfig, full["audio"], f"{path} (audio config)"))


def text_batch(tokenizer: Tokenizer, texts: list[str]) -> dict:
    """Sentences -> right-padded tokens (B, N), tok_word (B, N) (padding -1) and n_words (B,)."""
    pairs = [word_tokens(tokenizer, t) for t in texts]
    N = max(len(ids) for ids, _ in pairs)
    tokens = torch.zeros(len(texts), N, dtype=torch.long)
    tok_word = torch.full((len(texts), N), -1)
    for r, (ids, owner) in enumerate(pairs):
        tokens[r, :len(ids)], tok_word[r, :len(ids)] = torch.tensor(ids), torch.tensor(owner)
    return {"tokens": tokens, "tok_word": tok_word, "n_words": torch.tensor([len(t.split()) for t in texts])}


def speak(model: Talker, codec: Codec, tokenizer: Tokenizer, texts: list[str], max_frames: list[int] | None = None,
          generator: torch.Generator | None = None) -> dict:
    """Generate speech for a batch of sentences. max_frames: each row's cap in codec frames (default:
    max_len_ratio x the training set's frames per character). Returns mels (list of (4 T_i, n_mels)),
    codes (list of (T_i, K)), ended (B,) bool, and talker_seconds (compute time of the codes)."""
    if max_frames is None:
        per_char = model.cfg.frames_per_char or 3.0
        max_frames = [int(model.cfg.max_len_ratio * per_char * len(t)) + 5 for t in texts]
    b = text_batch(tokenizer, texts)
    t0 = time.time()
    out = generate(model, b["tokens"], b["tok_word"], b["n_words"], torch.tensor(max_frames), generator)
    seconds = time.time() - t0
    codes = [out["codes"][r, :n] for r, n in enumerate(out["lengths"].tolist())]
    mels = [codec.decode(c[None])[0] if len(c) else torch.zeros(0, codec.cfg.n_mels) for c in codes]
    return {"mels": mels, "codes": codes, "ended": out["ended"], "talker_seconds": seconds}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a stage D Talker checkpoint, e.g. runs/talker_tiny/best.pt")
    ap.add_argument("text", help="what to say (lower-case words, as the voice set's transcripts)")
    ap.add_argument("--out", default="say.wav", help="the 16 kHz wav to write")
    ap.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the checkpoint's)")
    ap.add_argument("--top_k", type=int, default=None, help="sample among the k most likely codes")
    ap.add_argument("--seed", type=int, default=0, help="seed for the sampling")
    args = ap.parse_args(argv)
    text = normalize(args.text)  # as the voice set's transcripts: lower-case words, inner apostrophes
    if not text:
        raise UserError(f"text {args.text!r}: nothing to say in lower-case words (give a sentence, e.g. "
                        "\"a small red circle at the top\")")
    if text != " ".join(args.text.lower().split()):  # nothing left out silently
        print(f"saying {text!r}: the Talker knows lower-case words only (digits and signs are left out)")
    out = repo_path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {out.parent} does not exist")
    torch.set_num_threads(1)  # the real-time factor is quoted for one CPU core
    model, tokenizer, codec, front_end = load_talker(args.checkpoint)
    for key, value in (("temperature", args.temperature), ("top_k", args.top_k)):
        if value is not None:
            model.cfg = replace(model.cfg, **{key: value, f"{key}_res": value})
    t0 = time.time()
    spoken = speak(model, codec, tokenizer, [text], generator=torch.Generator().manual_seed(args.seed))
    mel = spoken["mels"][0]
    wav = mel_to_wav(mel, front_end)
    total = time.time() - t0
    seconds = len(spoken["codes"][0]) / FRAME_RATE
    sf.write(out, wav, front_end.sample_rate)
    ended = "ended by itself" if bool(spoken["ended"][0]) else "hit the length cap (did not end by itself)"
    print(f"{out}: {seconds:.2f} s of speech, {len(spoken['codes'][0])} code frames ({HOP * len(spoken['codes'][0])} "
          f"mel frames), {ended}")
    print(f"real-time factor on 1 CPU thread: Talker {spoken['talker_seconds'] / max(seconds, 1e-9):.3f}, "
          f"with codec decoder and Griffin-Lim {total / max(seconds, 1e-9):.3f} (below 1 = faster than real time)")
    return out


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
