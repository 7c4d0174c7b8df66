"""Rows of similar length run through the Thinker together (chat_template.length_groups): the batch
and its loss stay the same, only the padding is no longer computed."""
import torch

from omni.audio_encoder import AudioEncoderConfig
from omni.chat_template import length_groups
from omni.omni_model import OmniModel
from omni.projector import ProjectorConfig
from omni.thinker import ThinkerConfig
from omni.vision import VisionConfig


def test_rows_are_grouped_by_length_only_where_that_saves_padding():
    ends = torch.tensor([3, 30, 4, 31, 29, 2])
    groups = length_groups(ends)
    assert [g.tolist() for g in groups] == [[3, 1, 4], [2, 0, 5]]  # longest first, each group too
    assert sorted(torch.cat(groups).tolist()) == list(range(6))
    assert [g.tolist() for g in length_groups(torch.tensor([30, 29, 28, 27]))] == [[0, 1, 2, 3]]  # 4% padding
    assert len(length_groups(ends, min_saving=0.9)) == 1


def test_the_grouped_loss_and_gradients_equal_the_whole_padded_batch():
    """Three rows of 5, 19 and 6 positions padded to 20 (the counted tokens end at each row's own
    length): run in length groups, the loss and every gradient equal one forward over the whole
    padded batch, to float rounding; the padding's positions never change a counted one."""
    torch.manual_seed(0)
    th = ThinkerConfig(vocab_size=40, d_model=16, n_layer=2, n_head=2, n_kv_head=1, max_seq_len=64)
    vision = VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16)
    audio = AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32)
    model = OmniModel(th, vision, audio, ProjectorConfig(hidden=32), image_id=38, audio_id=39)
    x = torch.randint(0, 37, (3, 20))
    y, mask = torch.randint(0, 37, (3, 20)), torch.zeros(3, 20, dtype=torch.long)
    for row, (start, end) in enumerate([(2, 5), (10, 19), (0, 6)]):
        mask[row, start:end] = 1
        x[row, end:] = 0  # padding
    x[1, 3:7] = 39  # a clip of 4 frames in the long row
    feats, empty = torch.randn(4, model.audio_width), torch.zeros(0, 16)
    whole = model.thinker(embeds=model.embed(x, empty, feats), targets=y, loss_mask=mask)[1]
    whole.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert len(length_groups(torch.tensor([5, 19, 6]))) == 2
    logits, grouped = model(x, y, mask, empty, feats)
    grouped.backward()
    assert logits.shape == (int(mask.sum()), 40) and torch.allclose(grouped, whole, atol=1e-6)
    for name, grad in expected.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-6), name
    model.zero_grad()
    logits, nothing = model(x, y, torch.zeros_like(mask), empty, feats)  # no row counts a token: loss 0, no NaN
    nothing.backward()
    assert logits.shape == (0, 40) and nothing.item() == 0
