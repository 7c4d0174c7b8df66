"""The Thinker's tokenizer: exact round trips, reserved special tokens, byte accounting."""
import pytest

from omni.config import UserError
from omni.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, Tokenizer, sample_lines, train_tokenizer

TEXT = ["It is a truth universally acknowledged, that a single man in possession of a good fortune,",
        "must be in want of a wife.", "Emma Woodhouse, handsome, clever, and rich, with a comfortable home"] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(TEXT, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=400)


@pytest.mark.parametrize("s", ["Emma said,\n“Hello  there” — 123", "  leading and trailing  ", "café ß 日本",
                               "<|im_start|>user\nwhat colour is the circle?<|im_end|>"])
def test_round_trip_is_exact(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_special_ids_are_fixed_and_single_tokens(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID) == (0, 2, 3)
    for piece in SPECIAL_TOKENS:
        assert tok.encode(piece) == [tok.token_id(piece)]
    assert tok.encode("a", bos=True, eos=True)[0] == BOS_ID and tok.encode("a", eos=True)[-1] == EOS_ID


def test_token_bytes_add_up_to_the_text(tok):
    s = "Emma, handsome and clever, said “yes”.\n"
    nbytes = tok.token_bytes()
    ids = tok.encode(s)
    assert sum(nbytes[i] for i in ids) == len(s.encode())


def test_missing_model_and_too_small_vocab_are_clear(tmp_path):
    with pytest.raises(UserError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "nope.model")
    with pytest.raises(UserError, match="model.vocab_size=50"):
        train_tokenizer(TEXT, tmp_path / "t.model", vocab_size=50)


def test_a_large_corpus_trains_on_a_seeded_sample_streamed_from_a_generator(tmp_path):
    """sample_sentences keeps a seeded random sample of a stream it reads once, never the whole
    stream as a list. A word on 10 lines of 10,000 becomes a token when every line is read, and is
    missed by a sample of 200 (seed 0; 0.2 such lines expected); the same seed gives the same
    tokenizer file, byte for byte (also in another process: the sample is drawn in Python)."""
    read = []

    def lines():
        for i in range(10_000):
            read.append(i)
            yield "sentiment " * 10 if i % 1000 == 7 else TEXT[i % len(TEXT)]

    full = train_tokenizer(lines(), tmp_path / "full.model", vocab_size=1000)
    a = train_tokenizer(lines(), tmp_path / "a.model", vocab_size=1000, sample_sentences=200, seed=0)
    train_tokenizer(lines(), tmp_path / "b.model", vocab_size=1000, sample_sentences=200, seed=0)
    assert len(read) == 3 * 10_000  # each stream was read to the end, one line at a time
    assert len(full.encode(" sentiment")) == 1 and len(a.encode(" sentiment")) > 1
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert sorted(sample_lines(range(10), 10)) == list(range(10)) and len(sample_lines(iter(range(99)), 7)) == 7
