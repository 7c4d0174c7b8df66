"""Stage E's projectors: output scale, cell positions, the linear and orthogonal variants, cells
that start at their names' embeddings, picture cells that start at the words describing them, and
the audio projector's spelling (CTC), frames as token embeddings and frames with their neighbours."""
import types

import pytest
import torch

from omni.audio_encoder import AudioEncoderConfig
from omni.omni_data import OmniData
from omni.omni_model import OmniModel
from omni.projector import Projector, ProjectorConfig
from omni.thinker import ThinkerConfig
from omni.vision import VisionConfig


def test_projector_output_stays_at_the_token_embeddings_scale():
    """Whatever the encoder's scale or the MLP's weights, a projected frame's root mean square is the
    embedding table's (the gain `match` sets); without out_norm a loud MLP passes its loudness on."""
    torch.manual_seed(0)
    table = torch.randn(100, 16) * 0.04  # an embedding table (vocab, d_model), rms ~0.04
    rms = table.pow(2).mean().sqrt()
    for out_norm in (True, False):
        p = Projector(8, 16, ProjectorConfig(hidden=12, out_norm=out_norm))
        p.match(table)
        with torch.no_grad():
            p.down.weight.mul_(1000)  # what a long projector-only phase did to the raw MLP
            y = p(torch.randn(5, 3, 8) * 50)  # (5, 3, d_model)
        frame_rms = y.pow(2).mean(-1).sqrt()  # (5, 3)
        if out_norm:
            assert torch.allclose(frame_rms, rms.expand(5, 3), rtol=1e-3)
        else:
            assert frame_rms.min() > 100 * rms


def test_image_projector_tells_the_cells_apart():
    """The same features in two cells of a picture project to different embeddings only with a
    position embedding; each cell k adds pos[k], the same in every picture."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8).expand(2, 9, 8)  # 2 pictures, 9 cells, all with the same features
    with_pos = Projector(8, 16, ProjectorConfig(hidden=12), n_pos=9)
    without = Projector(8, 16, ProjectorConfig(hidden=12, image_pos=False))
    with torch.no_grad():
        y, z = with_pos(x), without(x)  # (2, 9, 16)
    assert torch.allclose(z, z[:, :1].expand_as(z))  # no positions: every cell looks the same
    assert (y[:, 0] - y[:, 1]).abs().max() > 1e-3
    assert torch.allclose(y - with_pos.pos, (y - with_pos.pos)[:, :1].expand_as(y), atol=1e-6)
    assert torch.equal(y[0], y[1])


def test_a_linear_projector_is_the_norm_then_one_matrix():
    """projector.linear names the modalities projected by one linear layer: no hidden layer, so the
    output (before the RMS norm) is exactly down(LayerNorm(x)); an unknown modality is an error."""
    torch.manual_seed(0)
    cfg = ProjectorConfig(hidden=12, out_norm=False, image_pos=False, linear=["image"])
    lin, mlp = Projector(8, 16, cfg, linear=True), Projector(8, 16, cfg)
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert lin.up is None and mlp.up is not None
        assert torch.allclose(lin(x), lin.down(torch.nn.functional.layer_norm(x, (8,))), atol=1e-6)
        assert lin.down.weight.shape == (16, 8) and mlp.down.weight.shape == (16, 12)
    with pytest.raises(ValueError, match="linear"):
        ProjectorConfig(linear=["video"])


def test_an_orthogonal_projector_keeps_every_distance():
    """projector.init="orthogonal": the linear map's columns are orthonormal (up to one scale), so
    it keeps the lengths of and the angles between the LayerNorm's outputs exactly; a normal start
    stretches some directions several times more than others. An unknown init is an error."""
    torch.manual_seed(0)
    lin = {init: Projector(64, 192, ProjectorConfig(init=init, out_norm=False, image_pos=False), linear=True)
           for init in ("normal", "orthogonal")}
    s = {init: torch.linalg.svdvals(p.down.weight.detach()) for init, p in lin.items()}  # (64,) each
    assert s["orthogonal"].max() / s["orthogonal"].min() < 1 + 1e-4
    assert s["normal"].max() / s["normal"].min() > 2  # a 192 x 64 Gaussian: 3.7 here
    w = lin["orthogonal"].down.weight.detach()
    assert abs(w.pow(2).mean().sqrt().item() - 0.02) < 1e-4  # the same entry size as the normal start
    x = torch.nn.functional.layer_norm(torch.randn(2, 64), (64,))
    with torch.no_grad():
        y = lin["orthogonal"].down(x)  # down has no bias at the start (zeros)
    ratio = (y[0] - y[1]).norm() / (x[0] - x[1]).norm()
    assert torch.allclose(ratio, s["orthogonal"][0], rtol=1e-4)
    with pytest.raises(ValueError, match="init"):
        ProjectorConfig(init="xavier")


def test_cell_vectors_can_start_at_the_embeddings_of_the_cells_names():
    p = Projector(4, 6, ProjectorConfig(hidden=8), n_pos=3)
    table = torch.randn(10, 6)
    p.name_positions(table, [[1], [2, 3], [4, 5, 6]])
    assert torch.allclose(p.pos[1], (table[2] + table[3]) / 2) and torch.equal(p.pos[0], table[1])
    with pytest.raises(ValueError, match="2 names for 3 positions"):
        p.name_positions(table, [[1], [2]])


def test_the_audio_ctc_pulls_spoken_frames_to_the_embeddings_of_their_words():
    """projector.audio_ctc: trained on the CTC loss alone, the audio projector maps each word's frames
    nearest to that word's row of the Thinker's embedding table (blank: the audio placeholder's row)
    so that the frames read greedily, as CTC reads, say the clip's words;
    the table itself gets no gradient, and the loss joins the Thinker's only when its weight is > 0."""
    torch.manual_seed(0)
    th = ThinkerConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=64)
    vision = VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16)
    audio = AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32)
    model = OmniModel(th, vision, audio, ProjectorConfig(hidden=32, audio_ctc=1.0), image_id=38, audio_id=39)
    sound = torch.randn(40, 16)  # what each token id "sounds like" to the encoder; 39 = silence
    clips = [[5, 7, 9], [9, 5], [11, 7, 5, 3]]  # token ids said, each for 3 frames between silences
    frames = [[w for t in c for w in (t, t, t, 39)] for c in clips]
    feats = torch.cat([sound[f] + 0.1 * torch.randn(len(f), 16) for f in frames])  # (N_aud, 16)
    said = (torch.tensor([t for c in clips for t in c]), torch.tensor([len(c) for c in clips]),
            torch.tensor([len(f) for f in frames]))
    opt = torch.optim.Adam(model.projectors["audio"].parameters(), lr=1e-2)
    first = model.spell_loss(feats, *said).item()
    for _ in range(150):
        loss = model.spell_loss(feats, *said)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first and model.thinker.tok_emb.weight.grad is None
    with torch.no_grad():
        proj = torch.nn.functional.normalize(model.projectors["audio"](feats), dim=-1)
        nearest = (proj @ torch.nn.functional.normalize(model.thinker.tok_emb.weight, dim=-1).T).argmax(-1)
    read = []
    for f in nearest.split(said[2].tolist()):  # CTC's greedy reading: repeats collapse, blanks drop
        ids = torch.unique_consecutive(f).tolist()
        read.append([t for t in ids if t != 39])
    assert read == clips
    x = torch.tensor([[1] * 4 + [39] * len(feats)])  # a row with the clips' placeholders
    y, mask, empty = x.clone(), torch.ones_like(x), torch.zeros(0, 16)
    base = model.thinker(embeds=model.embed(x, empty, feats), targets=y, loss_mask=mask)[1]
    assert torch.allclose(model(x, y, mask, empty, feats, said)[1], base + model.spell_loss(feats, *said))
    model.audio_ctc = 0.0
    assert torch.allclose(model(x, y, mask, empty, feats, said)[1], base)
    none = torch.zeros(1, 0, dtype=torch.long)  # a spell batch (OmniData's spell rows): no tokens, no Thinker
    logits, loss = model(none, none, none, empty, feats, said)
    assert logits is None and torch.equal(loss, model.spell_loss(feats, *said))


def test_the_spelling_loss_pads_its_clips_as_pad_sequence_would_bit_for_bit():
    """spell_loss gathers its clips into one (T_max, n, vocab) tensor (a clip past its end repeats its
    last frame) instead of pad_sequence, whose backward copies the whole tensor once per clip (4x
    slower on a batch of 32 clips); CTC never reads past a clip's end, so loss and gradient are equal."""
    torch.manual_seed(0)
    th = ThinkerConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=64)
    model = OmniModel(th, VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16),
                      AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32), ProjectorConfig(hidden=32),
                      image_id=38, audio_id=39)
    n_frames = torch.tensor([5, 9, 3, 7])
    feats = torch.randn(int(n_frames.sum()), 16, requires_grad=True)
    words, n_words = torch.randint(1, 38, (8,)), torch.tensor([2, 3, 1, 2])
    loss = model.spell_loss(feats, words, n_words, n_frames)
    padded = torch.nn.utils.rnn.pad_sequence(model.spelling(feats).split(n_frames.tolist()))
    ref = torch.nn.functional.ctc_loss(padded, words, n_frames, n_words, blank=39, zero_infinity=True)
    assert torch.equal(loss, ref)
    assert torch.equal(torch.autograd.grad(loss, feats)[0], torch.autograd.grad(ref, feats)[0])


def test_audio_tokens_frames_arrive_as_the_embeddings_of_the_tokens_they_spell():
    """projector.audio_tokens (LegoSLM): each audio frame the Thinker reads is its spelling's
    probabilities times the Thinker's token embedding table, so a frame that spells token t arrives
    as (nearly) t's own embedding, the way the typed token would; gradients reach the projector
    through the spelling and the table through the sum; without audio_ctc the switch is refused."""
    torch.manual_seed(0)
    th = ThinkerConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=64)
    vision = VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16)
    audio = AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32)
    cfg = ProjectorConfig(hidden=32, audio_ctc=1.0, audio_tokens=True)
    model = OmniModel(th, vision, audio, cfg, image_id=38, audio_id=39)
    feats = torch.randn(6, 16)
    frames = model.audio_frames(feats)  # (6, d_model)
    table = model.thinker.tok_emb.weight
    assert torch.allclose(frames, model.spelling(feats).exp() @ table, atol=1e-6)
    proj = model.projectors["audio"]
    model.audio_frames(torch.randn(3, 16)).sum().backward()
    assert proj.up.weight.grad.abs().sum() > 0 and table.grad.abs().sum() > 0
    with torch.no_grad():  # make the projector say token 7 loudly: its output along 7's embedding
        proj.down.weight.zero_()
        proj.down.bias.copy_(table[7] * 100)
    said = model.audio_frames(feats)
    assert (said - table[7]).norm(dim=-1).max() < 0.3 * table[7].norm()
    nearest = (said @ table.T / table.norm(dim=-1)).argmax(-1)
    assert nearest.tolist() == [7] * 6
    with pytest.raises(ValueError, match="audio_tokens needs audio_ctc"):
        ProjectorConfig(audio_tokens=True)


def test_audio_context_stacks_each_frame_beside_its_neighbours_within_its_clip():
    """projector.audio_context c: the audio projector reads frame t beside frames t - c .. t + c of the
    same clip (its first or last frame repeating past the ends), and `centre` gives the frame back."""
    th = ThinkerConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=64)
    vision = VisionConfig(d_model=16, n_layer=1, n_head=2, merge_dim=16)
    audio = AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32)
    model = OmniModel(th, vision, audio, ProjectorConfig(hidden=32, audio_context=2), image_id=38, audio_id=39)
    assert model.audio_width == 5 * 16 and model.projectors["audio"].norm.normalized_shape == (80,)
    f = torch.arange(4.0)[:, None].expand(4, 16)  # frame t is all t
    stacked = model.stack(f)  # (4, 80)
    assert stacked.view(4, 5, 16)[:, :, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3],
                                                         [1, 2, 3, 3, 3]]
    assert torch.equal(model.centre(stacked), f)
    alone = OmniModel(th, vision, audio, ProjectorConfig(hidden=32), image_id=38, audio_id=39)
    alone.audio.load_state_dict(model.audio.state_dict())
    model.eval(), alone.eval()  # no dropout: the same encoder gives the same frames
    mels, lengths = torch.randn(2, 40, audio.n_mels), torch.tensor([40, 24])
    clips = model.encode_audio(mels, lengths)
    assert [c.shape[1] for c in clips] == [80, 80] and len(clips[1]) < len(clips[0])
    for c, a in zip(clips, alone.encode_audio(mels, lengths)):  # the neighbours come from the clip itself
        assert torch.allclose(model.centre(c), a) and torch.allclose(c.view(len(c), 5, 16)[-1, 4], a[-1])
    with pytest.raises(ValueError, match="audio_context"):
        ProjectorConfig(audio_context=-1)


def test_fit_words_recovers_a_linear_map_and_needs_a_linear_projector():
    """Targets that are an exact affine map of the normed features are fitted back (a tiny ridge; the
    map itself is not unique, since a LayerNorm's outputs sum to zero, so its outputs are compared);
    an MLP projector, or image_words without a linear image map, is refused."""
    torch.manual_seed(0)
    p = Projector(6, 4, ProjectorConfig(linear=["image"]), linear=True)
    feats = torch.randn(500, 6) * 3 + 1
    w, b = torch.randn(4, 6), torch.randn(4)
    targets = p.norm(feats).detach() @ w.T + b
    p.fit_words(feats, targets, ridge=1e-8)
    with torch.no_grad():
        assert torch.allclose(p.down(p.norm(feats)), targets, atol=1e-3)
        assert not torch.allclose(Projector(6, 4, ProjectorConfig(), linear=True).down(p.norm(feats)), targets,
                                  atol=1e-1)  # an unfitted map is far off
    with pytest.raises(ValueError, match="linear"):
        Projector(6, 4, ProjectorConfig(hidden=8)).fit_words(feats, targets)
    with pytest.raises(ValueError, match="image_words"):
        ProjectorConfig(image_words=True)


def test_cell_words_targets_are_the_words_of_each_cell():
    """A cell holding an object should arrive as the mean embedding of its size, colour and shape
    (each word's tokens averaged first); an empty cell as the embedding of " empty"."""
    table = torch.randn(20, 4)
    ids = {" big": [1], " red": [2, 3], " star": [4], " empty": [5, 6]}
    data = object.__new__(OmniData)  # only what cell_words reads: the records, the images, the template
    data.t = types.SimpleNamespace(text_ids=lambda s: ids[s])
    data.records = {"train": [{"objects": [{"size": "big", "colour": "red", "shape": "star", "position": "top"}]}]}
    data.images = {"train": torch.randn(1, 9, 3)}
    feats, targets = data.cell_words(table)
    assert feats.shape == (9, 3) and targets.shape == (9, 4)
    word = {w: table[i].mean(0) for w, i in ids.items()}
    assert torch.allclose(targets[1], (word[" big"] + word[" red"] + word[" star"]) / 3)  # "top" is cell 1
    for k in (0, *range(2, 9)):
        assert torch.allclose(targets[k], word[" empty"])
