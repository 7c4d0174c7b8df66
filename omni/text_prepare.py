"""Turn a text corpus of any size into token files that stage A memory-maps.

    python -m omni.text_prepare --root path/to/texts --out data/my_corpus
    python train_text.py --config configs/thinker_small.json --data.tokens=data/my_corpus

`--root` is a file or a folder (searched recursively) of
- `.txt` files: documents separated by `<|endoftext|>` (the format of TinyStories' files), or,
  where a file has no separator, the whole file is one document (a book);
- `.jsonl` files: one JSON object a line, the document in its "text" field (`--text_key`);
- `.json` files: a JSON array of such objects (TinyStories' "all data" files use "story").

Two streaming passes, as nanoGPT's prepare.py and nanochat's tokenizer script do:
1. a sentencepiece BPE tokenizer trains on a random sample of the training documents' lines
   (`--sample_sentences`); the corpus is never held in memory;
2. every document is encoded, followed by the end-of-text id </s>, and appended as uint16 ids to
   train.bin or val.bin.

The held-out split is whole documents, never trained on and never seen by the tokenizer: those of
`--val_root` if given (TinyStories ships a separate validation file), else every `--val_every`-th
document. The folder gets train.bin, val.bin, tokenizer.model and meta.json (vocabulary size,
documents, tokens and bytes per split, and the tokenizer's sha256), written last, so a folder
with a meta.json is complete.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from omni.config import UserError, writable_dir
from omni.paths import repo_path
from omni.text_data import TOKEN_DTYPE
from omni.tokenizer import EOS_ID, Tokenizer, file_sha256, train_tokenizer

EOT = "<|endoftext|>"  # the document separator of TinyStories' text files (and of GPT-2's corpora)
SUFFIXES = (".txt", ".jsonl", ".json")
MAX_VOCAB = int(np.iinfo(TOKEN_DTYPE).max) + 1  # 65,536 ids fit in uint16


def list_files(root: Path) -> list[Path]:
    """`root` itself if it is a file, else every .txt/.jsonl/.json under it, in a fixed order."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"{root}: no such file or folder (give --root a text file or a folder of them)")
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{root}: no .txt, .jsonl or .json files found")
    return files


def _txt_documents(path: Path) -> Iterator[str]:
    """Documents of a text file, read line by line: the text between separators."""
    doc: list[str] = []
    separated = False
    with path.open(encoding="utf-8") as f:
        for line in f:
            *ends, rest = line.split(EOT)  # a separator may sit alone on its line or inside one
            for end in ends:
                yield "".join([*doc, end])
                doc, separated = [], True
            doc.append(rest)
    tail = "".join(doc)
    if tail.strip() or not separated:  # the newline after the last separator is not a document
        yield tail


def _json_text(obj, key: str, where: str) -> str:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
        raise UserError(f"{where}: no \"{key}\" string field (name the field with --text_key)")
    return obj[key]


def _jsonl_documents(path: Path, key: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not a JSON line ({e.msg})") from None
                yield _json_text(obj, key, f"{path}:{n}")


def _json_documents(path: Path, key: str) -> Iterator[str]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))  # one file at a time (TinyStories': ~50 MB each)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON array of objects with a \"{key}\" field")
    for n, obj in enumerate(rows):
        yield _json_text(obj, key, f"{path}: item {n}")


def documents(files: list[Path], key: str = "text", skipped: list[int] | None = None) -> Iterator[str]:
    """Every non-blank document of `files`, stripped, in order; blank ones are counted in skipped[0]."""
    read = {".jsonl": lambda p: _jsonl_documents(p, key), ".json": lambda p: _json_documents(p, key)}
    for path in files:
        try:
            for doc in read.get(path.suffix, _txt_documents)(path):
                doc = doc.strip()
                if doc:
                    yield doc
                elif skipped is not None:
                    skipped[0] += 1
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text (convert it, e.g. iconv -t utf-8)") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read it ({e.strerror})") from None


def split_documents(train_files, val_files, val_every: int, key: str, skipped=None):
    """(train documents, held-out documents) as two iterators over the same fixed order."""
    if val_files:
        return documents(train_files, key, skipped), documents(val_files, key, skipped)
    train = (d for i, d in enumerate(documents(train_files, key, skipped)) if i % val_every != val_every - 1)
    val = (d for i, d in enumerate(documents(train_files, key)) if i % val_every == val_every - 1)
    return train, val


def write_tokens(tok: Tokenizer, docs: Iterator[str], path: Path, batch: int = 512, threads: int = 1) -> dict:
    """Encode `docs` (each followed by </s>) into uint16 ids appended to `path`; returns counts."""
    counts = {"documents": 0, "tokens": 0, "bytes": 0}
    tmp = path.with_name(path.name + ".tmp")

    def flush(part: list[str], f) -> None:
        for ids in tok.sp.encode(part, num_threads=threads):  # a list of id lists
            ids.append(EOS_ID)
            np.asarray(ids, dtype=TOKEN_DTYPE).tofile(f)
            counts["tokens"] += len(ids)
        counts["documents"] += len(part)
        counts["bytes"] += sum(len(d.encode()) for d in part)

    with tmp.open("wb") as f:
        part: list[str] = []
        for doc in docs:
            part.append(doc)
            if len(part) == batch:
                flush(part, f)
                part = []
        flush(part, f)
    os.replace(tmp, path)
    return counts


def _lines(docs: Iterator[str]) -> Iterator[str]:
    """The tokenizer's sentences: the non-blank lines of each document."""
    for doc in docs:
        yield from (line for line in doc.split("\n") if line.strip())


def prepare(root, out, vocab_size: int = 8192, val_root=None, val_every: int = 100, text_key: str = "text",
            sample_sentences: int = 1_000_000, threads: int = 0, seed: int = 0) -> dict:
    """Write train.bin, val.bin, tokenizer.model and meta.json into `out`; returns the meta."""
    if not 0 < vocab_size <= MAX_VOCAB:
        raise UserError(f"--vocab_size {vocab_size}: a uint16 token file holds at most {MAX_VOCAB:,} ids; "
                        "choose a smaller vocabulary")
    if not val_root and val_every < 2:
        raise UserError(f"--val_every {val_every}: must be at least 2 (or give --val_root)")
    train_files = list_files(repo_path(root))
    val_files = list_files(repo_path(val_root)) if val_root else []
    out_dir = writable_dir(out)  # fail now, not after an hour of tokenizing
    (out_dir / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until the end
    threads = threads or os.cpu_count() or 1
    t0 = time.time()

    train_docs, _ = split_documents(train_files, val_files, val_every, text_key)
    tok = train_tokenizer(_lines(train_docs), out_dir / "tokenizer.model", vocab_size, sample_sentences,
                          threads, seed)
    print(f"tokenizer: {tok.vocab_size} tokens, trained on a sample of at most {sample_sentences:,} lines "
          f"({time.time() - t0:.0f}s)")
    skipped = [0]
    train_docs, val_docs = split_documents(train_files, val_files, val_every, text_key, skipped)
    meta = {"vocab_size": tok.vocab_size, "dtype": np.dtype(TOKEN_DTYPE).name, "eos_id": EOS_ID,
            "tokenizer": "tokenizer.model", "tokenizer_sha256": file_sha256(tok.path),
            "sources": {"train": [str(p) for p in train_files], "val": [str(p) for p in val_files]},
            "split": "val_root" if val_files else f"every {val_every}-th document"}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        meta[split] = write_tokens(tok, docs, out_dir / f"{split}.bin", threads=threads)
        c = meta[split]
        print(f"{split:>5}: {c['documents']:,} documents, {c['tokens']:,} tokens, "
              f"{c['bytes'] / max(1, c['tokens']):.2f} bytes per token -> {Path(out) / f'{split}.bin'}")
        if c["documents"] == 0:
            raise UserError(f"--root {root}: no {split} documents; " + (
                "the held-out split needs more documents than --val_every, or a --val_root" if split == "val"
                else "every document went to the held-out split"))
    meta["skipped_blank_documents"] = skipped[0]
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{skipped[0]} blank documents skipped; {time.time() - t0:.0f}s; meta -> {Path(out) / 'meta.json'}")
    return meta


def add_arguments(p: argparse.ArgumentParser, out: str | None = None) -> None:
    """The options every prepare command shares (omni.tinystories adds its own --root)."""
    p.add_argument("--out", default=out, required=out is None,
                   help="folder for train.bin, val.bin, tokenizer.model, meta.json")
    p.add_argument("--vocab_size", type=int, default=8192, help="tokenizer vocabulary (at most 65,536)")
    p.add_argument("--sample_sentences", type=int, default=1_000_000,
                   help="lines sampled to train the tokenizer (0 = all of them)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the tokenizer (0 = all cores)")
    p.add_argument("--seed", type=int, default=0, help="seeds the tokenizer's sample")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="a text file, or a folder of .txt/.jsonl/.json files")
    p.add_argument("--val_root", default="", help="held-out documents (file or folder); default: --val_every")
    p.add_argument("--val_every", type=int, default=100, help="without --val_root, every n-th document is held out")
    p.add_argument("--text_key", default="text", help="the field holding the text in .jsonl/.json files")
    add_arguments(p)
    a = p.parse_args(argv)
    return prepare(a.root, a.out, a.vocab_size, a.val_root or None, a.val_every, a.text_key,
                   a.sample_sentences, a.threads, a.seed)


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
