"""Residual vector quantization: shapes, straight-through gradients, k-means init, the EMA update
by its formula, dead-code restart, and decoding with fewer codebooks."""
import torch

from omni.rvq import ResidualVQ, kmeans, usage


def _clusters(n_per: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four tight, well-separated 2-d clusters: (4 n_per, 2) points and the (4, 2) centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
    return (centres.repeat_interleave(n_per, 0) + 0.1 * torch.randn(4 * n_per, 2, generator=g)), centres


def test_shapes_and_codes_index_the_codebooks():
    rvq = ResidualVQ(dim=8, n_codebooks=3, codebook_size=16)
    z = torch.randn(2, 5, 8)
    q, codes, extra = rvq.train()(z)
    assert q.shape == z.shape and codes.shape == (2, 5, 3) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 16 and extra["commit"].ndim == 0
    rvq.eval()
    q, codes, _ = rvq(z)
    # in eval mode the output is exactly the sum of the chosen codes
    assert torch.allclose(q, rvq.decode_codes(codes), atol=1e-6)
    assert rvq.bits_per_frame == 12


def test_straight_through_gradient_reaches_the_encoder():
    encoder = torch.nn.Linear(4, 8)
    rvq = ResidualVQ(dim=8, n_codebooks=2, codebook_size=8, dropout=0.0)
    z = encoder(torch.randn(3, 6, 4))
    z.retain_grad()
    q, _, extra = rvq.train()(z)
    (q * 2).sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, 2.0))  # identity backward: d(2q)/dz = 2
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    z2 = encoder(torch.randn(3, 6, 4))
    rvq(z2)[2]["commit"].backward()  # the commitment loss has a gradient of its own
    assert encoder.weight.grad.abs().sum() > 0


def test_kmeans_finds_well_separated_clusters():
    torch.manual_seed(0)
    x, centres = _clusters()
    found, counts = kmeans(x, 4, iters=10)
    dist = torch.cdist(centres, found).min(dim=1).values  # each true centre to its nearest centroid
    assert dist.max() < 0.1 and counts.tolist() == [50, 50, 50, 50]


def test_first_training_batch_initialises_by_kmeans():
    torch.manual_seed(0)
    x, centres = _clusters()
    rvq = ResidualVQ(dim=2, n_codebooks=1, codebook_size=4, dropout=0.0, dead_threshold=0.0)
    assert rvq.initted == 0
    rvq.train()(x[None])
    assert rvq.initted == 1
    assert torch.cdist(centres, rvq.embed[0]).min(dim=1).values.max() < 0.1
    _, codes, _ = rvq.eval()(x[None])
    ppl, dead = usage(codes[0], 4)
    assert dead == [0] and abs(ppl[0] - 4.0) < 1e-4  # four equal clusters: all codes, equally used


def test_ema_update_follows_the_formula_on_a_hand_made_case():
    rvq = ResidualVQ(dim=2, n_codebooks=1, codebook_size=2, decay=0.5, eps=0.0)
    rvq.embed[0] = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    rvq.cluster_size[0] = torch.tensor([2.0, 2.0])
    rvq.embed_sum[0] = rvq.embed[0] * 2
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]])  # two vectors to code 0, one to code 1
    rvq.ema_update(0, x, torch.tensor([0, 0, 1]))
    # N = 0.5 * 2 + 0.5 * [2, 1] = [2, 1.5];  S_0 = 0.5 * 0 + 0.5 * (4, 2) = (2, 1);  S_1 = (10, 10) + (4.5, 4.5)
    assert torch.allclose(rvq.cluster_size[0], torch.tensor([2.0, 1.5]))
    assert torch.allclose(rvq.embed[0], torch.tensor([[1.0, 0.5], [14.5 / 1.5, 14.5 / 1.5]]))
    # with a decay near 0 a code jumps to the mean of its assigned vectors
    rvq.decay = 1e-9
    rvq.ema_update(0, x, torch.tensor([0, 0, 1]))
    assert torch.allclose(rvq.embed[0], torch.tensor([[2.0, 1.0], [9.0, 9.0]]), atol=1e-6)


def test_dead_code_is_restarted_on_a_batch_vector():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=2, n_codebooks=1, codebook_size=4, dead_threshold=1.0)
    rvq.cluster_size[0] = torch.tensor([5.0, 0.2, 5.0, 5.0])  # code 1 is dead
    before = rvq.embed[0].clone()
    x = torch.tensor([[7.0, 7.0], [8.0, 8.0]])
    assert rvq.restart_dead(0, x) == 1
    assert any(torch.equal(rvq.embed[0, 1], v) for v in x)  # moved onto a vector of the batch
    assert torch.equal(rvq.embed[0, [0, 2, 3]], before[[0, 2, 3]])  # the living codes are untouched
    assert rvq.cluster_size[0, 1] >= 1.0 and rvq.restart_dead(0, x) == 0


def test_fewer_codebooks_still_decode_and_more_codebooks_help():
    torch.manual_seed(0)
    z = torch.randn(4, 64, 8)
    rvq = ResidualVQ(dim=8, n_codebooks=4, codebook_size=32, dropout=0.0)
    rvq.train()(z)  # k-means init of every codebook on its residual
    rvq.eval()
    errors = []
    for n in range(1, 5):
        q, codes, _ = rvq(z, n)
        assert codes.shape == (4, 64, n)
        assert torch.allclose(rvq.decode_codes(codes), q, atol=1e-6)
        errors.append(float((q - z).pow(2).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_quantizer_dropout_uses_fewer_codebooks_on_some_examples():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, n_codebooks=4, codebook_size=8, dropout=1.0)
    z = torch.randn(64, 3, 4)
    rvq.train()(z)
    q, _, _ = rvq(z)  # every example uses n ~ U{1..4} codebooks: the errors differ by example
    err = (q.detach() - z).pow(2).mean(dim=(1, 2))
    assert err.max() > 2 * err.min()
