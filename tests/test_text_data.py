"""Stage A's data at both scales: the Austen stream in memory (the tiny CPU path, whose numbers
the book quotes) and prepared uint16 token files, memory-mapped (the GPU path). The fixture is a
few hundred stories in TinyStories' own file format, written here; nothing is downloaded."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from omni.config import UserError
from omni.paths import ROOT, repo_path
from omni.text_data import (
    encode_stream,
    eval_windows,
    open_token_folder,
    random_windows,
    split_corpus,
    unigram_bits_per_byte,
)
from omni.text_prepare import EOT, documents, list_files, prepare
from omni.tinystories import main as tinystories_main
from omni.tokenizer import EOS_ID, Tokenizer, file_sha256, train_tokenizer
from tests.conftest import assert_resume_exact

NAMES, THINGS = ["Lily", "Tom", "Sam", "Mia", "Ben", "Zoe"], ["ball", "cat", "tree", "cake", "boat", "kite"]


def _story(rng: random.Random) -> str:
    n, t, u = rng.choice(NAMES), rng.choice(THINGS), rng.choice(THINGS)
    return (f"Once upon a time, there was a child named {n}. {n} loved the {t}.\n"
            f"One day, {n} found a big {u} in the park. \"Wow!\" said {n}. “Café ß”\n\n"
            f"{n} and the {u} were happy. The end.")


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """TinyStoriesV2-GPT4-{train,valid}.txt in miniature; returns (raw folder, train stories, valid stories)."""
    raw = tmp_path_factory.mktemp("tinystories_raw")
    rng = random.Random(0)
    split = {"train": [_story(rng) for _ in range(400)], "valid": [_story(rng) for _ in range(40)]}
    for name, docs in split.items():
        text = "".join(f"{d}\n{EOT}\n" for d in docs)
        (raw / f"TinyStoriesV2-GPT4-{name}.txt").write_text(text, encoding="utf-8")
    return raw, split["train"], split["valid"]


@pytest.fixture(scope="module")
def prepared(stories, tmp_path_factory):
    out = tmp_path_factory.mktemp("tinystories")
    meta = tinystories_main(["--root", str(stories[0]), "--out", str(out), "--vocab_size", "512",
                             "--threads", "1", "--sample_sentences", "600"])
    return out, meta


def _docs_of(ids: np.ndarray, tok: Tokenizer) -> list[str]:
    """Split a token file at its </s> ids and decode each document."""
    ends = np.flatnonzero(ids == EOS_ID)
    return [tok.decode(ids[a + 1: b]) for a, b in zip([-1, *ends[:-1]], ends)]


def test_token_files_round_trip_to_the_documents(prepared, stories):
    out, meta = prepared
    _, train_docs, val_docs = stories
    train, val, meta_read = open_token_folder(out)
    assert meta_read == meta and isinstance(train, np.memmap) and train.dtype == np.uint16
    tok = Tokenizer(out / "tokenizer.model")
    assert meta["tokenizer_sha256"] == file_sha256(out / "tokenizer.model")
    assert _docs_of(np.asarray(train), tok) == train_docs  # every story, in order, character for character
    assert _docs_of(np.asarray(val), tok) == val_docs  # the held-out split is the valid file, nothing else
    assert meta["train"] == {"documents": 400, "tokens": len(train), "bytes": sum(len(d.encode()) for d in train_docs)}
    assert meta["skipped_blank_documents"] == 0 and int(train.max()) < meta["vocab_size"] == 512


def test_held_out_documents_are_never_trained_on(tmp_path):
    """Without a validation file every n-th whole document is held out, from the tokenizer too."""
    (tmp_path / "in").mkdir()
    rows = [{"text": f"Story number {i}: {'odd' if i % 5 == 4 else 'even'} words here."} for i in range(60)]
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    meta = prepare(tmp_path / "in", tmp_path / "out", vocab_size=300, val_every=5, threads=1)
    train, val, _ = open_token_folder(tmp_path / "out")
    tok = Tokenizer(tmp_path / "out" / "tokenizer.model")
    assert _docs_of(np.asarray(val), tok) == [r["text"] for r in rows[4::5]]
    assert not any("odd" in d for d in _docs_of(np.asarray(train), tok))
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (48, 12)


def test_document_formats_txt_books_jsonl_and_json(tmp_path):
    (tmp_path / "book.txt").write_text("A whole book\n\nwith no separator.\n")
    (tmp_path / "stories.txt").write_text(f"one{EOT}two\n{EOT}\n\n{EOT}three\n")  # a blank one is skipped
    (tmp_path / "rows.jsonl").write_text('{"text": "four"}\n\n{"text": "five", "id": 3}\n')
    (tmp_path / "all.json").write_text(json.dumps([{"text": "six"}]))
    skipped = [0]
    got = list(documents(list_files(tmp_path), "text", skipped))
    assert got == ["six", "A whole book\n\nwith no separator.", "four", "five", "one", "two", "three"]
    assert skipped == [1]


def test_memmapped_batches_equal_in_memory_ones(prepared):
    out, _ = prepared
    train, val, _ = open_token_folder(out)
    train_t, val_t = torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64))
    for i in (0, 1, 17, 10_000):
        a, b = random_windows(train, 8, 32, 1337, i), random_windows(train_t, 8, 32, 1337, i)
        assert a[0].dtype == b[0].dtype == torch.long
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(random_windows(train, 8, 32, 1337, 0)[0], random_windows(train, 8, 32, 1337, 1)[0])
    for x, y in zip(eval_windows(val, 32, 600), eval_windows(val_t, 32, 600)):
        assert torch.equal(x, y)
    tb = torch.tensor(Tokenizer(out / "tokenizer.model").token_bytes())
    y = eval_windows(val_t, 32)[1].flatten()
    assert unigram_bits_per_byte(train, y, tb) == unigram_bits_per_byte(train_t, y, tb)


def test_austen_stream_gives_the_same_batches_from_a_token_file(tmp_path):
    """The tiny CPU path keeps its in-memory stream; the same ids through a uint16 memmap give
    bit-identical batches, so the two paths train the same model from the same ids."""
    train_paras, _ = split_corpus(repo_path("data/austen"), 10)
    tok = train_tokenizer(train_paras[:2000], tmp_path / "t.model", 512)
    ids = encode_stream(tok, train_paras[:2000])
    ids.numpy().astype(np.uint16).tofile(tmp_path / "train.bin")
    mm = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    for i in range(5):
        for a, b in zip(random_windows(ids, 16, 128, 1337, i), random_windows(mm, 16, 128, 1337, i)):
            assert torch.equal(a, b)


def test_tiny_cpu_path_still_gives_the_books_numbers(tmp_path):
    """chapters/02_stage_a_thinker.md quotes these from the thinker_tiny run (seconds to recompute):
    'corpus: 8223 train / 795 held-out paragraphs; 911,130 / 89,462 tokens; 3.54 bytes per token'
    and 'a unigram model scores 2.564 bits per byte'."""
    train_paras, val_paras = split_corpus(repo_path("data/austen"), 10)
    tok = train_tokenizer(train_paras, tmp_path / "tokenizer.model", 2048)
    train, val = encode_stream(tok, train_paras), encode_stream(tok, val_paras)
    token_bytes = torch.tensor(tok.token_bytes())
    _, y = eval_windows(val, 128, 40960)
    assert (len(train_paras), len(val_paras), len(train), len(val)) == (8223, 795, 911_130, 89_462)
    assert f"{token_bytes[y].sum().item() / y.numel():.2f}" == "3.54"
    assert f"{unigram_bits_per_byte(train, y.flatten(), token_bytes):.3f}" == "2.564"


def test_resume_is_exact_with_the_memmapped_stream(prepared, tmp_path):
    out, meta = prepared
    assert_resume_exact("train_text", tmp_path, f"--data.tokens={out}", f"--model.vocab_size={meta['vocab_size']}",
                        "--data.prompts=[\"Once upon a time\"]")


@pytest.mark.parametrize("kind, message", [
    ("missing", "no such file or folder"),
    ("no_text", r'bad\.jsonl:2: no "text" string field \(name the field with --text_key\)'),
    ("big_vocab", "a uint16 token file holds at most 65,536 ids"),
    ("too_few", "no val documents"),
])
def test_bad_input_is_one_clear_line(tmp_path, kind, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"story": "no text field"}\n')
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "a.txt").write_text("only one document")
    root, vocab = {"missing": ("nowhere", 300), "no_text": (tmp_path / "bad.jsonl", 300),
                   "big_vocab": (tmp_path / "few", 70_000), "too_few": (tmp_path / "few", 300)}[kind]
    with pytest.raises(UserError, match=message):
        prepare(root, tmp_path / "out", vocab_size=vocab, threads=1)


def test_command_line_errors_exit_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "omni.tinystories", "--root", str(tmp_path), "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no TinyStories files" in r.stderr and "TinyStoriesV2-GPT4-train.txt" in r.stderr


def test_missing_token_folder_is_one_clear_line(tmp_path, prepared):
    with pytest.raises(UserError, match="meta.json not found"):
        open_token_folder(tmp_path)
    out, _ = prepared
    (tmp_path / "meta.json").write_text((out / "meta.json").read_text())
    (tmp_path / "train.bin").write_bytes((out / "train.bin").read_bytes()[:-2])  # one token short
    (tmp_path / "val.bin").write_bytes((out / "val.bin").read_bytes())
    with pytest.raises(UserError, match="train.bin has .* tokens, meta.json says"):
        open_token_folder(tmp_path)


def test_unwritable_out_folder_is_one_clear_line(tmp_path, stories):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write there"):
        prepare(stories[0], tmp_path / "file" / "out", vocab_size=300, threads=1)


def test_preparing_again_gives_the_same_files(prepared, stories, tmp_path):
    """The tokenizer's sample is seeded, so the token files (and the sha256 in meta.json) repeat."""
    out, meta = prepared
    again = tinystories_main(["--root", str(stories[0]), "--out", str(tmp_path), "--vocab_size", "512",
                              "--threads", "1", "--sample_sentences", "600"])
    assert again["tokenizer_sha256"] == meta["tokenizer_sha256"]
    assert (tmp_path / "train.bin").read_bytes() == (out / "train.bin").read_bytes()
