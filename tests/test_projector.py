"""Stage E's projectors: output scale, cell positions, the linear and orthogonal variants, and
cells that start at their names' embeddings."""
import pytest
import torch

from omni.projector import Projector, ProjectorConfig


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
