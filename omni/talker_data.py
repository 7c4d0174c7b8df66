"""The Talker's training data: text tokens, word-aligned frame tracks and codec codes per clip.

A voice-set row (omni/speech_data.py) holds the transcript and eSpeak's word start times:

    {"audio": "wav/train_000000.wav", "text": "a small red circle", "words": [0.0, 0.065, 0.398, 0.653], ...}

From it we make, once at start-up:
- tokens: the stage A tokenizer on each word with its leading space (" a", " small", ...), so
  every token belongs to one word and `tok_word` maps tokens to words exactly;
- codes (T', K): the frozen codec's codes of the clip's log-mel (25 Hz: 4 mel frames a code frame);
- frame_word (T',): which word each code frame belongs to, from the word start times rounded
  to 40 ms frames (every word gets at least one frame, so the Talker never skips one);
- phones (T',): with a phoneme vocabulary and rows that hold eSpeak's "phonemes" events, the class
  of the phoneme sounding at the middle of each code frame (stress marks dropped; -1 = unknown),
  the targets of the Talker's training-only phoneme head.
The codes are cached beside the manifest (.cache/), keyed by the manifest, the front end and the
codec checkpoint's bytes, like omni.audio's feature cache. Batches are drawn from length buckets
(similar lengths share a batch, little padding), and `get_batch(i)` is a pure function of i.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from omni.audio import FrontEndConfig, SpeechSet, read_manifest
from omni.checkpoint import atomic_save
from omni.codec import HOP, pad_mel
from omni.config import UserError
from omni.paths import repo_path

FRAME_RATE = 100 / HOP  # codec frames per second (25)
PAD = "last frame"  # how pad_mel fills a clip to whole code frames: part of the codes cache's key


def word_tokens(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of `text` word by word (each word with its leading space) and each token's word index."""
    ids, owner = [], []
    for w, word in enumerate(text.split()):
        piece = tokenizer.encode(" " + word)
        ids += piece
        owner += [w] * len(piece)
    return ids, owner


def frame_track(starts: list[float], n_frames: int) -> torch.Tensor | None:
    """Word start times (s) -> (n_frames,) word index of every code frame; None when the clip has
    fewer frames than words. Word w starts at frame round(starts[w] * 25), at least one frame
    after the previous word's start; frames before the second word belong to the first."""
    first, prev = [], -1
    for s in starts:
        prev = max(prev + 1, round(s * FRAME_RATE)) if first else 0
        first.append(prev)
    if not first or first[-1] >= n_frames:
        return None
    track = torch.zeros(n_frames, dtype=torch.long)
    for f in first[1:]:
        track[f:] += 1
    return track


def positions_and_ends(track: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) word indices -> (T,) frames since the word began, (T,) 1.0 where the word ends after
    this frame (the last frame of every word, including the clip's last frame)."""
    T = len(track)
    change = torch.ones(T, dtype=torch.bool)
    change[1:] = track[1:] != track[:-1]  # a word starts here
    start_idx = torch.where(change, torch.arange(T), torch.zeros(T, dtype=torch.long)).cummax(0).values
    ends = torch.ones(T)
    ends[:-1] = (track[1:] != track[:-1]).float()
    return torch.arange(T) - start_idx, ends


def phoneme_class(symbol: str) -> str:
    """eSpeak's mnemonic without its stress marks: "'O:" and ",O:" are both "O:"."""
    return symbol.replace("'", "").replace(",", "") or "_"


def phoneme_vocab(manifest: str) -> list[str]:
    """The phoneme classes heard in a manifest's "phonemes" events, sorted (empty when it has none)."""
    rows = read_manifest(repo_path(manifest))
    return sorted({phoneme_class(sym) for r in rows for _, sym in r.get("phonemes") or []})


def phone_track(events: list, n_frames: int, vocab: dict[str, int]) -> torch.Tensor:
    """[[start s, mnemonic], ...] -> (n_frames,) class of the phoneme sounding at each frame's middle
    (-1 before the first event or for a class not in vocab)."""
    track = torch.full((n_frames,), -1, dtype=torch.long)
    for start, sym in events:
        track[max(0, round(start * FRAME_RATE)):] = vocab.get(phoneme_class(sym), -1)
    return track


@dataclass
class TalkerSet:
    """The usable clips of one manifest, ready for batching."""

    tokens: list[torch.Tensor]  # per clip: (N_i,) Thinker token ids
    tok_word: list[torch.Tensor]  # per clip: (N_i,) word index of each token
    codes: list[torch.Tensor]  # per clip: (T_i, K) codec codes (25 Hz)
    tracks: list[torch.Tensor]  # per clip: (T_i,) word index of each code frame
    texts: list[str]
    sources: list[str]  # "world" / "austen" ("" when the manifest does not say)
    mels: list[torch.Tensor]  # per clip: (4 T_i, n_mels) original log-mel (with keep_mels, else empty)
    phones: list[torch.Tensor] = field(default_factory=list)  # per clip: (T_i,) phoneme class (with a vocab)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> list[int]:
        return [len(c) for c in self.codes]


def _file_hash(path) -> str:
    return hashlib.sha1(repo_path(path).read_bytes()).hexdigest()[:12]


def load_talker_set(manifest: str, speech: SpeechSet, audio: FrontEndConfig, tokenizer, codec, codec_path: str,
                    keep_mels: bool = False, phonemes: list[str] | None = None) -> TalkerSet:
    """Tokens, frame tracks and codes of every usable clip of `speech` (the manifest's features, from
    omni.audio.load_speech_set); skipped clips are counted and reported. keep_mels: also keep the
    original log-mel of each clip (held-out sets: the judge's CER on the originals). phonemes: the
    phoneme classes of the Talker's phoneme head; every clip then needs eSpeak's "phonemes" events."""
    path = repo_path(manifest)
    rows = read_manifest(path)
    key = hashlib.sha1(json.dumps(asdict(audio), sort_keys=True).encode() + path.read_bytes()
                       + _file_hash(codec_path).encode() + PAD.encode()).hexdigest()[:12]
    cache = path.parent / ".cache" / f"{path.stem}-codes-{key}.pt"
    mels = [pad_mel(speech.features(i)) for i in range(len(speech))]  # (4 T_i, n_mels)
    if cache.is_file():
        codes = torch.load(cache, weights_only=True)["codes"]
    else:
        with torch.no_grad():
            codes = [codec.encode(m[None])[0].to(torch.int16) for m in mels]  # one clip at a time: no padding
        cache.parent.mkdir(exist_ok=True)
        atomic_save({"codes": codes}, cache)  # torchrun ranks may all write the same codes
    # load_speech_set keeps the readable rows in manifest order: match them back by text to find "words"
    out = TalkerSet([], [], [], [], [], [], [])
    r, no_words, too_short = 0, 0, 0
    vocab = {sym: i for i, sym in enumerate(phonemes or [])}
    for i, text in enumerate(speech.texts):
        while rows[r]["text"] != text:
            r += 1
        row, r = rows[r], r + 1
        starts = row.get("words")
        if not isinstance(starts, list) or len(starts) != len(text.split()):
            no_words += 1
            continue
        track = frame_track(starts, len(codes[i]))
        if track is None:
            too_short += 1
            continue
        ids, owner = word_tokens(tokenizer, text)
        out.tokens.append(torch.tensor(ids))
        out.tok_word.append(torch.tensor(owner))
        out.codes.append(codes[i].long())
        out.tracks.append(track)
        out.texts.append(text)
        out.sources.append(speech.sources[i])
        if keep_mels:
            out.mels.append(mels[i])
        if vocab:
            if not row.get("phonemes"):
                raise UserError(f"{manifest}: a clip without eSpeak's phoneme events ('phonemes'), which "
                                "talker.phoneme_weight > 0 needs; rebuild the voice set with omni.speech_data")
            out.phones.append(phone_track(row["phonemes"], len(track), vocab))
    print(f"{manifest}: {len(out)} clips for the Talker; skipped {no_words} without word timings, "
          f"{too_short} with fewer frames than words")
    if not out.texts:
        raise UserError(f"{manifest}: no clip has word timings ('words'); build a voice set with "
                        "`python -m omni.speech_data --out data/voice_tiny --voice en-us+m1`")
    return out


def collate(s: TalkerSet, ids: list[int]) -> dict:
    """Clips `ids` as one right-padded batch. Padding: token 0 / word -1, codes 0, mask False, duration 0.
    durations (B, W): frames of each word (eSpeak's timings), the duration model's targets."""
    B = len(ids)
    N = max(len(s.tokens[i]) for i in ids)
    T = max(len(s.codes[i]) for i in ids)
    K = s.codes[ids[0]].size(1)
    W = max(int(s.tok_word[i].max()) + 1 for i in ids)
    b = {"tokens": torch.zeros(B, N, dtype=torch.long), "tok_word": torch.full((B, N), -1),
         "n_words": torch.zeros(B, dtype=torch.long), "codes": torch.zeros(B, T, K, dtype=torch.long),
         "frame_word": torch.zeros(B, T, dtype=torch.long), "frame_pos": torch.zeros(B, T, dtype=torch.long),
         "durations": torch.zeros(B, W, dtype=torch.long), "mask": torch.zeros(B, T, dtype=torch.bool)}
    if s.phones:
        b["phones"] = torch.full((B, T), -1)  # (B, T) phoneme class of each frame, -1 = none / padding
    for r, i in enumerate(ids):
        n, t = len(s.tokens[i]), len(s.codes[i])
        if s.phones:
            b["phones"][r, :t] = s.phones[i]
        pos, _ = positions_and_ends(s.tracks[i])
        w = int(s.tok_word[i].max()) + 1
        b["tokens"][r, :n], b["tok_word"][r, :n], b["n_words"][r] = s.tokens[i], s.tok_word[i], w
        b["codes"][r, :t], b["frame_word"][r, :t], b["frame_pos"][r, :t] = s.codes[i], s.tracks[i], pos
        b["durations"][r, :w], b["mask"][r, :t] = torch.bincount(s.tracks[i], minlength=w), True
    return b


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: int = 20) -> list[list[int]]:
    """One epoch of batches, a pure function of (seed, epoch): shuffle, sort pools of `bucket`
    batches by length (similar lengths share a batch), then shuffle the batches."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    pool = batch_size * bucket
    batches = []
    for p in range(0, len(order) - batch_size + 1, pool):
        part = sorted(order[p: p + pool], key=lambda k: lengths[k])
        batches += [part[j: j + batch_size] for j in range(0, len(part) - batch_size + 1, batch_size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
