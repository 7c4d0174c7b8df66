"""The omni model: the stage A Thinker with the stage B ears and the stage C eyes.

    picture (3, 48, 48) -> VisionEncoder (frozen, stage C) -> 9 merged patch tokens (9, d_vision)
                           -> image projector -> (9, d_model) --+
    speech (T mel frames) -> AudioEncoder (frozen, stage B) -> T/4 frames (25 per second)   |
                           -> audio projector -> (T/4, d_model) --+--> spliced into the token
    text -> tokenizer -> ChatML ids with placeholders -> Thinker.embed_tokens ------------+    embeddings
                                                                                         |
                                                           Thinker (stage A) <-----------+ -> text

This is the Thinker half of Qwen2.5-Omni (Xu et al. 2025, arXiv:2503.20215) and the layout of
LLaVA (Liu et al. 2023): pretrained encoders, one small projector each, and a language model
that reads the projected features as if they were words. The encoders stay frozen in stage E,
so their outputs for the training data are computed once (`encode_images`, `encode_audio`) and
training runs only the projectors and the Thinker.

Transcripts can be decoded with a second opinion beside the Thinker (`transcribe`): a CTC
spelling of the audio frames, in the Thinker's tokens (`spelling`) or in stage B's letters
(`char_spelling`, a linear head on the frames the audio projector reads, projector.audio_chars).

Parameter names start with "thinker.", "vision.", "audio.", "projectors." or "char_head.": the
first four are the prefixes a freeze plan (train.lr_scale) names. `from_stages` builds the model from the three
stage checkpoints, `load_omni` from a stage E checkpoint (which carries every inherited config).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.audio import FrontEndConfig
from omni.audio_encoder import AudioCTC, AudioEncoder, AudioEncoderConfig, CharVocab
from omni.chat_template import ChatTemplate, length_groups, splice
from omni.checkpoint import load_stage_checkpoint, load_weights
from omni.config import UserError, from_dict
from omni.ctc_prefix import NEG, ctc_full_score, ctc_prefix_extend_strings, ctc_prefix_start
from omni.paths import repo_path
from omni.projector import Projector, ProjectorConfig
from omni.thinker import Thinker, ThinkerConfig, generate
from omni.tokenizer import Tokenizer
from omni.vision import VisionConfig, VisionEncoder


def by_clip(rows: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(sum n, V) rows of several clips in order, n (clips,) rows each -> (max n, clips, V), the layout
    F.ctc_loss reads, by one gather: past its end a clip repeats its last row, which CTC never reads
    (pad_sequence would do the same, but its backward copies the whole tensor once per clip)."""
    start = n.cumsum(0) - n
    t = torch.arange(int(n.max()), device=n.device)[:, None]
    return rows[start + torch.minimum(t, n - 1)]


class OmniModel(nn.Module):
    def __init__(self, thinker: ThinkerConfig, vision: VisionConfig, audio: AudioEncoderConfig,
                 projector: ProjectorConfig, image_id: int, audio_id: int):
        super().__init__()
        self.thinker = Thinker(thinker)
        self.vision = VisionEncoder(vision)
        self.audio = AudioEncoder(audio)
        self.image_tokens = vision.grid ** 2 // 4 if vision.merge_dim else vision.grid ** 2  # per picture
        n_pos = self.image_tokens if projector.image_pos else 0
        self.audio_context = projector.audio_context  # neighbours on each side stacked with each audio frame
        self.audio_width = audio.d_model * (2 * self.audio_context + 1)  # the audio projector's input width
        self.projectors = nn.ModuleDict({
            "image": Projector(vision.width, thinker.d_model, projector, n_pos, linear="image" in projector.linear),
            "audio": Projector(self.audio_width, thinker.d_model, projector, linear="audio" in projector.linear)})
        self.image_id, self.audio_id = image_id, audio_id  # placeholder token ids (ChatTemplate)
        self.audio_ctc = projector.audio_ctc  # weight of the audio frames' CTC loss (spell_loss), 0 = none
        self.audio_tokens = projector.audio_tokens  # frames enter as token embeddings weighted by the spelling
        self.audio_chars = projector.audio_chars  # weight of the frames' CTC loss in characters (char_loss), 0 = none
        self.char_up = audio.ctc_upsample  # character slots per frame, as stage B's head has
        if self.audio_chars > 0:  # a frame and its neighbours -> char_up slots of stage B's alphabet and the blank (0)
            self.char_head = nn.Linear(self.audio_width, len(CharVocab()) * self.char_up)
        self.token_chars: tuple[list, list] | None = None  # each token's characters (token_chars), set by `build`

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 pictures -> (B, N, d_vision) merged patch tokens of the frozen ViT."""
        return self.vision(images.float() / 255)[0]

    @torch.no_grad()
    def encode_audio(self, mels: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, n_mels) padded log-mels and their lengths -> one (T_i / 4, audio_width) tensor per clip:
        each frame of the frozen encoder, with audio_context frames on each side stacked beside it."""
        h, out_lengths = self.audio(mels, lengths)  # (B, T', d_audio), (B,)
        return [self.stack(h[b, :n]) for b, n in enumerate(out_lengths.tolist())]

    def stack(self, f: torch.Tensor) -> torch.Tensor:
        """(T, d_audio) one clip's frames -> (T, audio_width): frame t beside frames t - c .. t + c
        (c = audio_context; past the clip's ends its first or last frame repeats). The encoder's frames
        carry a few characters each, a token of the Thinker spans several: with its neighbours in view
        the projector can spell a whole word from one frame. Stacking neighbours is the low-frame-rate
        trick of speech recognisers and of speech LLMs' adapters (SALMONN's windows, Qwen-Audio's pooling)."""
        c = self.audio_context
        if not c:
            return f
        t = torch.arange(len(f), device=f.device)
        return f[(t[:, None] + torch.arange(-c, c + 1, device=f.device)).clamp(0, len(f) - 1)].flatten(1)

    def centre(self, f: torch.Tensor) -> torch.Tensor:
        """(T, audio_width) stacked frames -> (T, d_audio): each frame alone, as the encoder gave it."""
        return f.view(len(f), 2 * self.audio_context + 1, -1)[:, self.audio_context]

    def embed(self, x: torch.Tensor, image_feats: torch.Tensor, audio_feats: torch.Tensor) -> torch.Tensor:
        """x (B, T) ids with placeholders; image_feats (N_img, d_vision) and audio_feats (N_aud, audio_width):
        every frame of the batch in order. Returns the spliced embeddings (B, T, d_model)."""
        e = self.thinker.embed_tokens(x)
        n, d = self.image_tokens, image_feats.shape[-1]  # every picture has n frames, in cell order
        image = self.projectors["image"](image_feats.view(-1, n, d)).flatten(0, 1)  # (N_img, d_model)
        e = splice(e, x, self.image_id, image, "image")
        return splice(e, x, self.audio_id, self.audio_frames(audio_feats), "audio")

    def spelling(self, audio_feats) -> torch.Tensor:
        """(N_aud, audio_width) -> (N_aud, vocab) log-probabilities of the Thinker token each projected frame
        says: its cosine similarity to each row of the token embedding table (detached: the table
        learns nothing from the spelling) times 10; the audio placeholder's row is the CTC blank."""
        frames = F.normalize(self.projectors["audio"](audio_feats).float(), dim=-1)  # (N_aud, d_model)
        table = F.normalize(self.thinker.tok_emb.weight.detach().float(), dim=-1)  # (vocab, d_model)
        return (10 * frames @ table.T).log_softmax(-1)

    def audio_frames(self, audio_feats) -> torch.Tensor:
        """(N_aud, audio_width) -> (N_aud, d_model): what the Thinker reads for each audio frame. By default
        the projector's output. With audio_tokens, LegoSLM's way (Ma et al. 2025, arXiv:2505.11352):
        the Thinker's own token embeddings weighted by the frame's spelling, so a frame that says
        " square" arrives as the embedding of " square", the way a typed word does, and a frame
        between words as the placeholder's embedding."""
        if not self.audio_tokens:
            return self.projectors["audio"](audio_feats)
        table = self.thinker.tok_emb.weight  # (vocab, d_model)
        return (self.spelling(audio_feats).exp() @ table.float()).to(table.dtype)

    def spell_loss(self, audio_feats, words, n_words, n_frames) -> torch.Tensor:
        """CTC loss of the projected audio frames spelling what each clip says in the Thinker's own
        tokens. audio_feats (N_aud, audio_width): the clips' frames in order, n_frames (n,) per clip;
        words (S,): the token ids of every clip's text, n_words (n,) per clip. A frame's logits are
        its cosine similarity to each row of the Thinker's token embedding table (detached: only the
        projector learns from this loss) times 10; the blank is the audio placeholder's row. So a
        frame that says " square" is pulled towards the embedding the Thinker reads for " square",
        the way typed words arrive. Speech-LLaMA (Wu et al. 2023, arXiv:2307.03917) and LegoSLM (Ma
        et al. 2025, arXiv:2505.11352) join a speech encoder to a language model through CTC over
        the language model's tokens in the same spirit."""
        logp = by_clip(self.spelling(audio_feats), n_frames)
        return F.ctc_loss(logp, words, n_frames, n_words, blank=self.audio_id, zero_infinity=True)

    def char_spelling(self, audio_feats) -> torch.Tensor:
        """(N_aud, audio_width) -> (N_aud * char_up, 1 + letters) log-probabilities of stage B's alphabet
        (CharVocab, blank 0) in each character slot: one linear layer (char_head) on the frames the audio
        projector reads, each with its neighbours, not on what it makes of them. The frozen encoder's
        frames still hold stage B's spelling, one linear map away; the projected frames, pulled toward
        the Thinker's token embeddings, keep less of it (a head on them spelled the validation clips
        at 14.9% CER where this one reaches stage B's 8.9% in 300 steps: chapter 8, nineteenth round)."""
        return self.char_head(audio_feats).float().view(len(audio_feats) * self.char_up, -1).log_softmax(-1)

    def char_loss(self, audio_feats, chars, n_chars, n_frames) -> torch.Tensor:
        """CTC loss of the frames spelling what each clip says in characters (stage B's task, learned
        again by stage E's own head), so that transcription can weigh a spelling that knows the words
        the Thinker's tokens rarely held (transcribe, spelling "chars"). Only char_head learns from it.
        chars (S,): the character ids of every clip's text, n_chars (n,) per clip; n_frames (n,) per clip."""
        slots = n_frames * self.char_up
        return F.ctc_loss(by_clip(self.char_spelling(audio_feats), slots), chars, slots, n_chars, blank=0,
                          zero_infinity=True)

    def said_loss(self, audio_feats, said, weight: float) -> torch.Tensor:
        """weight x spell_loss, plus audio_chars x char_loss when that is on; said = (words, n_words,
        n_frames, chars, n_chars) of a batch's clips (OmniData.batch)."""
        loss = weight * self.spell_loss(audio_feats, *said[:3]) if weight > 0 else 0.0
        if self.audio_chars > 0:
            loss = loss + self.audio_chars * self.char_loss(audio_feats, said[3], said[4], said[2])
        return loss

    def forward(self, x, y, loss_mask, image_feats, audio_feats, said=None):
        """Teacher-forced logits of the N tokens loss_mask counts (N, vocab; by groups of rows, see below) and
        their mean loss; with audio_ctc > 0 and said = (words, n_words, n_frames, chars, n_chars) of the batch's
        clips (OmniData.batch), the loss adds audio_ctc times their spell_loss (and audio_chars times their
        char_loss). A batch with no tokens (OmniData's spell rows) is those losses alone: the Thinker does not run.
        Attention is causal, so a row's positions after its last counted one cannot change the loss: rows of
        similar length run together, each group trimmed to its longest (length_groups; a quarter of stage
        E's positions were padding)."""
        if not x.numel():
            return None, self.said_loss(audio_feats, said, 1.0)
        e = self.embed(x, image_feats, audio_feats)
        counted = (y != -100) & (loss_mask != 0)  # (B, T)
        ends = (counted * torch.arange(1, x.size(1) + 1, device=x.device)).amax(1).clamp(min=1)  # last counted + 1
        n = counted.sum().clamp(min=1)
        logits, loss = [], 0.0
        for rows in length_groups(ends.cpu()):
            rows, T = rows.to(x.device), int(ends[rows[0]])
            part, part_loss = self.thinker(embeds=e[rows, :T], targets=y[rows, :T], loss_mask=loss_mask[rows, :T])
            logits.append(part)
            loss = loss + part_loss * counted[rows].sum() / n
        logits = torch.cat(logits) if all(p is not None for p in logits) else None
        if (self.audio_ctc > 0 or self.audio_chars > 0) and said is not None and len(said[1]):
            loss = loss + self.said_loss(audio_feats, said, self.audio_ctc)
        return logits, loss


@torch.no_grad()
def reply(model: OmniModel, prompts: list[tuple[list[int], torch.Tensor, torch.Tensor]], max_new: int,
          eos_id: int, batch: int = 64) -> list[list[int]]:
    """Greedy replies to many prompts (ids ending in the generation prompt, image and audio frames or None).
    The Thinker has no padding mask, so prompts of equal length are batched together."""
    device = next(model.parameters()).device
    dims = (model.vision.cfg.width, model.audio_width)

    def frames(feats, which):  # the frames of a group in order, (N, d); None = no such input
        feats = [f.reshape(-1, dims[which]) for f in feats if f is not None]
        return (torch.cat(feats) if feats else torch.zeros(0, dims[which])).to(device)

    out: list[list[int]] = [[] for _ in prompts]
    by_len: dict[int, list[int]] = {}
    for k, (ids, _, _) in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(k)
    for T, ks in by_len.items():
        for j in range(0, len(ks), batch):
            group = ks[j: j + batch]
            x = torch.tensor([prompts[k][0] for k in group], device=device)
            img, aud = frames([prompts[k][1] for k in group], 0), frames([prompts[k][2] for k in group], 1)
            n = min(max_new, model.thinker.cfg.max_seq_len - T)
            ids = generate(model.thinker, x, n, temperature=0, eos_id=eos_id, embeds=model.embed(x, img, aud))
            for k, row in zip(group, ids[:, T:].tolist()):
                out[k] = row[:row.index(eos_id)] if eos_id in row else row
    return out


@dataclass
class TranscribeConfig:
    ctc_weight: float = 0.0  # weight of the audio frames' spelling beside the Thinker (0 = the Thinker alone, greedy)
    beam: int = 4  # hypotheses kept at each step when ctc_weight > 0
    length_bonus: float = 0.0  # added to a hypothesis's score per token: offsets the search's bias to short texts
    spelling: str = "tokens"  # whose spelling is weighed: "tokens" (projector.audio_ctc, over the Thinker's tokens)
    # or "chars" (projector.audio_chars, over stage B's alphabet)
    candidates: int = 8  # the Thinker's likeliest next tokens that each hypothesis is extended by

    def __post_init__(self):
        if not 0 <= self.ctc_weight <= 1 or self.beam < 1 or self.candidates < 1:
            raise ValueError(f"TranscribeConfig: ctc_weight must be in [0, 1], beam and candidates >= 1, got "
                             f"{self.ctc_weight}, {self.beam}, {self.candidates}")
        if self.spelling not in ("tokens", "chars"):
            raise ValueError(f"TranscribeConfig.spelling must be 'tokens' or 'chars', got {self.spelling!r}")


def token_chars(tok: Tokenizer) -> tuple[list, list]:
    """Each Thinker token's characters in stage B's alphabet (CharVocab ids, lower case, the word
    boundary a space), None for a token holding anything else (punctuation, digits, bytes, control
    tokens: no transcript has them); and the same for a transcript's first token, its leading space dropped."""
    vocab, sp = CharVocab(), tok.sp

    def chars(v: int, first: bool):
        if sp.is_control(v) or sp.is_unknown(v) or sp.is_byte(v):
            return None
        s = sp.id_to_piece(v).replace("\u2581", " ").lower()
        s = s.lstrip(" ") if first else s
        return [vocab.index[c] for c in s] if s and all(c in vocab.index for c in s) else None

    return [chars(v, True) for v in range(tok.vocab_size)], [chars(v, False) for v in range(tok.vocab_size)]


def transcripts(model: OmniModel, prompts: list[tuple[list[int], None, torch.Tensor]], eos_id: int, max_new: int,
                cfg: TranscribeConfig) -> list[list[int]]:
    """The transcript of each (prompt ids, None, audio frames): the Thinker's greedy reply (ctc_weight 0),
    or hybrid CTC/attention decoding, one clip at a time (`transcribe`)."""
    if cfg.ctc_weight == 0:
        return reply(model, prompts, max_new, eos_id)
    return [transcribe(model, ids, audio, eos_id, max_new, cfg.beam, cfg.ctc_weight, cfg.length_bonus, cfg.candidates,
                       cfg.spelling) for ids, _, audio in prompts]


@torch.no_grad()
def transcribe(model: OmniModel, prompt: list[int], feats: torch.Tensor, eos_id: int, max_new: int, beam: int = 4,
               ctc_weight: float = 0.7, length_bonus: float = 0.0, candidates: int = 8,
               spelling: str = "tokens") -> list[int]:
    """One clip's transcript by hybrid CTC/attention decoding (Watanabe et al. 2017): a beam search
    over the Thinker's tokens in which a hypothesis h scores
        (1 - ctc_weight) log p_Thinker(h | prompt) + ctc_weight log p_CTC(the frames spell h...)
        + length_bonus x (tokens in h)
    where the second term is the prefix score (omni.ctc_prefix) of a CTC head that stage E trains
    beside the Thinker on the projected frames: with spelling "tokens" the audio projector's own
    spelling over the Thinker's tokens (OmniModel.spelling), with "chars" a head over stage B's
    alphabet (OmniModel.char_spelling), each token then spelled by its characters (token_chars).
    The Thinker knows the language, the spelling knows the sound: a fluent sentence the frames do
    not say loses, and so does a spelling no sentence would have. Both log-probabilities fall with
    every token, so a search on them alone prefers to stop early and drop words; the length bonus
    (ESPnet's insertion penalty, with the other sign) pays each token back. Each step keeps the `beam` best
    hypotheses, each extended by its `candidates` likeliest next tokens (the Thinker proposes, the
    spelling weighs); a hypothesis ends with eos_id, scored with the probability that the frames spell
    exactly it, and the search stops once the best ended one beats every one still going (exact
    without a bonus, since both log-probabilities only fall as a hypothesis grows; with one, a rule of thumb).
    prompt: ids ending in the generation prompt (audio placeholders included), feats (T, audio_width)."""
    device = next(model.parameters()).device
    thinker, w = model.thinker, ctc_weight
    n_new = min(max_new, thinker.cfg.max_seq_len - len(prompt))
    x = torch.tensor([prompt], device=device)
    cache = thinker.make_cache(1)
    embeds = model.embed(x, torch.zeros(0, model.vision.cfg.width, device=device), feats.to(device))
    logits = thinker(embeds=embeds, kv_cache=cache)[0][:, -1]  # (live hypotheses, vocab)
    if spelling == "chars":  # (T * char_up, letters); blank 0; a token is its characters
        logp_ctc, blank, (first, later) = model.char_spelling(feats.to(device)).double().cpu(), 0, model.token_chars
    else:  # (T, vocab); the blank is the audio placeholder; a token is itself
        logp_ctc, blank = model.spelling(feats.to(device)).double().cpu(), model.audio_id
        first = later = [[v] for v in range(logits.size(-1))]
    r_n, r_b = ctc_prefix_start(logp_ctc, blank)  # (T + 1, live): each hypothesis's CTC state
    hyps, att = [[]], torch.zeros(1, dtype=torch.float64)  # tokens and Thinker log-probability of each
    last = torch.tensor([-1])  # each hypothesis's last CTC label (-1: none yet)
    ended: list[tuple[float, list[int]]] = []
    for step in range(n_new):
        lp = logits.double().cpu().log_softmax(-1)
        lp[:, model.audio_id] = NEG  # the placeholder is the spelling's blank, never written
        top = lp.topk(min(candidates, lp.size(1)), dim=-1).indices  # (live, candidates)
        done = top == eos_id
        for i in done.any(1).nonzero()[:, 0].tolist():  # h + eos: the frames must spell h and nothing more
            final = ctc_full_score(r_n[:, i:i + 1], r_b[:, i:i + 1]).item()
            ended.append(((1 - w) * (att[i] + lp[i, eos_id]).item() + w * final + length_bonus * len(hyps[i]),
                          hyps[i]))
        spells = first if step == 0 else later
        spellable = torch.tensor([[spells[v] is not None for v in row] for row in top.tolist()], dtype=torch.bool)
        parent, label = (~done & (top != model.audio_id) & spellable).nonzero(as_tuple=True)
        label = top[parent, label]
        if not len(label):
            break
        psi, r_n, r_b, last = ctc_prefix_extend_strings(logp_ctc, blank, r_n, r_b, last,
                                                        [spells[v] for v in label.tolist()], parent)
        att_new = att[parent] + lp[parent, label]
        score = (1 - w) * att_new + w * psi + length_bonus * (len(hyps[0]) + 1)  # every hypothesis is as long
        keep = score.topk(min(beam, len(score))).indices
        if ended and max(s for s, _ in ended) >= score[keep[0]].item():
            break
        parent, label = parent[keep], label[keep]
        hyps = [hyps[p] + [c] for p, c in zip(parent.tolist(), label.tolist())]
        att, r_n, r_b, last = att_new[keep], r_n[:, keep], r_b[:, keep], last[keep]
        rows = parent.to(device)
        cache.k, cache.v = [k[rows] for k in cache.k], [v[rows] for v in cache.v]  # each hypothesis's past
        logits = thinker(label[:, None].to(device), kv_cache=cache, start_pos=len(prompt) + step)[0][:, -1]
    else:  # out of room: the hypotheses still going end here
        ended += [((1 - w) * att[i].item() + w * ctc_full_score(r_n[:, i:i + 1], r_b[:, i:i + 1]).item()
                   + length_bonus * len(h), h) for i, h in enumerate(hyps)]
    return max(ended, key=lambda e: e[0])[1] if ended else hyps[0]


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_stages(thinker_path: str, tokenizer_path: str, audio_path: str, vision_path: str,
                projector: ProjectorConfig) -> tuple[OmniModel, ChatTemplate, dict, AudioCTC]:
    """The omni model from the checkpoints of stages A, B and C (projectors fresh). Also returns
    the inherited configs (to save with stage E's checkpoints) and the whole stage B model with its
    CTC head, the reference for transcription. A missing or wrong checkpoint is one clear line."""
    a = load_stage_checkpoint(thinker_path, "A")
    b = load_stage_checkpoint(audio_path, "B")
    c = load_stage_checkpoint(vision_path, "C")
    inherited = {"thinker": a["config"]["model"], "audio": b["config"]["model"],
                 "front_end": b["config"].get("audio", {}), "vision": c["config"]["vision"],
                 "text_data": a["config"].get("data", {})}
    tok = Tokenizer(repo_path(tokenizer_path))
    if tok.vocab_size != inherited["thinker"]["vocab_size"]:
        raise UserError(f"{tokenizer_path}: {tok.vocab_size} tokens, but the Thinker in {thinker_path} has "
                        f"vocab_size {inherited['thinker']['vocab_size']}; use the tokenizer of that stage A run")
    model, template = build(inherited, projector, tok)
    load_weights(model.thinker, a["model"], f"{thinker_path} (stage A)")
    for proj in model.projectors.values():  # projected frames start at the size of a token embedding
        proj.match(model.thinker.tok_emb.weight)
    load_weights(model.audio, _sub(b["model"], "encoder."), f"{audio_path} (stage B)")
    load_weights(model.vision, _sub(c["model"], "vision."), f"{vision_path} (stage C)")
    ctc = AudioCTC(model.audio.cfg)
    load_weights(ctc, b["model"], f"{audio_path} (stage B)")
    return model, template, inherited, ctc.eval()


def build(inherited: dict, projector: ProjectorConfig, tok: Tokenizer) -> tuple[OmniModel, ChatTemplate]:
    """An omni model of the given component configs (random weights) and its chat template."""
    template = ChatTemplate(tok)
    model = OmniModel(from_dict(ThinkerConfig, inherited["thinker"], "stage A config"),
                      from_dict(VisionConfig, inherited["vision"], "stage C config"),
                      from_dict(AudioEncoderConfig, inherited["audio"], "stage B config"),
                      projector, template.image_id, template.audio_id)
    if model.audio_chars > 0:
        model.token_chars = token_chars(tok)
    return model, template


def load_omni(path: str) -> tuple[OmniModel, ChatTemplate, FrontEndConfig, dict]:
    """A trained omni model from a stage E checkpoint, in eval mode, and its chat template,
    audio front end and config. The tokenizer is the one the run was trained with."""
    state = load_stage_checkpoint(path, "E")
    cfg = state["config"]
    inherited = cfg["inherited"]
    tok = Tokenizer(repo_path(cfg["init"]["tokenizer"]))
    projector = {"out_norm": False, "image_pos": False, **cfg["projector"]}  # runs from before these had neither
    model, template = build(inherited, from_dict(ProjectorConfig, projector, str(path)), tok)
    load_weights(model, state["model"], str(path))
    return model.eval(), template, from_dict(FrontEndConfig, inherited["front_end"], str(path)), cfg
