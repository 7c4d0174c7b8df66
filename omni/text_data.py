"""Stage A's data: real prose, split by chapter, as one long stream of token ids.

The default corpus is five Jane Austen novels (public domain, `data/austen/`). Each novel is cut
into chapters at its "CHAPTER ..." headings; every `val_every`-th chapter of every novel is held
out, so the held-out text is prose the model never read, in the same style and with the same
characters. Line wrapping from the printed editions is undone: a paragraph is one line.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from omni.config import UserError

CHAPTER_RE = re.compile(r"^\s*CHAPTER\s+[IVXLC\d]+\.?\s*$", re.MULTILINE | re.IGNORECASE)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each re-joined into one line with single spaces."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def split_corpus(folder: Path, val_every: int) -> tuple[list[str], list[str]]:
    """Read every .txt in `folder`; return (train paragraphs, held-out paragraphs)."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise UserError(f"{folder}: no .txt files found (data.corpus must be a folder of plain-text books)")
    train, val = [], []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{f}: not UTF-8 text (convert it, e.g. iconv -t utf-8)") from None
        chapters = CHAPTER_RE.split(text)  # [front matter, chapter 1, chapter 2, ...]
        train += paragraphs(chapters[0])
        for i, chapter in enumerate(chapters[1:], start=1):
            (val if val_every > 0 and i % val_every == 0 else train).extend(paragraphs(chapter))
    if not val:
        raise UserError(f"{folder}: no held-out chapters; the books need 'CHAPTER ...' headings "
                        f"and at least data.val_every ({val_every}) chapters")
    return train, val


def encode_stream(tok, paras: list[str]) -> torch.Tensor:
    """All paragraphs as one 1-D tensor of ids, each paragraph ending in a newline token."""
    nl = tok.token_id("\n")
    ids = []
    for p in paras:
        ids += tok.encode(p)
        ids.append(nl)
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, seed: int, i: int):
    """Micro-batch number i: `batch_size` windows at offsets drawn from a generator seeded by
    (seed, i), so the batch depends on nothing but i. Returns x and y = x shifted by one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + i)
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=g)
    idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, T+1)
    chunk = stream[idx]
    return chunk[:, :-1], chunk[:, 1:]


def eval_windows(stream: torch.Tensor, seq_len: int, max_tokens: int = 0):
    """Non-overlapping windows that cover the held-out stream (or its first max_tokens)."""
    n = len(stream) - 1
    if max_tokens:
        n = min(n, max_tokens)
    count = n // seq_len
    if count == 0:
        raise UserError(f"held-out split has {n} tokens, fewer than data.seq_len ({seq_len})")
    x = stream[: count * seq_len].view(count, seq_len)
    y = stream[1: count * seq_len + 1].view(count, seq_len)
    return x, y


def unigram_bits_per_byte(train: torch.Tensor, val: torch.Tensor, token_bytes: torch.Tensor) -> float:
    """The reference a model must beat: each token predicted from its training frequency alone
    (add-one smoothing), in bits per byte of held-out text."""
    counts = torch.bincount(train, minlength=len(token_bytes)).double() + 1
    logp = (counts / counts.sum()).log()
    nats = -logp[val].sum().item()
    return nats / math.log(2) / token_bytes[val].sum().item()


