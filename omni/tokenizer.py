"""The Thinker's tokenizer: a sentencepiece BPE model trained on the training text only.

- Byte fallback: a character the vocabulary lacks is spelled as its UTF-8 bytes, so every
  string round-trips exactly (`decode(encode(s)) == s`) and there is no <unk> in practice.
- "identity" normalization, kept whitespace and no added leading space (as in GPT-2's and
  Qwen's BPE), so that decoding gives back the text and token bytes add up to the text's bytes.
- Fixed ids 0-3 for <pad>, <unk>, <s> (beginning of text) and </s> (end of text), then the
  special tokens of later stages, reserved now so that every later stage shares one
  vocabulary: chat turns in the ChatML style of Qwen (<|im_start|>user ... <|im_end|>),
  placeholders where image and audio features are spliced in (stage E), and speech markers
  for the Talker (stage D). "\\n" is a token of its own, since paragraphs end with it.

For a large corpus the tokenizer trains on a sample: `texts` may be any iterator (a generator
that streams a file), and with `sample_sentences` only a uniform random sample of that many
sentences is kept while the stream is read once (reservoir sampling, Vitter's Algorithm R), so
the corpus is never held in memory. The sample is drawn here, seeded, rather than by
sentencepiece's own `input_sentence_size`, whose sample changes from one process to the next:
the same corpus and seed give the same tokenizer file, byte for byte.

Reference: Kudo & Richardson, "SentencePiece" (2018); Sennrich et al., "BPE" (2016).
"""
from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from omni.config import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = [
    "\n",
    "<|im_start|>", "<|im_end|>",  # a chat turn: <|im_start|>user\n...<|im_end|>
    "<|image_start|>", "<|image|>", "<|image_end|>",  # <|image|> marks where image tokens go
    "<|audio_start|>", "<|audio|>", "<|audio_end|>",  # <|audio|> marks where audio frames go
    "<|speech_start|>", "<|speech_end|>",  # the Talker speaks what lies between these
]


class Tokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: tokenizer model not found (train_text.py writes one into its run directory)")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def token_id(self, piece: str) -> int:
        """The id of a special token such as '<|image|>'."""
        i = self.sp.piece_to_id(piece)
        if i == self.unk_id:
            raise KeyError(f"{piece!r} is not in the tokenizer's vocabulary")
        return i

    def token_bytes(self) -> list[int]:
        """UTF-8 length of each token's text (byte tokens count 1, control tokens 0): the
        bridge from loss per token to the tokenizer-independent bits per byte."""
        out = []
        for i in range(self.vocab_size):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                out.append(0)
            elif self.sp.is_byte(i):
                out.append(1)
            else:
                out.append(len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")))
        return out


def sample_lines(texts: Iterable[str], k: int, seed: int = 0) -> list[str]:
    """k items drawn uniformly from a stream read once, holding only k at a time (Algorithm R:
    item n replaces a random slot with probability k / (n + 1))."""
    rng, sample = random.Random(seed), []
    for n, text in enumerate(texts):
        if n < k:
            sample.append(text)
        elif (j := rng.randrange(n + 1)) < k:
            sample[j] = text
    return sample


def train_tokenizer(texts: Iterable[str], model_path: str | Path, vocab_size: int, sample_sentences: int = 0,
                    threads: int = 1, seed: int = 0) -> Tokenizer:
    """Train a BPE tokenizer on `texts` (one paragraph or sentence each); write it to model_path.
    sample_sentences > 0 trains on a random sample of that many (seeded by `seed`) instead of
    all of them; `threads` are sentencepiece's trainer threads."""
    if sample_sentences:
        texts = sample_lines(texts, sample_sentences, seed)
    model = io.BytesIO()
    try:
        _train(iter(texts), model, vocab_size, threads)
    except RuntimeError as e:  # sentencepiece's own message says what was too small
        raise UserError(f"model.vocab_size={vocab_size}: sentencepiece cannot train it "
                        f"({str(e).split('] ')[-1]})") from None
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(f"{model_path.name}.{os.getpid()}.tmp")  # under torchrun every rank
    tmp.write_bytes(model.getvalue())  # trains the same model; each replaces the file atomically
    os.replace(tmp, model_path)
    return Tokenizer(model_path)


def file_sha256(path: str | Path) -> str:
    """The fingerprint that ties a token file to the tokenizer that wrote it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def install_tokenizer(src: Path, dst: Path) -> Tokenizer:
    """Copy a prepared corpus's tokenizer into a run directory (atomically, so torchrun ranks may
    all do it). A run directory that already holds a different tokenizer is an error: its
    checkpoints were trained with other ids."""
    if dst.exists() and file_sha256(dst) != file_sha256(src):
        raise UserError(f"{dst}: differs from {src}, the tokenizer of the token files; "
                        "use another train.out_dir or --train.overwrite=true")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)
    return Tokenizer(dst)


def _train(texts, model: io.BytesIO, vocab_size: int, threads: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=texts, model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, max_sentence_length=1 << 20, hard_vocab_limit=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        user_defined_symbols=SPECIAL_TOKENS, num_threads=threads, minloglevel=2)
