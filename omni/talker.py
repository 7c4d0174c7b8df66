"""The Talker: a small autoregressive transformer that writes codec codes for what the Thinker wrote.

In Qwen2.5-Omni (arXiv:2503.20215) the Talker reads the Thinker's tokens and hidden states and
writes discrete speech codes, which a codec decoder and a vocoder turn into a waveform. Ours:

- Conditioning. The sentence is tokenized with the stage A tokenizer, word by word (each word with
  its leading space), so every token belongs to exactly one word. Token ids are embedded with the
  stage A Thinker's frozen table (cond="embed") or replaced by the frozen Thinker's last hidden
  states (cond="hidden", as Qwen2.5-Omni), projected to the Talker's width and read by a small
  bidirectional text encoder. A word's state is the mean of its tokens' states.
- A duration model (FastSpeech's duration predictor, per word): a small head reads each word's
  state and predicts log(frames the word lasts); trained with MSE against eSpeak's word timings.
- Alignment by interleaving ("dual-track", text and speech advance together). Every codec frame t
  belongs to one word w(t) lasting n frames (eSpeak's timings in training, the duration model in
  generation), and is its k-th frame. The input at frame t is
      sum_k code_emb_k(c[t-1, k])  (a BOS vector at t = 0)
      + state(w(t)) + next_proj(state(w(t) + 1))   (look-ahead; a learned "end" vector past the end)
      + pos_emb(k) + rel_emb(bucket of k / n) + left_emb(n - 1 - k)
      + sub_proj(token of w(t) at the same relative place k / n, its encoder state + its own embedding)
  so the Talker never has to discover which word it is saying, nor which part of it: it is told.
  The last term gives sub-word detail (" square" is " s", "qu", "are", read in that order) and the
  word's own token embedding, which a mean over the text encoder's states blurs.
- Outputs per frame: codebook 0 from the main causal transformer; codebooks 1..K-1 from a small
  depth transformer over the codebooks of that frame (Moshi's depth transformer, Qwen3-Omni's
  multi-token prediction), teacher-forced in training. In generation the predicted durations move
  the Talker from word to word; moving past the last word is the end of speech, so generation
  stops by itself.
- A phoneme teacher (optional, training only): a linear head reads each frame's state and predicts
  the phoneme eSpeak was saying in that frame (its phoneme events), so the frame states must carry
  which sound is being made; generation never uses it.
- History dropout: in training, half the frames see the BOS vector instead of the previous
  frame's codes, so they must be predicted from the text (Tacotron's prenet dropout does the same
  job). Without it the Talker learns to continue the sound and says fluent but wrong words.

The main transformer reuses the Thinker's blocks (RMSNorm, RoPE, SwiGLU, KV cache).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.thinker import Block, KVCache, RMSNorm, Rotary, Thinker, ThinkerConfig, sample_next


@dataclass
class TalkerConfig:
    codec: str = "runs/codec_tiny/best.pt"  # the frozen stage D codec whose codes the Talker writes
    thinker: str = "runs/thinker_tiny/best.pt"  # the stage A Thinker: frozen embedding table / hidden states
    tokenizer: str = "runs/thinker_tiny/tokenizer.model"  # the stage A tokenizer
    cond: str = "embed"  # 'embed' = Thinker token embeddings, 'hidden' = the Thinker's last hidden states
    d_model: int = 192  # width of the text encoder and the frame transformer (channels)
    n_layer: int = 4  # causal frame-transformer blocks
    n_head: int = 6  # attention heads (frame transformer, text encoder)
    text_layers: int = 2  # bidirectional text-encoder layers
    depth_layers: int = 1  # depth-transformer blocks (residual codebooks of one frame)
    depth_d_model: int = 128  # depth-transformer width (channels)
    max_word_pos: int = 32  # frames-inside-a-word (and frames-left) positions embedded; later share the last
    rel_bins: int = 8  # buckets of the relative position k / n inside a word
    max_frames: int = 1024  # longest utterance in codec frames (40 s at 25 Hz)
    max_tokens: int = 256  # longest sentence in Thinker tokens
    dropout: float = 0.0  # dropout in the text encoder and frame transformer
    history_dropout: float = 0.5  # share of training frames that see BOS instead of the previous frame's codes
    duration_weight: float = 1.0  # weight of the log-duration MSE (per word) next to the code cross-entropies
    code0_weight: float = 1.0  # weight of codebook 0's cross-entropy; each residual codebook weighs 1
    phoneme_weight: float = 0.0  # weight of the per-frame eSpeak phoneme cross-entropy (0 = no phoneme head)
    phonemes: str = ""  # the phoneme head's classes, space-separated ("" = read from the training set)
    gen_history: bool = True  # generation reads the previous frame's codes (False: BOS, as hidden training frames)
    temperature: float = 0.7  # sampling temperature of codebook 0 (0 = greedy)
    top_k: int = 20  # top-k of codebook 0 (0 = all codes)
    temperature_res: float = 0.7  # sampling temperature of the residual codebooks (0 = greedy)
    top_k_res: int = 20  # top-k of the residual codebooks (0 = all codes)
    max_len_ratio: float = 2.0  # generation cap: this many times the expected length (then "did not end")
    n_codebooks: int = 0  # codebooks K; 0 = read from the codec checkpoint at start-up
    codebook_size: int = 0  # entries per codebook C; 0 = read from the codec checkpoint
    frames_per_char: float = 0.0  # codec frames per text character, measured on the training set (0 = measure)

    def __post_init__(self):
        if self.cond not in ("embed", "hidden"):
            raise ValueError(f"TalkerConfig.cond: must be 'embed' or 'hidden', got {self.cond!r}")
        for key in ("d_model", "n_layer", "n_head", "text_layers", "depth_layers", "depth_d_model",
                    "max_word_pos", "rel_bins", "max_frames"):
            if getattr(self, key) < 1:
                raise ValueError(f"TalkerConfig.{key}: must be >= 1, got {getattr(self, key)}")
        if self.code0_weight <= 0:
            raise ValueError(f"TalkerConfig.code0_weight: must be > 0, got {self.code0_weight}")
        if not 0 <= self.history_dropout < 1:
            raise ValueError(f"TalkerConfig.history_dropout: must be in [0, 1), got {self.history_dropout}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"TalkerConfig.n_head: d_model={self.d_model} / n_head must be an even integer")


def _block_cfg(d_model: int, n_layer: int, n_head: int, max_len: int, dropout: float, pos: str) -> ThinkerConfig:
    """A ThinkerConfig that only sizes borrowed Thinker blocks (vocab_size is unused)."""
    return ThinkerConfig(vocab_size=1, d_model=d_model, n_layer=n_layer, n_head=n_head, n_kv_head=n_head,
                         max_seq_len=max_len, dropout=dropout, pos=pos)


def place_in_word(k, n, first, count, bins: int):
    """Frame k (0-based) of a word n frames long whose tokens are first .. first + count - 1 (all (B, T))
    -> (bucket of k / n in 0..bins-1, the token at the same relative place: token j of count for the
    j-th count-th of the n frames)."""
    rel = torch.div(k * bins, n, rounding_mode="floor")
    return rel, first + torch.div(k * count.clamp(min=1), n, rounding_mode="floor")


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig, thinker_table: torch.Tensor, thinker: Thinker | None = None):
        """thinker_table: the stage A token embedding matrix (vocab, d_thinker), kept frozen as a
        buffer. thinker: the frozen Thinker itself, needed only for cond='hidden'."""
        super().__init__()
        self.cfg = cfg
        K, C, d = cfg.n_codebooks, cfg.codebook_size, cfg.d_model
        if K < 1 or C < 2:
            raise ValueError("TalkerConfig.n_codebooks / codebook_size must be set (from the codec)")
        self.register_buffer("thinker_table", thinker_table.detach().clone().float())
        self.thinker = thinker
        if thinker is not None:
            thinker.requires_grad_(False)
        # text encoder: (B, N, d_thinker) -> (B, N, d), bidirectional
        self.text_in = nn.Linear(thinker_table.size(1), d)
        self.text_pos = nn.Embedding(cfg.max_tokens, d)
        layer = nn.TransformerEncoderLayer(d, cfg.n_head, 4 * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.text_enc = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(d)
        self.end_word = nn.Parameter(torch.randn(d) * 0.02)  # the "word" after the last one
        self.next_proj = nn.Linear(d, d, bias=False)  # look-ahead word state enters through its own map
        self.word_pos = nn.Embedding(cfg.max_word_pos, d)  # k: frames since the word began
        self.rel_pos = nn.Embedding(cfg.rel_bins, d)  # k / n in rel_bins buckets: which part of the word
        self.left_pos = nn.Embedding(cfg.max_word_pos, d)  # n - 1 - k: frames until the word ends
        self.tok_id = nn.Linear(thinker_table.size(1), d, bias=False)  # a token's own embedding, past the encoder
        self.sub_proj = nn.Linear(d, d, bias=False)  # the token at the frame's place in its word
        self.duration = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))  # word state -> log frames
        # frame transformer
        self.code_emb = nn.ModuleList(nn.Embedding(C, d) for _ in range(K))
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.tcfg = _block_cfg(d, cfg.n_layer, cfg.n_head, cfg.max_frames, cfg.dropout, "rope")
        self.rotary = Rotary(self.tcfg.head_dim, cfg.max_frames, self.tcfg.rope_theta)
        self.blocks = nn.ModuleList(Block(self.tcfg, i) for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(d, 1e-5)
        self.head0 = nn.Linear(d, C, bias=False)
        n_phon = len(cfg.phonemes.split())
        self.phone_head = nn.Linear(d, n_phon) if cfg.phoneme_weight > 0 and n_phon else None
        # depth transformer over codebooks 1..K-1 of one frame (position j predicts codebook j + 1)
        dd = cfg.depth_d_model
        self.depth_in = nn.Linear(d, dd)
        self.depth_emb = nn.ModuleList(nn.Embedding(C, dd) for _ in range(max(0, K - 1)))
        self.depth_pos = nn.Parameter(torch.randn(max(1, K - 1), dd) * 0.02)
        dcfg = _block_cfg(dd, cfg.depth_layers, max(1, dd // 32), max(1, K - 1), 0.0, "learned")
        self.depth_blocks = nn.ModuleList(Block(dcfg, i) for i in range(cfg.depth_layers))
        self.depth_norm = RMSNorm(dd, 1e-5)
        self.depth_heads = nn.Parameter(torch.randn(max(0, K - 1), C, dd) * 0.02)

    # ---------------------------------------------------------------- text side

    def encode_text(self, tokens, tok_word, n_words) -> dict:
        """tokens, tok_word (B, N) (padding: token 0, word -1), n_words (B,) -> {"states" (B, W, d): each
        word's state (mean of its tokens), the end vector from index n_words[b] on (W = max n_words + 1);
        "log_dur" (B, W): predicted log frames of each word; "tok" (B, N, d): each token's encoder state
        plus its own projected embedding; "first", "count" (B, W): each word's first token and token count}."""
        B, N = tokens.shape
        with torch.no_grad():
            raw = F.embedding(tokens, self.thinker_table)  # (B, N, d_thinker)
            x = self.thinker.hidden(tokens) if self.cfg.cond == "hidden" else raw  # right padding reaches nothing
        x = self.text_in(x) + self.text_pos(torch.arange(N, device=tokens.device))
        pad = tok_word < 0
        x = self.text_norm(self.text_enc(x, src_key_padding_mask=pad))  # (B, N, d)
        W = int(n_words.max()) + 1
        slot = tok_word.masked_fill(pad, W)  # padding tokens go to a slot that is dropped below
        sums = x.new_zeros(B, W + 1, x.size(-1)).scatter_add_(1, slot[..., None].expand_as(x), x)
        counts = x.new_zeros(B, W + 1).scatter_add_(1, slot, torch.ones_like(slot, dtype=x.dtype))[:, :W]
        states = sums[:, :W] / counts.clamp(min=1)[..., None]  # (B, W, d)
        is_end = torch.arange(W, device=x.device)[None, :] >= n_words[:, None]  # (B, W)
        states = torch.where(is_end[..., None], self.end_word, states)
        count = counts.long()
        return {"states": states, "log_dur": self.duration(states).squeeze(-1), "tok": x + self.tok_id(raw),
                "first": count.cumsum(1) - count, "count": count}

    def frame_condition(self, text, frame_word, frame_pos, frame_len, n_words):
        """The text part of each frame's input: (B, T) word indices, in-word positions k and lengths n of
        the frame's word -> (B, T, d)."""
        states, tok = text["states"], text["tok"]
        d, top = states.size(-1), self.cfg.max_word_pos - 1
        cur = frame_word.clamp(max=states.size(1) - 1)
        nxt = torch.minimum(cur + 1, n_words[:, None])
        gather = lambda src, idx: src.gather(1, idx[..., None].expand(-1, -1, d))  # noqa: E731
        n = frame_len.clamp(min=1)
        k = torch.minimum(frame_pos, n - 1)
        rel, t_idx = place_in_word(k, n, text["first"].gather(1, cur), text["count"].gather(1, cur), self.cfg.rel_bins)
        return (gather(states, cur) + self.next_proj(gather(states, nxt)) + self.word_pos(frame_pos.clamp(max=top))
                + self.rel_pos(rel) + self.left_pos((n - 1 - k).clamp(max=top))
                + self.sub_proj(gather(tok, t_idx.clamp(max=tok.size(1) - 1))))

    def embed_codes(self, codes):
        """(B, T, K) codes -> (B, T, d) sum of the K codebook embeddings."""
        return sum(emb(codes[..., k]) for k, emb in enumerate(self.code_emb))

    # ---------------------------------------------------------------- frame side

    def frames(self, x, kv_cache=None, start_pos=0):
        """(B, T, d) frame inputs -> (B, T, d) normed hidden states of the causal frame transformer."""
        rope = self.rotary(start_pos, x.size(1))
        for block in self.blocks:
            x = block(x, rope, kv_cache, start_pos)
        return self.norm_f(x)

    def depth(self, h, codes):
        """h (M, d) frame states, codes (M, j) the first j codebooks of those frames (1 <= j <= K-1)
        -> (M, j, C) logits of codebooks 1..j."""
        j = codes.size(1)
        x = torch.stack([self.depth_emb[i](codes[:, i]) for i in range(j)], 1)  # (M, j, dd)
        x = x + self.depth_in(h)[:, None] + self.depth_pos[:j]  # the frame state reaches every position
        for block in self.depth_blocks:
            x = block(x)
        return torch.einsum("mjd,jcd->mjc", self.depth_norm(x), self.depth_heads[:j])

    def forward(self, tokens, tok_word, n_words, codes, frame_word, frame_pos, durations):
        """Teacher-forced pass. codes (B, T, K), frame_word / frame_pos (B, T), durations (B, W') frames
        of each word (eSpeak's) -> (logits (B, T, K, C), predicted log durations (B, W), phoneme logits
        (B, T, P) or None without a phoneme head)."""
        B, T, K = codes.shape
        text = self.encode_text(tokens, tok_word, n_words)
        frame_len = durations.gather(1, frame_word.clamp(max=durations.size(1) - 1))  # (B, T)
        prev = self.embed_codes(codes[:, :-1])  # (B, T-1, d): frame t reads the codes of frame t-1
        prev = torch.cat([self.bos.expand(B, 1, -1), prev], 1)  # (B, T, d)
        if self.training and self.cfg.history_dropout > 0:
            # Hide the previous frame from a share of frames: with the true codes of frame t-1 in view
            # the next code is easy to guess from them alone, and the Talker learns to continue sound
            # instead of reading the text (it then says fluent but wrong words). Tacotron's prenet
            # dropout does the same job.
            hide = torch.rand(B, T, 1, device=prev.device) < self.cfg.history_dropout
            prev = torch.where(hide, self.bos, prev)
        h = self.frames(prev + self.frame_condition(text, frame_word, frame_pos, frame_len, n_words))  # (B, T, d)
        logits = self.head0(h)[:, :, None]  # (B, T, 1, C)
        if K > 1:
            res = self.depth(h.reshape(B * T, -1), codes[..., :-1].reshape(B * T, K - 1))  # (B*T, K-1, C)
            logits = torch.cat([logits, res.view(B, T, K - 1, -1)], 2)
        return logits, text["log_dur"], None if self.phone_head is None else self.phone_head(h)


def talker_loss(logits, log_dur, phones, batch, cfg: TalkerConfig):
    """Cross-entropy per codebook (mean over real frames) plus the MSE of the log word durations (mean
    over real words) plus, with a phoneme head (phones (B, T, P)), the phoneme cross-entropy against
    batch["phones"]; padding frames (mask 0) and words (duration 0) count nowhere. Returns (loss, stats
    with per-codebook accuracy and the mean absolute error of the rounded durations, in frames)."""
    mask = batch["mask"]  # (B, T) bool
    n = mask.sum().clamp(min=1)
    codes = batch["codes"]
    K = codes.size(-1)
    ce = F.cross_entropy(logits.float().flatten(0, 2), codes.flatten(), reduction="none").view(codes.shape)
    ce_k = (ce * mask[..., None]).sum((0, 1)) / n  # (K,)
    dur = batch["durations"].float()  # (B, W') frames per word, 0 = no word
    real = dur > 0
    W = min(dur.size(1), log_dur.size(1))
    pred, dur, real = log_dur[:, :W].float(), dur[:, :W], real[:, :W]
    n_w = real.sum().clamp(min=1)
    mse = (((pred - dur.clamp(min=1).log()) ** 2) * real).sum() / n_w
    w = torch.ones_like(ce_k)
    w[0] = cfg.code0_weight  # codebook 0 carries most of what the judge hears (chapter 7)
    loss = (w * ce_k).sum() / w.sum() + cfg.duration_weight * mse
    if phones is not None:
        target = batch["phones"].masked_fill(~mask, -1)  # (B, T), -1 = no phoneme
        loss = loss + cfg.phoneme_weight * F.cross_entropy(phones.float().flatten(0, 1), target.flatten(),
                                                           ignore_index=-1)
    with torch.no_grad():
        hit = (logits.argmax(-1) == codes) & mask[..., None]
        stats = {f"acc{k}": hit[..., k].sum() / n for k in range(K)}
        stats["dur_mae"] = ((frames_of(pred) - dur).abs() * real).sum() / n_w
        stats["dur_mse"] = mse.detach()
        if phones is not None:
            known = target >= 0
            stats["phone_acc"] = ((phones.argmax(-1) == target) & known).sum() / known.sum().clamp(min=1)
    return loss, stats


# ---------------------------------------------------------------- generation


def frames_of(log_dur):
    """Predicted log durations -> whole frames, at least one (every word is said)."""
    return log_dur.exp().round().clamp(min=1)


@torch.no_grad()
def generate(model: Talker, tokens, tok_word, n_words, max_frames, generator=None, return_logits=False):
    """Speak B sentences at once with a KV cache: the duration model says how many frames each word
    lasts, then one frame per step, codebook 0 from the frame transformer, then codebooks 1..K-1 from
    the depth transformer. max_frames (B,) caps each row; a row that reaches its cap "did not end".
    Returns {"codes": (B, T, K), "lengths": (B,), "ended": (B,) bool, "frame_word"/"frame_pos": (B, T),
    "durations": (B, W) frames per word (0 past the last), and with return_logits "logits" (B, T, C)}."""
    cfg = model.cfg
    was_training = model.training
    model.eval()
    B, K = tokens.size(0), cfg.n_codebooks
    dev = tokens.device
    T_max = min(int(max_frames.max()), cfg.max_frames)
    text = model.encode_text(tokens, tok_word, n_words)
    W = text["states"].size(1)
    real = torch.arange(W, device=dev)[None, :] < n_words[:, None]  # (B, W)
    durations = torch.where(real, frames_of(text["log_dur"]).long(), 0)  # (B, W)
    cache = KVCache(model.tcfg, B, device=dev, dtype=text["states"].dtype)
    word = torch.zeros(B, dtype=torch.long, device=dev)
    pos = torch.zeros(B, dtype=torch.long, device=dev)
    lengths = torch.zeros(B, dtype=torch.long, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    ended = torch.zeros(B, dtype=torch.bool, device=dev)
    prev = model.bos.expand(B, 1, -1)
    out = {k: [] for k in ("codes", "frame_word", "frame_pos", "logits")}

    def pick(logits, temperature, top_k):
        return sample_next(logits, temperature, top_k or None, generator)  # (B, 1)

    for t in range(T_max):
        n = durations.gather(1, word.clamp(max=W - 1)[:, None])  # (B, 1) frames of the current word
        x = prev + model.frame_condition(text, word[:, None], pos[:, None], n, n_words)  # (B, 1, d)
        h = model.frames(x, cache, start_pos=t)[:, 0]  # (B, d)
        logits0 = model.head0(h)
        frame = pick(logits0, cfg.temperature, cfg.top_k)  # (B, 1)
        for _ in range(1, K):  # codebook j = frame.size(1) from the j codes chosen so far
            res = model.depth(h, frame)[:, -1]  # (B, C)
            frame = torch.cat([frame, pick(res, cfg.temperature_res, cfg.top_k_res)], 1)
        for k, v in (("codes", frame), ("frame_word", word), ("frame_pos", pos), ("logits", logits0)):
            out[k].append(v.clone())
        lengths += active.long()
        advance = (pos + 1 >= n[:, 0]) & active  # the word's predicted frames are said: on to the next
        word = word + advance.long()
        pos = torch.where(advance, 0, pos + 1)
        ended |= active & (word >= n_words)
        active &= (word < n_words) & (lengths < max_frames)
        if not active.any():
            break
        prev = model.embed_codes(frame[:, None]) if cfg.gen_history else prev  # (B, 1, d)
    model.train(was_training)
    result = {k: torch.stack(v, 1) for k, v in out.items() if k != "logits" or return_logits}
    result.update(lengths=lengths, ended=ended, durations=durations)
    return result
