"""CTC prefix scores against a brute-force sum over every frame path, and hybrid CTC/attention
transcription: with the spelling weighed in, the Thinker writes what the frames say."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from omni import ctc_prefix
from omni.audio_encoder import AudioEncoderConfig, CharVocab
from omni.chat_template import ChatTemplate
from omni.ctc_prefix import ctc_full_score, ctc_prefix_extend, ctc_prefix_extend_strings, ctc_prefix_start
from omni.omni_model import OmniModel, TranscribeConfig, token_chars, transcribe
from omni.projector import ProjectorConfig
from omni.speech_data import normalize
from omni.thinker import ThinkerConfig
from omni.tokenizer import train_tokenizer
from omni.vision import VisionConfig


def collapse(path, blank=0):
    out, prev = [], blank
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return out


@pytest.mark.parametrize("prefix", [[1], [2], [1, 2], [1, 1], [2, 1, 2], [1, 1, 1]])
def test_prefix_scores_sum_every_path_that_begins_with_the_prefix(prefix):
    """psi(h) = log of the total probability of the frame paths whose collapsed text begins with h, and
    the full score = log of those that spell exactly h (what F.ctc_loss computes); T = 5 frames, 3 labels."""
    torch.manual_seed(len(prefix) * 7 + prefix[-1])
    logp = torch.randn(5, 3, dtype=torch.float64).log_softmax(-1)
    begins, exact = 0.0, 0.0
    for path in itertools.product(range(3), repeat=5):
        p = math.exp(sum(logp[t, s].item() for t, s in enumerate(path)))
        text = collapse(path)
        begins += p if text[:len(prefix)] == prefix else 0.0
        exact += p if text == prefix else 0.0
    r_n, r_b = ctc_prefix_start(logp, blank=0)
    last = torch.tensor([-1])
    for c in prefix:  # one label at a time, as decoding goes
        psi, r_n, r_b = ctc_prefix_extend(logp, 0, r_n, r_b, last, torch.tensor([c]))
        last = torch.tensor([c])
    assert psi.item() == pytest.approx(math.log(begins), abs=1e-9)
    assert ctc_full_score(r_n, r_b).item() == pytest.approx(math.log(exact), abs=1e-9)
    loss = F.ctc_loss(logp[:, None], torch.tensor([prefix]), torch.tensor([5]), torch.tensor([len(prefix)]),
                      reduction="sum")
    assert ctc_full_score(r_n, r_b).item() == pytest.approx(-loss.item(), abs=1e-9)


def test_several_extensions_at_once_equal_one_at_a_time():
    torch.manual_seed(1)
    logp = torch.randn(7, 5, dtype=torch.float64).log_softmax(-1)
    r_n, r_b = ctc_prefix_start(logp, blank=4)
    _, r_n, r_b = ctc_prefix_extend(logp, 4, r_n, r_b, torch.tensor([-1]), torch.tensor([2]))  # the prefix [2]
    labels = torch.tensor([0, 1, 2, 3])  # [2, 2] needs a blank between: its own case
    psi, n_all, b_all = ctc_prefix_extend(logp, 4, r_n.expand(-1, 4), r_b.expand(-1, 4), torch.full((4,), 2), labels)
    for m, c in enumerate(labels.tolist()):
        one, n_one, b_one = ctc_prefix_extend(logp, 4, r_n, r_b, torch.tensor([2]), torch.tensor([c]))
        assert torch.allclose(psi[m], one[0]) and torch.allclose(n_all[:, m], n_one[:, 0])
        assert torch.allclose(b_all[:, m], b_one[:, 0])


def test_with_the_spelling_weighed_in_an_untrained_thinker_writes_what_the_frames_say():
    """An untrained Thinker alone writes anything; frames that clearly spell 5 7 7 9 (with a blank
    between the two 7s) make the hybrid decoder write exactly that, and then stop."""
    torch.manual_seed(0)
    th = ThinkerConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=64)
    model = OmniModel(th, VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16),
                      AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32),
                      ProjectorConfig(hidden=32, audio_ctc=1.0), image_id=38, audio_id=39).eval()
    said = [5, 5, 39, 7, 39, 7, 7, 39, 9, 39]  # frame by frame; 39 (the audio placeholder) is the blank
    spelling = torch.full((len(said), 40), -12.0)
    spelling[torch.arange(len(said)), torch.tensor(said)] = 0.0
    model.spelling = lambda feats: spelling.log_softmax(-1)  # a projector that has learned to spell
    prompt, eos = [1, 2] + [39] * len(said) + [3], 4
    feats = torch.randn(len(said), model.audio_width)
    assert transcribe(model, prompt, feats, eos, 12, beam=4, ctc_weight=0.0, candidates=40) != [5, 7, 7, 9]
    for weight in (0.7, 1.0):
        assert transcribe(model, prompt, feats, eos, 12, beam=4, ctc_weight=weight, candidates=40) == [5, 7, 7, 9]
    # a length bonus pays each token back: large enough, the search never ends before max_new
    assert len(transcribe(model, prompt, feats, eos, 12, beam=4, ctc_weight=0.0, length_bonus=100.0)) == 12
    with pytest.raises(ValueError, match="ctc_weight"):
        TranscribeConfig(ctc_weight=1.5)


def test_extensions_by_strings_equal_one_label_at_a_time():
    """Three prefixes extended at once by strings of 1, 3 and 2 labels (a token spelled in characters)
    reach the same prefix scores and states as extending each by one label after another."""
    torch.manual_seed(2)
    logp = torch.randn(9, 5, dtype=torch.float64).log_softmax(-1)
    r_n, r_b = ctc_prefix_start(logp, blank=0)
    strings = [[3], [1, 1, 2], [4, 3]]
    psi, n_all, b_all, last = ctc_prefix_extend_strings(logp, 0, r_n.expand(-1, 3), r_b.expand(-1, 3),
                                                        torch.full((3,), -1), strings)
    assert last.tolist() == [3, 2, 3]
    for m, string in enumerate(strings):
        n, b, prev = r_n, r_b, torch.tensor([-1])
        for c in string:
            one, n, b = ctc_prefix_extend(logp, 0, n, b, prev, torch.tensor([c]))
            prev = torch.tensor([c])
        assert torch.allclose(psi[m], one[0]) and torch.allclose(n_all[:, m], n[:, 0])
        assert torch.allclose(b_all[:, m], b[:, 0])


def test_extensions_that_share_their_first_labels_share_the_work_and_the_result():
    """Two prefixes, five strings; three of prefix 0 begin with the same labels (" s", " sh", " she").
    Each distinct (prefix, labels so far) is scored once, and every result equals the string's own
    extension, column by column."""
    torch.manual_seed(3)
    logp = torch.randn(12, 6, dtype=torch.float64).log_softmax(-1)
    r_n, r_b = ctc_prefix_start(logp, blank=0)
    n1, b1 = ctc_prefix_extend(logp, 0, r_n, r_b, torch.tensor([-1]), torch.tensor([2]))[1:]
    states, lasts = (torch.cat([r_n, n1], 1), torch.cat([r_b, b1], 1)), torch.tensor([-1, 2])
    strings, parent = [[1, 2, 3], [1, 2], [1, 4], [2, 2], [1, 2, 3]], torch.tensor([0, 0, 0, 1, 1])
    scored = []
    real = ctc_prefix.ctc_prefix_extend
    ctc_prefix.ctc_prefix_extend = lambda *a: scored.append(len(a[-1])) or real(*a)
    try:
        psi, n_all, b_all, last = ctc_prefix_extend_strings(logp, 0, *states, lasts, strings, parent)
    finally:
        ctc_prefix.ctc_prefix_extend = real
    assert scored == [3, 4, 2]  # (0, 1) (1, 2) (1, 1); then 1-2, 1-4, 2-2, 1-2 of prefix 1; then two 1-2-3
    assert last.tolist() == [3, 2, 4, 2, 3]
    for m, (string, p) in enumerate(zip(strings, parent.tolist())):
        one, n, b = ctc_prefix_extend_strings(logp, 0, states[0][:, p:p + 1], states[1][:, p:p + 1],
                                              lasts[p:p + 1], [string])[:3]
        assert torch.equal(psi[m], one[0]) and torch.equal(n_all[:, m], n[:, 0]) and torch.equal(b_all[:, m], b[:, 0])


def test_with_a_character_spelling_the_thinker_writes_the_tokens_that_spell_what_is_said(tmp_path):
    """spelling "chars": the second opinion reads characters, and a token counts by its letters.
    A real tokenizer's tokens (token_chars), slots that clearly spell "a red star", an untrained Thinker:
    the hybrid decoder writes tokens that read "a red star", whichever pieces they are."""
    tok = train_tokenizer(["A red star and a blue square at the top left, she said."] * 50, tmp_path / "t.model", 300)
    first, later = token_chars(tok)
    vocab = CharVocab()
    ids = tok.encode("A red star")  # upper case reads as lower case; the first token's leading space is dropped
    assert first[ids[0]] + [c for i in ids[1:] for c in later[i]] == vocab.encode("a red star")
    assert later[tok.encode("left,")[-1]] is None  # a comma: no transcript has one
    template = ChatTemplate(tok)
    torch.manual_seed(0)
    th = ThinkerConfig(vocab_size=tok.vocab_size, d_model=16, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=96)
    model = OmniModel(th, VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16),
                      AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32, ctc_upsample=2),
                      ProjectorConfig(hidden=32, audio_chars=1.0), image_id=template.image_id,
                      audio_id=template.audio_id).eval()
    model.token_chars = (first, later)
    said = [c for ch in "a red star" for c in (vocab.index[ch], 0)]  # slot by slot: each letter, then a blank
    spelling = torch.full((len(said), len(vocab)), -12.0)
    spelling[torch.arange(len(said)), torch.tensor(said)] = 0.0
    model.char_spelling = lambda feats: spelling.log_softmax(-1)
    feats = torch.randn(len(said) // 2, model.audio_width)
    prompt = [template.im_start] + [template.audio_id] * len(feats) + [template.im_end]
    wrote = transcribe(model, prompt, feats, template.im_end, 12, beam=4, ctc_weight=0.9, candidates=tok.vocab_size,
                       spelling="chars")
    assert normalize(tok.decode(wrote)) == "a red star"
    # the loss behind it: a head on the projected frames, CTC over characters, finite and learnable
    model.char_spelling = OmniModel.char_spelling.__get__(model)
    text = torch.tensor(vocab.encode("a red star"))
    loss = model.char_loss(torch.randn(8, model.audio_width), text, torch.tensor([len(text)]), torch.tensor([8]))
    loss.backward()
    assert torch.isfinite(loss) and model.char_head.weight.grad.abs().sum() > 0
