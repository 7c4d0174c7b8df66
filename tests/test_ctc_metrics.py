"""Greedy CTC decoding on hand-made emissions; edit distance, CER and WER on hand-checked cases."""
import pytest
import torch

from omni.audio_encoder import AudioCTC, AudioEncoderConfig, CharVocab, ctc_greedy_decode, downsampled_lengths
from omni.metrics import cer, edit_distance, wer


def emissions(paths: list[list[int]], vocab_size: int = 5) -> torch.Tensor:
    """Log-probabilities whose per-frame argmax is the given path: (B, T, vocab_size)."""
    T = max(len(p) for p in paths)
    x = torch.full((len(paths), T, vocab_size), -5.0)
    for b, p in enumerate(paths):
        for t, s in enumerate(p):
            x[b, t, s] = -0.1
    return x


def test_greedy_ctc_merges_repeats_drops_blanks_and_respects_lengths():
    # blank = 0. "1 1 0 1 2 2 0 0 3" -> 1 1 2 3: the blank between the 1s keeps both of them.
    paths = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [0, 0, 4, 4, 4, 0, 0, 0, 0], [2, 2, 0, 3, 3, 1, 1, 1, 1]]
    lengths = torch.tensor([9, 9, 5])  # the third clip has 5 real frames: "2 2 0 3 3" -> 2 3
    assert ctc_greedy_decode(emissions(paths), lengths) == [[1, 1, 2, 3], [4], [2, 3]]


def test_char_vocab_round_trip_and_validity():
    v = CharVocab()
    assert len(v) == 29 and v.blank == 0
    ids = v.encode("it's a cat")
    assert 0 not in ids and v.decode(ids) == "it's a cat"
    assert v.decode([0, *ids, 0]) == "it's a cat"
    assert v.is_valid("hello world")
    assert not v.is_valid("Hello") and not v.is_valid("42") and not v.is_valid("")


@pytest.mark.parametrize("ref, hyp, d", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
    ("abc", "abc", 0), ("abc", "acb", 2), (["the", "cat"], ["the", "hat", "sat"], 2),
])
def test_edit_distance(ref, hyp, d):
    assert edit_distance(ref, hyp) == d
    assert edit_distance(hyp, ref) == d  # symmetric


def test_cer_and_wer_are_corpus_level_rates():
    refs = ["the cat sat", "on the mat"]
    hyps = ["the cat sat", "on a mat"]
    # "on the mat" -> "on a mat": 3 edits (t->a, delete h, delete e) over 21 reference characters
    assert cer(refs, hyps) == pytest.approx(3 / 21)
    assert wer(refs, hyps) == pytest.approx(1 / 6)  # one substituted word of six
    assert wer(["a b"], ["a b c d e"]) == pytest.approx(1.5)  # insertions can push it above 1
    assert cer(["abc"], ["abc"]) == 0.0


def test_encoder_output_shapes_lengths_and_padding_independence():
    torch.manual_seed(0)
    cfg = AudioEncoderConfig(d_model=32, n_layer=2, n_head=2, d_ff=64, dropout=0.0)
    model = AudioCTC(cfg).eval()
    assert downsampled_lengths(torch.tensor([100, 101, 4, 1])).tolist() == [25, 26, 1, 1]  # 100/s -> 25/s
    x = torch.randn(2, 100, 80)
    x[1, 60:] = 0  # clip 2 has 60 frames; a batch pads with zeros (omni.audio.pad_batch)
    h, h_lengths = model.encoder(x, torch.tensor([100, 60]))
    assert h.shape == (2, 25, 32) and h_lengths.tolist() == [25, 15]  # encoder: 25 frames per second
    log_probs, lengths = model(x, torch.tensor([100, 60]))
    assert log_probs.shape == (2, 50, 29) and lengths.tolist() == [50, 30]  # CTC head: 2 slots a frame
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 50), atol=1e-5)
    # The padding mask: clip 2 alone gives the same 30 outputs as inside the padded batch (its
    # stem convolutions see zeros past the end either way; attention must ignore the padding).
    alone, _ = model(x[1:, :60], torch.tensor([60]))
    assert torch.allclose(alone[0], log_probs[1, :30], atol=1e-5)
    assert not torch.allclose(alone[0], model(x[1:], torch.tensor([100]))[0][0, :30], atol=1e-3)
