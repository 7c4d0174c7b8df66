"""What `omni.bench` measures: one row per stage model, each a builder returning a `Case` (the model,
one batch at the tiny config's shapes, the stage's loss, the units the batch holds and, where the
stage's data is on disk, its get_batch), plus one line in ROWS. How a row is timed, counted and
printed is omni/bench.py's part.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni import config
from omni.audio import FrontEndConfig, augment, load_speech_set, pad_batch
from omni.audio_encoder import AudioCTC, AudioEncoderConfig, CharVocab
from omni.clip import CLIP, ClipConfig, TextConfig, clip_loss
from omni.codec import Codec, CodecConfig
from omni.omni_model import OmniModel
from omni.paths import repo_path
from omni.projector import ProjectorConfig
from omni.talker import Talker, TalkerConfig, talker_loss
from omni.talker_data import FRAME_RATE, collate
from omni.text_data import random_windows
from omni.thinker import Thinker, ThinkerConfig
from omni.vision import VisionConfig

GPT2_SWITCHES = {"norm": "layernorm", "pos": "learned", "mlp": "gelu"}


@dataclass
class Case:
    """One row: a model, one batch of CPU tensors at the config's shapes, and the stage's loss."""
    model: nn.Module
    batch: tuple  # the batch every timed step trains on
    loss: Callable[[nn.Module, tuple], torch.Tensor]  # (model, batch on the device) -> scalar loss
    units: float  # units in the batch (tokens, seconds of audio, pictures)
    unit: str  # their name in the table
    get_batch: Callable[[int], tuple] | None = None  # the stage's data path, None when the data is absent


def _json(path: str, section: str) -> dict:
    return config.read_json(path, "config file").get(section, {})


# ---------------------------------------------------------------- rows, one builder per model


def thinker_case(path: str, toy: bool, gpt2: bool = False, **overrides) -> Case:
    """Stage A: next-token loss on B x seq_len windows of token ids. gpt2: the same shape with GPT-2's
    LayerNorm, learned positions, GELU MLP and full multi-head attention."""
    m = {**_json(path, "model"), **overrides}
    B, T = _json(path, "train").get("batch_size", 16), _json(path, "data").get("seq_len", 256)
    if toy:
        m, B, T = {**m, "vocab_size": 256, "d_model": 32, "n_layer": 1, "n_head": 2, "n_kv_head": 1,
                   "max_seq_len": 32}, 2, 32
    if gpt2:
        m = {**m, **GPT2_SWITCHES, "n_kv_head": m.get("n_head", ThinkerConfig.n_head)}
    cfg = config.from_dict(ThinkerConfig, m, path)
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, cfg.vocab_size, (1_000_000,), generator=g)  # as long as the Austen corpus

    def get_batch(i):  # train_text.py's get_batch: B random windows; the ids themselves cost nothing extra
        return random_windows(stream, B, T, 1337, i)

    return Case(Thinker(cfg), get_batch(0), lambda model, b: model(*b)[1], B * T, "tok", get_batch)


def audio_case(path: str, toy: bool) -> Case:
    """Stage B: CTC on B clips of log-mel frames (the real clips when data/speech_tiny exists)."""
    cfg = config.from_dict(AudioEncoderConfig, _json(path, "model"), path)
    data, B = _json(path, "data"), _json(path, "train").get("batch_size", 8)
    if toy:
        cfg, B = AudioEncoderConfig(d_model=32, n_layer=1, n_head=2, d_ff=64), 2
    vocab = CharVocab()
    manifest = repo_path(data.get("train", "data/speech_tiny/train.jsonl"))
    if manifest.is_file() and not toy:
        clips = load_speech_set(manifest, FrontEndConfig(), vocab.is_valid)

        def get_batch(i):  # train_audio_enc.py's get_batch: augment B cached clips, pad, targets
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(0, len(clips), (B,), generator=g).tolist()
            feats = [augment(clips.features(k), g, data.get("speed", 0.1), data.get("warp", 0.1),
                             data.get("freq_masks", 2), data.get("freq_width", 10), data.get("time_masks", 2),
                             data.get("time_width", 20)) for k in ids]
            ys = [torch.tensor(vocab.encode(clips.texts[k])) for k in ids]
            return (*pad_batch(feats), torch.cat(ys), torch.tensor([len(y) for y in ys]))
        batch, fetch = get_batch(0), get_batch
    else:  # 1.8-second clips (180 frames) of 27 characters, the tiny set's average clip
        T, n_chars = (40, 5) if toy else (180, 27)
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(B, T, cfg.n_mels, generator=g), torch.full((B,), T),
                 torch.randint(1, len(vocab), (B * n_chars,), generator=g), torch.full((B,), n_chars))
        fetch = None

    def loss(model, b):
        x, lengths, ys, y_lengths = b
        log_probs, out_lengths = model(x, lengths)
        return F.ctc_loss(log_probs.transpose(0, 1), ys, out_lengths, y_lengths, zero_infinity=True)

    return Case(AudioCTC(cfg), batch, loss, float(batch[1].sum()) / 100, "s audio", fetch)


def vision_case(path: str, toy: bool) -> Case:
    """Stage C: the CLIP loss on B pictures and B captions (synthetic: the step does not depend on
    what the pixels show; stage C's get_batch only indexes tensors already in memory)."""
    v = config.from_dict(VisionConfig, _json(path, "vision"), path)
    t = config.from_dict(TextConfig, _json(path, "text"), path)
    c = config.from_dict(ClipConfig, _json(path, "clip"), path)
    B = _json(path, "train").get("batch_size", 128)
    if toy:
        v, t, c, B = VisionConfig(d_model=32, n_layer=1, n_head=2), TextConfig(d_model=32, n_layer=1, n_head=2), \
            ClipConfig(embed_dim=32), 4
    vocab, L = 2048, min(16, t.max_len)  # tiny captions are ~12 tokens ("a small red circle above ...")
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 256, (B, 3, v.image_size, v.image_size), dtype=torch.uint8, generator=g),
             torch.randint(0, vocab, (B, L), generator=g), torch.full((B,), L), torch.arange(B))

    def loss(model, b):
        images, ids, lengths, caption_id = b
        return clip_loss(*model(images.float() / 255, ids, lengths), caption_id)

    return Case(CLIP(v, t, c, vocab), batch, loss, B, "img")


def codec_case(path: str, toy: bool) -> Case:
    """Stage D, first part: the codec's reconstruction loss on B random crops of log-mel frames
    (synthetic: the step's cost depends on the shapes only; train_talker.py crops cached features)."""
    c = config.from_dict(CodecConfig, _json(path, "codec"), path)
    B, L = _json(path, "train").get("batch_size", 16), _json(path, "data").get("crop", 160)
    if toy:
        c, B, L = CodecConfig(channels=16, n_res=1, code_dim=8, n_codebooks=2, codebook_size=8), 2, 32
    batch = (torch.randn(B, L, c.n_mels, generator=torch.Generator().manual_seed(0)),)

    def loss(model, b):  # train_talker.py's codec loss
        y, _, extra = model(b[0])
        return (y - b[0]).abs().mean() + c.l2_weight * ((y - b[0]) ** 2).mean() + c.commit_weight * extra["commit"]

    return Case(Codec(c), batch, loss, B * L / 100, "s audio")


def talker_case(path: str, codec_path: str, thinker_path: str, toy: bool) -> Case:
    """Stage D, second part: the Talker's teacher-forced loss on B clips of 11 words, 17 tokens and 66
    code frames (2.64 s), the voice set's mean clip (11.0 words, 17.3 tokens, 2.7 s), built with the
    stage's own collate (synthetic codes and tokens; a random table, or with cond "hidden" a random
    frozen Thinker, stands in for stage A)."""
    t = {**_json(path, "talker"), **{k: v for k, v in _json(codec_path, "codec").items()
                                     if k in ("n_codebooks", "codebook_size")}}
    B = _json(path, "train").get("batch_size", 16)
    m = config.from_dict(ThinkerConfig, _json(thinker_path, "model"), thinker_path)
    W, frames = 11, 6
    if toy:
        t = {**t, "d_model": 16, "n_layer": 1, "n_head": 2, "text_layers": 1, "depth_d_model": 16,
             "n_codebooks": 2, "codebook_size": 8}
        m, B, W = ThinkerConfig(vocab_size=256, d_model=32), 2, 3
    t.setdefault("n_codebooks", 4)
    t.setdefault("codebook_size", 256)
    if t.get("phoneme_weight", TalkerConfig.phoneme_weight) > 0:
        t["phonemes"] = " ".join(f"p{i}" for i in range(40))  # eSpeak's English has about 40 classes
    cfg = config.from_dict(TalkerConfig, t, path)
    g = torch.Generator().manual_seed(0)
    clips = type("Clips", (), {})()  # what collate reads of a TalkerSet, clip by clip
    per_word = torch.tensor([2, 1]).repeat(W)[:W]  # tokens of each word: 2, 1, 2, ... (17 for 11 words)
    clips.tokens = [torch.randint(1, m.vocab_size, (int(per_word.sum()),), generator=g) for _ in range(B)]
    clips.tok_word = [torch.arange(W).repeat_interleave(per_word) for _ in range(B)]
    clips.tracks = [torch.arange(W).repeat_interleave(frames) for _ in range(B)]
    clips.codes = [torch.randint(0, cfg.codebook_size, (W * frames, cfg.n_codebooks), generator=g) for _ in range(B)]
    clips.phones = [torch.randint(0, 40, (W * frames,), generator=g) for _ in range(B)] if cfg.phonemes else []
    batch = collate(clips, list(range(B)))
    thinker = Thinker(m) if cfg.cond == "hidden" else None  # frozen: its forward counts, not its weights
    table = thinker.tok_emb.weight if thinker else torch.randn(m.vocab_size, m.d_model, generator=g) * 0.02
    model = Talker(cfg, table, thinker)
    fields = ("tokens", "tok_word", "n_words", "codes", "frame_word", "frame_pos", "durations")
    return Case(model, (batch,), lambda model, b: talker_loss(*model(*(b[0][k] for k in fields)), b[0], cfg)[0],
                B * W * frames / FRAME_RATE, "s audio")


def omni_case(path: str, thinker_path: str, vision_path: str, audio_path: str, toy: bool) -> Case:
    """Stage E: the assistant-token loss on B image-question rows: the picture's projected tokens
    (9 at the tiny config, 49 at the GPU one) and 31 positions of chat tokens, question and answer
    (the encoders' outputs are computed once per run, so the step is the projectors and the Thinker;
    every part trains here, the freeze plan aside). Toy sizes keep the picture's geometry and the
    projector's choices (its audio context sets the width the audio projector reads)."""
    th = config.from_dict(ThinkerConfig, _json(thinker_path, "model"), thinker_path)
    v = config.from_dict(VisionConfig, _json(vision_path, "vision"), vision_path)
    a = config.from_dict(AudioEncoderConfig, _json(audio_path, "model"), audio_path)
    proj = config.from_dict(ProjectorConfig, _json(path, "projector"), path)
    B = _json(path, "train").get("batch_size", 16)
    if toy:
        th = ThinkerConfig(vocab_size=256, d_model=32, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=128)
        v = VisionConfig(image_size=v.image_size, patch_size=v.patch_size, d_model=32, n_layer=1, n_head=2,
                         merge_dim=32 if v.merge_dim else 0)
        a, proj, B = AudioEncoderConfig(d_model=32, n_layer=1, n_head=2, d_ff=64), replace(proj, hidden=32), 2
    image_id, audio_id = th.vocab_size - 2, th.vocab_size - 1
    model = OmniModel(th, v, a, proj, image_id, audio_id)
    n = model.image_tokens
    T = n + 31
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, image_id, (B, T), generator=g)
    x[:, 2: 2 + n] = image_id  # <|im_start|>user, then the picture, then the question and the answer
    mask = torch.zeros(B, T)
    mask[:, -3:] = 1  # a one-word answer and <|im_end|>: the tokens the loss counts
    batch = (x, torch.randint(0, image_id, (B, T), generator=g), mask, torch.randn(B * n, v.width, generator=g),
             torch.zeros(0, model.audio_width))  # no clips in these rows; the width the projector reads
    return Case(model, batch, lambda model, b: model(*b)[1], B * T, "tok")


VARIANTS = {"A"}  # stages whose rows are variants of one model (Thinker, GPT-2, chunked loss), compared
# name -> (stage, builder(gpu, toy)); a later stage adds its rows here.
ROWS: dict[str, tuple[str, Callable[[bool, bool], Case]]] = {
    "A thinker": ("A", lambda gpu, toy: thinker_case(
        "configs/thinker_small.json" if gpu else "configs/thinker_tiny.json", toy)),
    "A gpt2": ("A", lambda gpu, toy: thinker_case(
        "configs/thinker_small.json" if gpu else "configs/gpt2_tiny.json", toy, gpt2=True)),
    "A chunked": ("A", lambda gpu, toy: thinker_case(  # the Thinker with its chunked output layer + loss
        "configs/thinker_small.json" if gpu else "configs/thinker_tiny.json", toy, loss_chunk=512)),
    "B audio": ("B", lambda gpu, toy: audio_case(
        "configs/audio_enc_librispeech_gpu.json" if gpu else "configs/audio_enc_tiny.json", toy)),
    "C vision": ("C", lambda gpu, toy: vision_case(
        "configs/vision_coco_gpu.json" if gpu else "configs/vision_tiny.json", toy)),
    "D codec": ("D", lambda gpu, toy: codec_case(
        "configs/codec_ljspeech_gpu.json" if gpu else "configs/codec_tiny.json", toy)),
    "D talker": ("D", lambda gpu, toy: talker_case(
        "configs/talker_ljspeech_gpu.json" if gpu else "configs/talker_tiny.json",
        "configs/codec_ljspeech_gpu.json" if gpu else "configs/codec_tiny.json",
        "configs/thinker_small.json" if gpu else "configs/thinker_tiny.json", toy)),
    "E omni": ("E", lambda gpu, toy: omni_case(
        "configs/omni_llava_gpu.json" if gpu else "configs/omni_tiny.json",
        "configs/thinker_small.json" if gpu else "configs/thinker_tiny.json",
        "configs/vision_coco_gpu.json" if gpu else "configs/vision_tiny.json",
        "configs/audio_enc_librispeech_gpu.json" if gpu else "configs/audio_enc_tiny.json", toy)),
}
