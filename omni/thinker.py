"""The Thinker: a small decoder-only language model in the Qwen2.5 style.

In Qwen2.5-Omni (Xu et al. 2025, arXiv:2503.20215) the Thinker is the LLM that reads text,
image and audio features and writes text; the Talker turns its hidden states into speech.
Ours is the same kind of transformer, only tiny:

- pre-norm blocks with RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467),
- rotary position embeddings, RoPE (Su et al. 2021, arXiv:2104.09864), "rotate-half" form,
- grouped-query attention, GQA (Ainslie et al. 2023, arXiv:2305.13245): n_kv_head < n_head
  key/value heads, each shared by n_head // n_kv_head query heads, so the KV cache is smaller,
- a SwiGLU feed-forward (Shazeer 2020, arXiv:2002.05202).
Qwen2.5 also puts a bias on the q/k/v projections; we leave all biases out, as LLaMA does.

Three switches (norm, pos, mlp) turn the same code into a GPT-2-style baseline
(LayerNorm, learned positions, GELU MLP), so the two can be compared with one config change.
The layout follows karpathy/nanoGPT: weight init normal(0, 0.02) and residual output
projections scaled by 1/sqrt(2 * n_layer) so the residual stream does not grow with depth.

`forward` takes token ids or, for stage E, ready-made embeddings (B, T, d_model) in which image
and audio features are spliced between token embeddings (build them with `embed_tokens`).
`hidden` returns the final normed hidden states (what the output layer and the Talker read). With
loss_chunk > 0, training never builds the full logits: the output layer and the loss run a chunk of
tokens at a time (omni/chunked_loss.py), and forward returns None for the logits when given targets.
`generate` fills a preallocated KV cache with the prompt in one pass, then adds one token a step.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.chunked_loss import chunked_cross_entropy


@dataclass
class ThinkerConfig:
    vocab_size: int = 2048  # number of token ids (tokenizer vocabulary size)
    d_model: int = 256  # width of the residual stream (channels)
    n_layer: int = 4  # number of transformer blocks
    n_head: int = 4  # query heads per attention layer
    n_kv_head: int = 2  # key/value heads (GQA); n_head = MHA, 1 = multi-query attention
    ffn_hidden: int = 0  # MLP hidden width (channels); 0 = auto: ~8/3*d_model (swiglu) or 4*d_model (gelu)
    max_seq_len: int = 256  # longest sequence (tokens), prompt and generated tokens together
    rope_theta: float = 10000.0  # RoPE base; larger = slower-turning angles for long contexts
    dropout: float = 0.0  # dropout probability on embeddings, attention and residual branches
    tie_embeddings: bool = True  # share the token embedding matrix with the output head
    norm_eps: float = 1e-5  # epsilon inside the norms (numerical safety)
    norm: str = "rmsnorm"  # 'rmsnorm' (Qwen/LLaMA) or 'layernorm' (GPT-2)
    pos: str = "rope"  # 'rope' (rotary, Qwen/LLaMA) or 'learned' (absolute position table, GPT-2)
    mlp: str = "swiglu"  # 'swiglu' (Qwen/LLaMA) or 'gelu' (GPT-2)
    loss_chunk: int = 0  # tokens per chunk of the fused output layer + loss (0 = off; see omni/chunked_loss.py)

    def __post_init__(self):
        def need(ok, key, msg):
            if not ok:
                raise ValueError(f"ThinkerConfig.{key}: {msg}")

        for key in ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "max_seq_len"):
            need(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        need(self.loss_chunk >= 0, "loss_chunk", f"must be >= 0 (0 = off), got {self.loss_chunk}")
        need(self.ffn_hidden >= 0, "ffn_hidden", f"must be >= 0 (0 = auto), got {self.ffn_hidden}")
        need(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        need(self.d_model % self.n_head == 0, "n_head",
             f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        need(self.n_head % self.n_kv_head == 0, "n_kv_head",
             f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}")
        for key, allowed in (("norm", ("rmsnorm", "layernorm")), ("pos", ("rope", "learned")),
                             ("mlp", ("swiglu", "gelu"))):
            need(getattr(self, key) in allowed, key, f"must be one of {allowed}, got {getattr(self, key)!r}")
        need(self.pos != "rope" or self.head_dim % 2 == 0, "n_head",
             f"RoPE needs an even head_dim = d_model / n_head, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_width(self) -> int:
        """The MLP hidden width in use. Auto keeps both MLPs at ~8*d_model^2 weights: SwiGLU has three
        matrices of 8/3*d_model (rounded up to a multiple of 32), GELU two of 4*d_model."""
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)


# ---------------------------------------------------------------- leaf modules


class RMSNorm(nn.Module):
    """LayerNorm without the mean subtraction and bias: x / rms(x) * weight. Cheaper, works as well."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., dim)
        # F.rms_norm: one fused kernel on a GPU; on a CPU PyTorch runs it as its five elementwise passes
        # (train.compile fuses them there). In float32, also under bf16 autocast, so the mean of squares
        # keeps its precision.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).type_as(x)


def make_norm(cfg: ThinkerConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, cfg.norm_eps)


class Rotary(nn.Module):
    """RoPE tables. Channel i and i + head_dim/2 of each head form a pair that is rotated by the angle
    pos * theta^(-2i/head_dim); q.k then depends only on the distance between the two positions."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (head_dim/2,)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (max_seq_len, head_dim/2)
        angles = torch.cat([angles, angles], dim=-1)  # (max_seq_len, head_dim)
        # Not persistent: recomputed at construction, so checkpoints hold only learned weights.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start_pos: int, T: int):
        return self.cos[start_pos:start_pos + T], self.sin[start_pos:start_pos + T]  # 2 x (T, head_dim)


def apply_rope(x, cos, sin):
    """Rotate each (x[i], x[i + D/2]) pair of x (B, H, T, D) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # "rotate half": (x1, x2) -> (-x2, x1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer, preallocated to max_seq_len so decoding never reallocates.
    A forward at `start_pos` writes its T new positions, then attends to positions [0, start_pos + T)."""

    def __init__(self, cfg: ThinkerConfig, batch_size: int, device=None, dtype=torch.float32):
        shape = (batch_size, cfg.n_kv_head, cfg.max_seq_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]

    def update(self, layer: int, start_pos: int, k, v):
        end = start_pos + k.size(2)
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # 2 x (B, n_kv_head, end, head_dim)


class Attention(nn.Module):
    def __init__(self, cfg: ThinkerConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.dropout = layer_idx, cfg.dropout  # layer_idx: which cache slot is ours
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # q, k and v projections as one matrix: one larger matmul is faster than three small ones.
        self.qkv_proj = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, rope=None, kv_cache=None, start_pos=0):  # x: (B, T, d_model)
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)  # (B, n_head or n_kv_head, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, start_pos, k, v)  # (B, n_kv_head, L = start_pos + T, hd)
        L = k.size(2)
        # Query i sits at position start_pos + i and may see keys 0..start_pos + i. With no cached
        # prefix (L == T) that is the usual causal mask; a single new token sees everything; a chunk
        # after a cached prefix needs the mask spelled out (is_causal would align it top-left).
        mask = None
        if 1 < T < L:
            mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(diagonal=L - T)
        # enable_gqa lets each group of n_head // n_kv_head query heads share one k/v head, no copies.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=T > 1 and T == L,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, n_head, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, d_model)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a gated MLP, the gate chooses per channel how much passes."""

    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.ffn_width, bias=False)  # gate and up as one matmul
        self.down_proj = nn.Linear(cfg.ffn_width, cfg.d_model, bias=False)

    def forward(self, x):  # (B, T, d_model)
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # 2 x (B, T, ffn_width)
        return self.down_proj(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """GPT-2's MLP: down(gelu(up(x)))."""

    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_width, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_width, cfg.d_model, bias=False)

    def forward(self, x):  # (B, T, d_model)
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). The residual stream is never normed,
    so gradients reach early layers unchanged."""

    def __init__(self, cfg: ThinkerConfig, layer_idx: int):
        super().__init__()
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.mlp = SwiGLU(cfg) if cfg.mlp == "swiglu" else GeluMLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope=None, kv_cache=None, start_pos=0):  # (B, T, d_model)
        x = x + self.drop(self.attn(self.norm1(x), rope, kv_cache, start_pos))
        return x + self.drop(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------- the model


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "rope":
            self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        else:
            self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab, d_model) matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual branches' last layers: one per branch
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters counted once (a tied embedding/head matrix counts once)."""
        return sum(p.numel() for p in self.parameters())

    def embed_tokens(self, idx):
        """Token embeddings (B, T) -> (B, T, d_model), without positions: positions are added in forward,
        so a caller can splice other features into these and pass the result as `embeds`."""
        return self.tok_emb(idx)

    def make_cache(self, batch_size: int) -> KVCache:
        w = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, device=w.device, dtype=w.dtype)

    def hidden(self, idx=None, *, embeds=None, kv_cache=None, start_pos=0):
        """The final normed hidden states (B, T, d_model): what the output layer reads, and what the
        Talker may condition on. idx (B, T) token ids, or embeds (B, T, d_model) in their place.
        With kv_cache, the T positions are start_pos .. start_pos + T - 1 and are appended to the cache."""
        if (idx is None) == (embeds is None):
            raise ValueError("Thinker.forward: pass exactly one of idx (B, T) or embeds (B, T, d_model)")
        x = self.embed_tokens(idx) if embeds is None else embeds  # (B, T, d_model)
        T = x.size(1)
        if start_pos + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds ThinkerConfig.max_seq_len="
                             f"{self.cfg.max_seq_len}; shorten the input or raise max_seq_len")
        rope = None
        if self.cfg.pos == "rope":
            rope = self.rotary(start_pos, T)
        else:
            positions = torch.arange(start_pos, start_pos + T, device=x.device)  # (T,)
            x = x + self.pos_emb(positions)  # (T, d_model) broadcast over the batch
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, kv_cache, start_pos)
        return self.norm_f(x)  # (B, T, d_model)

    def forward(self, idx=None, targets=None, *, embeds=None, kv_cache=None, start_pos=0, loss_mask=None):
        """idx (B, T) token ids, or embeds (B, T, d_model) in their place (see `hidden`). targets (B, T)
        are already shifted (targets[:, t] is the token after position t); -100 or loss_mask == 0 means
        "no loss here". Without targets returns (logits (B, T, vocab_size), None). With targets the
        output layer runs only on the N counted positions, and (logits (N, vocab_size), loss) is returned;
        with cfg.loss_chunk > 0 those logits are never built and None is returned in their place."""
        h = self.hidden(idx, embeds=embeds, kv_cache=kv_cache, start_pos=start_pos)  # (B, T, d_model)
        if targets is None:
            return self.lm_head(h), None
        if loss_mask is not None:
            targets = targets.masked_fill(loss_mask == 0, -100)
        # The output layer is the widest matmul: skip the positions that do not count (in stage E, the
        # prompt, the picture and the question). Where every position counts this changes nothing.
        keep = targets != -100  # (B, T)
        h, targets = h[keep], targets[keep]  # (N, d_model), (N,)
        n = keep.sum().clamp(min=1)  # mean over the counted tokens; none counted gives 0, not NaN
        if self.cfg.loss_chunk:
            return None, chunked_cross_entropy(h, self.lm_head.weight, targets, self.cfg.loss_chunk) / n
        logits = self.lm_head(h)  # (N, vocab_size)
        return logits, F.cross_entropy(logits.float(), targets, reduction="sum") / n


# ---------------------------------------------------------------- generation


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """One token per row from logits (B, vocab): argmax when temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely tokens. Returns (B, 1)."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1) k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model: Thinker, idx, max_new_tokens: int, temperature=1.0, top_k=None, eos_id=None,
             generator=None, *, embeds=None):
    """Continue every row of idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

    All rows share the prompt length T (no padding). The prompt goes through the model once, filling
    the KV cache, then each step feeds only the newest token. A row that has produced eos_id keeps
    emitting eos_id; generation stops early once every row has. embeds (B, T, d_model), if given, is
    used for the prompt pass instead of idx's embeddings (stage E); idx is still returned in front.
    A prompt plus max_new_tokens longer than max_seq_len is a ValueError, never a silent crop.
    """
    B, T = idx.shape
    if T + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt of {T} tokens + max_new_tokens={max_new_tokens} exceeds "
                         f"ThinkerConfig.max_seq_len={model.cfg.max_seq_len}; shorten one of them")
    was_training = model.training
    model.eval()  # no dropout while sampling
    cache = model.make_cache(B)
    logits, _ = model(None if embeds is not None else idx, embeds=embeds, kv_cache=cache, start_pos=0)
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        if step > 0:  # feed the token chosen last step at position T + step - 1
            logits, _ = model(idx[:, -1:], kv_cache=cache, start_pos=T + step - 1)
        nxt = sample_next(logits[:, -1], temperature, top_k, generator)  # (B, 1)
        if eos_id is not None:
            nxt = nxt.masked_fill(done[:, None], eos_id)
            done |= nxt[:, 0] == eos_id
        idx = torch.cat([idx, nxt], dim=1)
        if done.all():
            break
    model.train(was_training)
    return idx
