"""Stage A: the Thinker, a small decoder-only language model, learns to write like Jane Austen.

What it teaches: a tokenizer trained on the corpus; a Qwen-style transformer (RMSNorm, rotary
positions, grouped-query attention, SwiGLU, KV cache); next-token prediction; and how to read a
language model's held-out loss, perplexity and bits per byte.

    python train_text.py --config configs/thinker_tiny.json          # ~4 minutes on 2 CPU cores
    python train_text.py --config configs/thinker_tiny.json --resume auto
    python train_text.py --debug                                     # a few steps, seconds
    python -m omni.sample runs/thinker_tiny/best.pt --prompt "It is a truth"
    python -m omni.tinystories --root data/tinystories_raw --out data/tinystories   # GPU scale:
    python train_text.py --config configs/thinker_small.json                        # one GPU

The run directory (train.out_dir) holds the tokenizer, checkpoints, log.jsonl, curves.png and
metrics.json. Chapter: chapters/02_stage_a_thinker.md.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from omni import config
from omni.paths import repo_path
from omni.shapes import world_lines
from omni.text_data import (
    encode_stream,
    eval_windows,
    open_token_folder,
    random_windows,
    split_corpus,
    unigram_bits_per_byte,
)
from omni.thinker import Thinker, ThinkerConfig, generate
from omni.tokenizer import Tokenizer, install_tokenizer, train_tokenizer
from omni.trainer import Task, TrainConfig, fit


@dataclass
class TextDataConfig:
    corpus: str = "data/austen"  # folder of UTF-8 .txt books (relative to the repository root)
    val_every: int = 10  # every n-th chapter of each book is held out for evaluation
    world_lines: int = 0  # pictures of the shapes world whose captions, questions and answers join the
    # tokenizer's training text (never the model's): later stages' words become whole tokens (0 = none)
    tokens: str = ""  # folder of token files from omni.text_prepare / omni.tinystories; "" = use data.corpus
    seq_len: int = 256  # tokens per training window (at most model.max_seq_len)
    eval_tokens: int = 0  # held-out tokens scored at each evaluation (0 = the whole held-out split)
    prompts: list[str] = field(default_factory=lambda: [
        "It is a truth universally acknowledged", "Emma Woodhouse was", "\"My dear,\" said"])  # sample prompts
    sample_tokens: int = 40  # tokens generated per prompt at each evaluation
    temperature: float = 0.8  # sampling temperature for the samples (0 = greedy)
    top_k: int = 40  # sample only among the k most likely tokens

    def __post_init__(self):
        if self.seq_len < 8:
            raise ValueError(f"data.seq_len must be at least 8, got {self.seq_len}")


@dataclass
class TextStageConfig:
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: ThinkerConfig = field(default_factory=ThinkerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/thinker_tiny"))


# --debug: the same code path with toy sizes, to check a set-up in seconds.
DEBUG = {"model.vocab_size": 512, "model.d_model": 32, "model.n_layer": 1, "model.n_head": 2,
         "model.n_kv_head": 1, "model.max_seq_len": 64, "data.seq_len": 32, "data.eval_tokens": 2048,
         "data.sample_tokens": 8, "train.max_steps": 6, "train.batch_size": 4, "train.warmup_steps": 2,
         "train.eval_every": 3, "train.log_every": 2, "train.ckpt_every": 3, "train.out_dir": "runs/debug_text",
         "train.overwrite": True}


def main(cfg: TextStageConfig) -> dict:
    # 1. Config ------------------------------------------------------------------------------
    print(json.dumps(config.to_dict(cfg), indent=2))
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise config.UserError(f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_seq_len "
                               f"({cfg.model.max_seq_len})")
    run_dir = repo_path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # 2. Data: tokenizer trained on the training text only, then two id streams ----------------
    if cfg.data.tokens:  # prepared once, ids on disk: memory-mapped, never all in RAM
        folder = repo_path(cfg.data.tokens)
        train_ids, val_ids, meta = open_token_folder(folder)
        tok = install_tokenizer(folder / meta["tokenizer"], run_dir / "tokenizer.model")
        tok_path, what = folder / meta["tokenizer"], "documents"
        n_train, n_val = meta["train"]["documents"], meta["val"]["documents"]
    else:
        train_paras, val_paras = split_corpus(repo_path(cfg.data.corpus), cfg.data.val_every)
        tok_path, what = run_dir / "tokenizer.model", "paragraphs"
        if tok_path.exists() and not cfg.train.overwrite:
            tok = Tokenizer(tok_path)  # a resumed run must keep the ids it was trained with
        else:
            tok = train_tokenizer(train_paras + world_lines(cfg.data.world_lines), tok_path, cfg.model.vocab_size)
        train_ids, val_ids = encode_stream(tok, train_paras), encode_stream(tok, val_paras)
        n_train, n_val = len(train_paras), len(val_paras)
    if tok.vocab_size != cfg.model.vocab_size:
        raise config.UserError(f"{tok_path}: has {tok.vocab_size} tokens but model.vocab_size is "
                               f"{cfg.model.vocab_size}; set model.vocab_size={tok.vocab_size} or "
                               f"{'prepare data.tokens again' if cfg.data.tokens else 'delete it'}")
    token_bytes = torch.tensor(tok.token_bytes())
    val_x, val_y = eval_windows(val_ids, cfg.data.seq_len, cfg.data.eval_tokens)
    val_bytes = token_bytes[val_y].sum().item()
    unigram_bpb = unigram_bits_per_byte(train_ids, val_y.flatten(), token_bytes)
    print(f"corpus: {n_train} train / {n_val} held-out {what}; "
          f"{len(train_ids):,} / {len(val_ids):,} tokens; {val_bytes / val_y.numel():.2f} bytes per token")
    print(f"reference: a unigram model scores {unigram_bpb:.3f} bits per byte on the held-out text")
    budget = cfg.train.max_steps * cfg.train.grad_accum * cfg.train.batch_size * cfg.data.seq_len
    budget *= int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun every process reads its own batches
    print(f"budget: {budget:,} training tokens = {budget / len(train_ids):.2f} passes over the training text")

    # 3. Model -------------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    model = Thinker(cfg.model)

    # 4. What trains: every parameter (train.lr_scale can freeze or slow down parts) -----------
    n_params = model.num_params()
    print(f"parameters: {n_params:,} trainable / {n_params:,} total")
    print(f"scale: {budget / n_params:.1f} training tokens per parameter (about 20 is compute-optimal, "
          "Hoffmann et al. 2022)")

    def get_batch(i):
        return random_windows(train_ids, cfg.train.batch_size, cfg.data.seq_len, cfg.train.seed, i)

    def loss_fn(m, batch):
        x, y = batch
        return m(x, y)[1], {}

    def evaluate(m):
        device = next(m.parameters()).device
        nats = 0.0
        for j in range(0, len(val_x), cfg.train.batch_size):
            x, y = val_x[j: j + cfg.train.batch_size].to(device), val_y[j: j + cfg.train.batch_size].to(device)
            nats += m(x, y)[1].item() * y.numel()
        loss = nats / val_y.numel()
        g = torch.Generator(device=device).manual_seed(0)  # fixed samples, and the global RNG is untouched
        for prompt in cfg.data.prompts:
            ids = torch.tensor([tok.encode(prompt)], device=device)
            out = generate(m, ids, cfg.data.sample_tokens, cfg.data.temperature, cfg.data.top_k,
                           generator=g)
            text = tok.decode(out[0, ids.size(1):].tolist()).replace("\n", " / ")  # one line a sample
            print(f"  sample | [{prompt}]{text}")  # the prompt in brackets, then what the model wrote
        return {"loss": loss, "ppl": math.exp(loss), "bpb": nats / math.log(2) / val_bytes}

    # 5. The loop ------------------------------------------------------------------------------
    task = Task(model, get_batch, loss_fn, evaluate, best_metric="bpb", best_mode="min",
                count=lambda b: b[0].numel(), unit="tok", stage="A")
    final = fit(task, cfg.train, config.to_dict(cfg))

    # 6. Final evaluation and summary ------------------------------------------------------------
    final["unigram_bpb"] = unigram_bpb
    final["params"] = n_params
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    if "bpb" in final:
        print(f"held-out: loss {final['loss']:.4f} | perplexity {final['ppl']:.2f} | "
              f"bits per byte {final['bpb']:.4f} (unigram reference {unigram_bpb:.3f}) | "
              f"{final['train_seconds']:.0f}s")
    return final


if __name__ == "__main__":
    config.run(main, TextStageConfig, DEBUG)
