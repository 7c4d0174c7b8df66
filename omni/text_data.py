"""Stage A's data: real prose, split by chapter, as one long stream of token ids.

The default corpus is five Jane Austen novels (public domain, `data/austen/`). Each novel is cut
into chapters at its "CHAPTER ..." headings; every `val_every`-th chapter of every novel is held
out, so the held-out text is prose the model never read, in the same style and with the same
characters. Line wrapping from the printed editions is undone: a paragraph is one line.

A larger corpus (TinyStories, a folder of books, JSON lines) is prepared once by
`omni/text_prepare.py` into a folder of uint16 token files, train.bin and val.bin, which are
memory-mapped here (numpy.memmap, as nanoGPT's prepare.py): hundreds of millions of tokens stay
on disk and the operating system pages in the windows a batch reads. `random_windows`,
`eval_windows` and the unigram reference take either a tensor or such a memmap and give the
same numbers for the same ids.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from omni.config import UserError

TOKEN_DTYPE = np.uint16  # ids of a vocabulary of at most 65,536 tokens; half the disk of int32

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


def open_token_folder(folder: Path) -> tuple[np.memmap, np.memmap, dict]:
    """(train ids, held-out ids, meta) of a folder written by omni.text_prepare; the ids stay
    on disk as read-only memmaps."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"data.tokens: {meta_path} not found; make the folder with "
                        "python -m omni.text_prepare (or omni.tinystories)")
    try:
        meta = json.loads(meta_path.read_text())
        streams = [np.memmap(folder / f"{split}.bin", dtype=TOKEN_DTYPE, mode="r") for split in ("train", "val")]
        counts = [meta[split]["tokens"] for split in ("train", "val")]
        missing = [k for k in ("tokenizer", "vocab_size") if k not in meta]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"data.tokens: {folder} is incomplete or unreadable ({type(e).__name__}: {e}); "
                        "prepare it again") from None
    for split, ids, n in zip(("train", "val"), streams, counts):
        if len(ids) != n:
            raise UserError(f"data.tokens: {folder}/{split}.bin has {len(ids):,} tokens, meta.json says "
                            f"{n:,}; prepare it again")
    return streams[0], streams[1], meta


def _rows(stream, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Rows stream[s : s + length] for each start s, as a (len(starts), length) int64 tensor."""
    if isinstance(stream, torch.Tensor):
        return stream[starts[:, None] + torch.arange(length)]
    return torch.from_numpy(np.stack([stream[s: s + length] for s in starts.tolist()]).astype(np.int64))


def random_windows(stream, batch_size: int, seq_len: int, seed: int, i: int):
    """Micro-batch number i: `batch_size` windows at offsets drawn from a generator seeded by
    (seed, i), so the batch depends on nothing but i. Returns x and y = x shifted by one.
    `stream` is a 1-D tensor or a memmap of ids: the same ids give the same batch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + i)
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=g)
    chunk = _rows(stream, starts, seq_len + 1)  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def eval_windows(stream, seq_len: int, max_tokens: int = 0):
    """Non-overlapping windows that cover the held-out stream (or its first max_tokens)."""
    n = len(stream) - 1
    if max_tokens:
        n = min(n, max_tokens)
    count = n // seq_len
    if count == 0:
        raise UserError(f"held-out split has {n} tokens, fewer than data.seq_len ({seq_len})")
    if not isinstance(stream, torch.Tensor):  # only what is scored is read from disk
        stream = torch.from_numpy(stream[: count * seq_len + 1].astype(np.int64))
    x = stream[: count * seq_len].view(count, seq_len)
    y = stream[1: count * seq_len + 1].view(count, seq_len)
    return x, y


def token_counts(stream, vocab_size: int, chunk: int = 1 << 24) -> torch.Tensor:
    """How often each id occurs; a memmap is counted 16 M tokens at a time, never all in RAM."""
    if isinstance(stream, torch.Tensor):
        return torch.bincount(stream, minlength=vocab_size)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for j in range(0, len(stream), chunk):
        counts += np.bincount(stream[j: j + chunk], minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(counts)


def unigram_bits_per_byte(train, val: torch.Tensor, token_bytes: torch.Tensor) -> float:
    """The reference a model must beat: each token predicted from its training frequency alone
    (add-one smoothing), in bits per byte of held-out text."""
    counts = token_counts(train, len(token_bytes)).double() + 1
    logp = (counts / counts.sum()).log()
    nats = -logp[val].sum().item()
    return nats / math.log(2) / token_bytes[val].sum().item()
