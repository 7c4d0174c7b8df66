"""The Thinker: shapes, causality, KV cache == full forward, generation, embeds path, GQA size,
training signal, config errors and save/load. Tiny configs on CPU, seconds in all."""
import pytest
import torch

from omni.thinker import Thinker, ThinkerConfig, generate

QWEN = dict(vocab_size=61, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=24)
GPT2 = dict(QWEN, n_kv_head=4, norm="layernorm", pos="learned", mlp="gelu", tie_embeddings=False)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return Thinker(ThinkerConfig(**kw)).eval()


def tokens(B, T, vocab=61, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [QWEN, GPT2], ids=["qwen", "gpt2"])
def test_shapes_and_loss(kw):
    model = make(**kw)
    idx = tokens(3, 10)
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 61) and loss is None
    _, loss = model(idx, targets=tokens(3, 10, seed=2))
    # Fresh weights predict near-uniformly: loss close to ln(vocab).
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(61.0)).item()) < 0.5
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(1, 25))  # one more token than max_seq_len=24


def test_loss_ignores_masked_positions():
    model = make(**QWEN)
    idx, tgt = tokens(2, 8), tokens(2, 8, seed=2)
    logits, _ = model(idx)
    ref = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 61), tgt[:, :4].reshape(-1))
    masked = tgt.clone()
    masked[:, 4:] = -100
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :4] = True
    assert torch.allclose(model(idx, targets=masked)[1], ref, atol=1e-6)
    assert torch.allclose(model(idx, targets=tgt, loss_mask=mask)[1], ref, atol=1e-6)
    assert model(idx, targets=torch.full_like(tgt, -100))[1].item() == 0.0  # nothing counted: 0, not NaN
    # The output layer runs only on the counted positions: 2 x 4 rows of logits, those of the full pass.
    counted, _ = model(idx, targets=tgt, loss_mask=mask)
    assert counted.shape == (8, 61) and torch.allclose(counted, logits[:, :4].reshape(-1, 61), atol=1e-6)


def test_loss_with_every_position_counted_is_bit_exact():
    """Selecting the counted positions must not change a loss where all count (stage A's figures)."""
    model = make(**QWEN).train()
    idx, tgt = tokens(2, 8), tokens(2, 8, seed=2)
    logits, _ = model(idx)
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum") / tgt.numel()
    assert torch.equal(model(idx, targets=tgt)[1], full)


@pytest.mark.parametrize("kw", [QWEN, GPT2], ids=["qwen", "gpt2"])
def test_causal(kw):
    model = make(**kw)
    idx = tokens(2, 12)
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 61
    a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("kw", [QWEN, GPT2], ids=["qwen", "gpt2"])
def test_kv_cache_matches_full_forward(kw):
    model = make(**kw)
    idx = tokens(2, 16)
    full = model(idx)[0]
    cache = model.make_cache(2)
    parts = [model(idx[:, :6], kv_cache=cache, start_pos=0)[0]]  # prefill many tokens
    parts.append(model(idx[:, 6:10], kv_cache=cache, start_pos=6)[0])  # a chunk after a cached prefix
    parts += [model(idx[:, t:t + 1], kv_cache=cache, start_pos=t)[0] for t in range(10, 16)]  # one at a time
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("kw", [QWEN, GPT2], ids=["qwen", "gpt2"])
def test_greedy_generate_matches_full_forward_argmax(kw):
    model = make(**kw)
    prompt = tokens(2, 5)
    out = generate(model, prompt, max_new_tokens=10, temperature=0)
    ref = prompt
    for _ in range(10):
        ref = torch.cat([ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (2, 15) and torch.equal(out, ref)


def test_generate_sampling_eos_and_length():
    model = make(**QWEN)
    prompt = tokens(3, 4)
    a = generate(model, prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = generate(model, prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    # top_k=1 is greedy whatever the temperature.
    greedy = generate(model, prompt, 8, temperature=0)
    assert torch.equal(generate(model, prompt, 8, temperature=2.0, top_k=1), greedy)
    # Make the first greedy token the "eos": every row stops after one step.
    eos = generate(model, prompt[:1], 1, temperature=0)[0, -1].item()
    out = generate(model, prompt[:1], 8, temperature=0, eos_id=eos)
    assert out.shape == (1, 5) and out[0, -1].item() == eos
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, prompt, max_new_tokens=21)


def test_embeds_path_matches_ids():
    model = make(**QWEN)
    idx, tgt = tokens(2, 9), tokens(2, 9, seed=2)
    la, loss_a = model(idx, targets=tgt)
    lb, loss_b = model(embeds=model.embed_tokens(idx), targets=tgt)
    assert torch.equal(la, lb) and torch.equal(loss_a, loss_b)
    out = generate(model, idx, 4, temperature=0, embeds=model.embed_tokens(idx))
    assert torch.equal(out, generate(model, idx, 4, temperature=0))
    with pytest.raises(ValueError, match="exactly one"):
        model(idx, embeds=model.embed_tokens(idx))


def test_gqa_has_fewer_params_than_mha():
    gqa, mha = make(**QWEN), make(**dict(QWEN, n_kv_head=4))
    d, hd = 32, 8
    # Each layer's k and v projections lose (4 - 2) heads of d x hd weights.
    assert mha.num_params() - gqa.num_params() == 2 * 2 * (4 - 2) * d * hd


def test_overfits_one_batch():
    model = make(**QWEN).train()
    idx, tgt = tokens(4, 16), tokens(4, 16, seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        _, loss = model(idx, targets=tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kw, key", [
    (dict(d_model=30, n_head=4), "n_head"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),
    (dict(d_model=12, n_head=4), "n_head"),  # head_dim 3 is odd: RoPE cannot pair channels
    (dict(norm="batchnorm"), "norm"),
    (dict(pos="alibi"), "pos"),
    (dict(mlp="relu"), "mlp"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_errors_name_the_key(kw, key):
    with pytest.raises(ValueError, match=rf"ThinkerConfig\.{key}:"):
        ThinkerConfig(**kw)


def test_ffn_width_auto():
    assert ThinkerConfig(d_model=256).ffn_width == 704  # 8/3 * 256 = 682.7, up to a multiple of 32
    assert ThinkerConfig(d_model=256, mlp="gelu").ffn_width == 1024
    assert ThinkerConfig(ffn_hidden=100).ffn_width == 100


@pytest.mark.parametrize("kw", [QWEN, GPT2], ids=["qwen", "gpt2"])
def test_save_load_identical_logits(kw, tmp_path):
    model = make(seed=0, **kw)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = make(seed=123, **kw)
    idx = tokens(2, 10)
    assert not torch.equal(fresh(idx)[0], model(idx)[0])
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    assert torch.equal(fresh(idx)[0], model(idx)[0])
    assert not any("rotary" in k for k in model.state_dict())  # RoPE tables are rebuilt, not saved


def test_hidden_is_what_the_head_reads():
    model = make(**QWEN)
    idx = tokens(2, 9)
    h = model.hidden(idx)
    assert h.shape == (2, 9, 32)
    assert torch.equal(model.lm_head(h), model(idx)[0])
    assert torch.equal(model.hidden(embeds=model.embed_tokens(idx)), h)


@pytest.mark.parametrize("chunk", [5, 64])  # 5 does not divide the 18 tokens: a short last chunk
def test_chunked_loss_matches_full_logits(chunk):
    """loss_chunk > 0 must give the same loss and the same gradients as the plain path, masks included."""
    plain, chunked = make(**QWEN).train(), make(**dict(QWEN, loss_chunk=chunk)).train()
    idx, tgt = tokens(2, 9), tokens(2, 9, seed=2)
    tgt[0, :3] = -100
    logits, loss_a = plain(idx, targets=tgt)
    none, loss_b = chunked(idx, targets=tgt)
    assert none is None and torch.allclose(loss_a, loss_b, atol=1e-5)
    (2 * loss_a).backward()  # a non-unit upstream gradient must be passed through
    (2 * loss_b).backward()
    for (name, pa), pb in zip(plain.named_parameters(), chunked.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name
    with torch.no_grad():  # without gradients it only scores
        assert torch.allclose(chunked(idx, targets=tgt)[1], loss_a, atol=1e-5)
