"""Stage E's data: chat turns about pictures, spoken questions, transcription and plain prose.

Six kinds of turn, and one kind of row that is not a turn, mixed by the shares in the config
(data.shares), one kind per micro-batch (so rows of similar length share a batch and little is padding):

    image_qa   what colour is the star? [picture]        -> purple
    caption    describe the picture. [picture]           -> a big purple star at the top left and ...
    spoken_qa  [the question, spoken] [picture]          -> purple

(with data.question_first, the tiny config's order; by default the picture comes first, as in LLaVA)
    asr        [speech] what did they say?               -> she was not sorry to be gone
    text       continue the passage: [64 Austen tokens]  -> [the next 64 tokens]
    copy       [a transcript, typed] what did they say?  -> the same words (copying, which transcription needs)
    spell      [speech] alone: no turn, no Thinker; the audio projector's frames spell what is said
               (OmniModel.spell_loss, CTC over the Thinker's tokens), on every clip of the speech set

Pictures, questions and captions come from the shapes world of stage C (data/shapes_tiny): the
test pictures hold colour-shape pairs never seen in training. The spoken questions are made here,
offline, by eSpeak NG with the voices of stage B (omni.speech_data.make_voices): training
questions by training voices, test questions only by voices whose variant never occurs in
training (TEST_VARIANTS), so the test asks about unseen pairs in unseen voices.

    python -m omni.omni_data --out data/omni_tiny          # ~1 minute on 2 cores

With data.qa_turns > 1 a picture's row asks several of its questions in one conversation (the
picture with the first, then user, assistant, user, assistant, ...), as LLaVA's instruction data
does: one pass over the picture teaches several answers.

Transcription turns come from stage B's speech set (data/speech_tiny), text turns from stage A's
corpus. The encoders are frozen in stage E, so `OmniData` runs them once over all pictures and
clips and keeps their features; `batch(i)` then only gathers tensors (a pure function of i).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omni.audio import FrontEndConfig, augment, load_speech_set, pad_batch
from omni.audio_encoder import CharVocab
from omni.chat_template import AUDIO, ChatTemplate, collate, user_parts
from omni.config import UserError
from omni.paths import repo_path
from omni.shapes import POSITIONS
from omni.speech_data import TEST_ACCENTS, TEST_VARIANTS, _speak_shard, make_voices, normalize
from omni.text_data import encode_stream, eval_windows, split_corpus
from omni.vision import load_image_manifest

KINDS = ("image_qa", "caption", "spoken_qa", "asr", "text", "copy", "spell")
QUESTION_KINDS = {"what colour": "colour", "what shape": "shape", "what size": "size", "where is": "position",
                  "how many": "count", "is there": "yesno"}
CAPTION_PROMPT, ASR_PROMPT, TEXT_PROMPT = "describe the picture.", "what did they say?", "continue the passage:\n"


def check_shares(shares: dict[str, float], where: str):
    """A data mix: kinds of KINDS, shares >= 0, at least one > 0 (else a ValueError naming `where`)."""
    if set(shares) - set(KINDS) or not any(v > 0 for v in shares.values()) or min(shares.values(), default=0) < 0:
        raise ValueError(f"{where}: kinds are {', '.join(KINDS)} with shares >= 0, at least one > 0; got {shares}")


def spread(total: int, n: int) -> list[int]:
    """n indices spread evenly over range(total), every (total / n)-th; all of them when n = total."""
    return [j * total // n for j in range(n)]


@dataclass
class OmniDataConfig:
    shapes: str = "data/shapes_tiny"  # the shapes world of stage C: train/val/test.jsonl with questions
    spoken: str = "data/omni_tiny"  # spoken questions: python -m omni.omni_data --out data/omni_tiny
    speech: str = "data/speech_tiny"  # stage B's speech set: transcription turns and test clips
    corpus: str = "data/austen"  # stage A's corpus: text turns and the held-out chapters (bits per byte)
    shares: dict[str, float] = field(default_factory=lambda: {
        "image_qa": 0.45, "caption": 0.1, "spoken_qa": 0.25, "asr": 0.1, "text": 0.1})  # micro-batches per kind
    asr_clips: int = 3000  # training clips of the speech set used for transcription and copy turns, spread evenly
    # over it (0 = all; spell rows always draw from all)
    asr_weights: dict[str, float] = field(default_factory=dict)  # a transcription turn draws its clip in proportion
    # to these weights by the clip's source in the speech set (world, austen, answer; missing = 1; {} = all alike)
    text_tokens: int = 64  # tokens in a text turn: the first half is the prompt, the second the reply
    text_plain: bool = False  # text rows as plain prose, every token counted (stage A's own task), not a chat turn
    eval_questions: int = 600  # test questions asked at each evaluation, typed and spoken (0 = all)
    eval_clips: int = 100  # unseen-voice test clips transcribed at each evaluation, spread over the split (0 = all)
    eval_tokens: int = 0  # held-out Austen tokens scored for bits per byte (0 = as many as stage A's run)
    samples: int = 3  # test answers printed at each evaluation
    question_first: bool = False  # the question (typed or spoken) before the picture, not after it
    spoken_copies: int = 0  # changed copies of each training spoken question (speed and vocal-tract warp, drawn
    # once at start-up, as stage B's augmentation draws them), for voices beyond the recorded ones (0 = none)
    spoken_speed: float = 0.1  # a copy's time stretch: a factor in [1 - speed, 1 + speed]
    spoken_warp: float = 0.1  # a copy's mel-axis stretch (VTLP): a factor in [1 - warp, 1 + warp]
    qa_turns: int = 1  # questions about one picture in one training conversation (user, assistant, user, ...)
    batch_scale: dict[str, int] = field(default_factory=dict)  # rows of a kind's micro-batch, in train.batch_size
    # units (missing = 1): image questions are short rows, so more of them cost what one batch of long turns does


    def __post_init__(self):
        check_shares(self.shares, "OmniDataConfig.shares")
        if self.qa_turns < 1:
            raise ValueError(f"OmniDataConfig.qa_turns: must be >= 1, got {self.qa_turns}")
        if self.spoken_copies < 0 or not 0 <= self.spoken_speed < 1 or not 0 <= self.spoken_warp < 1:
            raise ValueError("OmniDataConfig.spoken_copies must be >= 0, spoken_speed and spoken_warp in [0, 1)")
        if any(v < 0 for v in self.asr_weights.values()) or (self.asr_weights and not any(
                v > 0 for v in self.asr_weights.values())):
            raise ValueError(f"OmniDataConfig.asr_weights: weights >= 0, at least one > 0; got {self.asr_weights}")
        bad = {k: v for k, v in self.batch_scale.items() if k not in KINDS or not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"OmniDataConfig.batch_scale: kinds are {', '.join(KINDS)} with whole multiples >= 1; "
                             f"got {bad}")


def question_kind(q: str) -> str:
    """The kind of a shapes-world question by its first words; "other" for free-form questions (LLaVA)."""
    return next((kind for start, kind in QUESTION_KINDS.items() if q.startswith(start)), "other")


# ----------------------------------------------------------------------------- the build command

def build(out: str, shapes: str = "data/shapes_tiny", train_voices: int = 6, test_voices: int = 3,
          seed: int = 0, workers: int = 2) -> dict[str, Path]:
    """Speak every question of the shapes world: training questions (train and val pictures) with
    `train_voices` training voices each, test questions with `test_voices` unseen voices each."""
    out_dir = repo_path(out)
    try:
        (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    settings = {"shapes": shapes, "train_voices": train_voices, "test_voices": test_voices, "seed": seed}
    paths = {s: out_dir / f"questions_{s}.jsonl" for s in ("train", "test")}
    done = out_dir / "build.json"
    if done.is_file() and json.loads(done.read_text()) == settings and all(p.is_file() for p in paths.values()):
        print(f"{out}: already built with these settings (see {done.name}); delete the folder to rebuild")
        return paths
    rng = random.Random(seed)
    voices = make_voices(rng, TEST_ACCENTS, TEST_VARIANTS, (140, 200), (30, 70))
    clips = []
    for split, manifests, n_voices in (("train", ("train", "val"), train_voices), ("test", ("test",), test_voices)):
        questions = set()
        for m in manifests:
            path = repo_path(shapes) / f"{m}.jsonl"
            if not path.is_file():
                raise UserError(f"{path}: not found; make the shapes world first "
                                f"(python -m omni.shapes --out {shapes})")
            questions |= {qa["q"] for line in path.read_text().splitlines() for qa in json.loads(line)["questions"]}
        for q in sorted(questions):
            for v in rng.sample(voices[split], n_voices):
                clips.append({"split": f"q{split}", "index": len(clips), "spoken": q, "source": "question", "voice": v})
    jobs = [(clips[k::workers], str(out_dir)) for k in range(workers)]
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:  # fresh eSpeak state per shard
        rows = sorted((r for part in pool.map(_speak_shard, jobs, chunksize=1) for r in part), key=lambda r: r["index"])
    for split, path in paths.items():
        part = [{"audio": r["audio"], "text": r["text"], "speaker": r["speaker"], "duration": r["duration"]}
                for r in rows if r["split"] == f"q{split}"]
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{split:>5}: {len(part)} spoken questions, {len({r['text'] for r in part})} distinct, "
              f"{len({r['speaker'] for r in part})} voices -> {path}")
    done.write_text(json.dumps(settings, indent=2) + "\n")
    return paths


# ----------------------------------------------------------------------------- the data in memory

class OmniData:
    """Every turn of stage E as ids plus frozen-encoder features; built once, then cheap to batch."""

    def __init__(self, cfg: OmniDataConfig, model, template: ChatTemplate, front_end: FrontEndConfig,
                 seed: int, batch_size: int, also: dict[str, float] | None = None):
        """`also`: another mix that batch() will be asked for (phase 1's); its kinds are loaded too."""
        self.cfg, self.t, self.seed, self.B = cfg, template, seed, batch_size
        self.vocab = CharVocab()  # stage B's alphabet: what the clips say, spelled for the character head
        drawn = {k for mix in (cfg.shares, also or {}) for k, v in mix.items() if v > 0}
        self.max_len = model.thinker.cfg.max_seq_len
        size = model.vision.cfg.image_size
        root = repo_path(cfg.shapes)
        pics = {s: load_image_manifest(root / f"{s}.jsonl", size) for s in ("train", "test")}
        self.records = {s: r for s, (r, _) in pics.items()}
        self.images = {s: torch.cat([model.encode_images(im[j: j + 512]) for j in range(0, len(im), 512)])
                       for s, (_, im) in pics.items()}  # (N, 9, d_vision)
        self.qa = [(k, qa["q"], qa["a"]) for k, r in enumerate(self.records["train"]) for qa in r["questions"]]
        self.first_qa = [0]  # self.qa[first_qa[k]:first_qa[k + 1]] are picture k's questions
        for r in self.records["train"]:
            self.first_qa.append(self.first_qa[-1] + len(r["questions"]))
        spoken = {s: self._clips(model, Path(cfg.spoken) / f"questions_{s}.jsonl", front_end,
                                 copies=cfg.spoken_copies if s == "train" else 0)
                  for s in ("train", "test")} if "spoken_qa" in drawn else {}
        self.voices = {s: {} for s in spoken}  # normalized question -> its clips' features; {} = no spoken turns
        for s, (texts, feats, _) in spoken.items():
            for text, f in zip(texts, feats):
                self.voices[s].setdefault(text, []).append(f)
        # spell rows draw from every training clip, transcription and copy turns from asr_clips of them
        speech = {s: self._clips(model, Path(cfg.speech) / f"{s}.jsonl", front_end, n)
                  for s, n in (("train", 0 if "spell" in drawn else cfg.asr_clips), ("test", cfg.eval_clips))}
        self.asr = {s: (texts, feats) for s, (texts, feats, _) in speech.items()}
        self.asr_sources = {s: sources for s, (_, _, sources) in speech.items()}  # world, austen, answer or ""
        n_train = len(self.asr["train"][0])
        self.asr_idx = spread(n_train, min(cfg.asr_clips or n_train, n_train))  # the clips of transcription turns
        sources = [speech["train"][2][j] for j in self.asr_idx]
        self.asr_weights = torch.tensor([float(cfg.asr_weights.get(src, 1.0))
                                         for src in sources]) if cfg.asr_weights else None
        if self.asr_weights is not None and not self.asr_weights.sum() > 0:
            raise UserError(f"data.asr_weights: {cfg.asr_weights} gives every transcription clip weight 0 (their "
                            f"sources: {sorted(set(sources))})")
        train_paras, val_paras = split_corpus(repo_path(cfg.corpus), 10)
        self.text_ids = encode_stream(template.tok, train_paras)
        self.val_ids = encode_stream(template.tok, val_paras)
        self.dims = (self.images["train"].shape[-1], model.audio_width)

    def _clips(self, model, manifest: Path, front_end: FrontEndConfig, limit: int = 0, copies: int = 0):
        """Transcripts, frozen audio features (T_i / 4, d_audio) and sources of `limit` clips of a manifest
        (0 = all) that fit the Thinker, then `copies` changed copies of each (stage B's speed and
        warp augmentation on the log-mel, drawn once from the seed; the encoder is frozen, so a copy
        costs one encoding at start-up and nothing per step). The `limit` clips are spread evenly
        over the manifest, not its first ones: a speech set lists its bare answers last, and a
        sample should hold every kind of clip in its share."""
        s = load_speech_set(manifest, front_end)
        n = min(limit or len(s), len(s))
        picks = spread(len(s), n)
        g = torch.Generator().manual_seed(self.seed)
        changed = [augment(s.features(picks[k]), g, self.cfg.spoken_speed, self.cfg.spoken_warp)
                   for _ in range(copies) for k in range(n)]  # clip n * c + k is copy c of clip k
        mel = lambda k: s.features(picks[k]) if k < n else changed[k - n]  # noqa: E731  (T, n_mels)
        total = n * (1 + copies)
        order = sorted(range(total), key=lambda k: len(mel(k)))  # similar lengths: little padding
        feats: list[torch.Tensor] = [torch.empty(0)] * total
        for j in range(0, len(order), 64):
            ids = order[j: j + 64]
            for k, f in zip(ids, model.encode_audio(*pad_batch([mel(k) for k in ids]))):
                feats[k] = f.half()  # half the memory; the projector reads them as float
        room = self.max_len - 48  # the template and a reply need about 48 tokens
        keep = [k for k in range(total) if len(feats[k]) <= room]
        if len(keep) < total:
            print(f"{manifest}: skipped {total - len(keep)} clips too long for the Thinker ({room} audio frames)")
        if copies:
            print(f"{manifest}: {copies} changed copies of each of its {n} clips (speed +-{self.cfg.spoken_speed:g}, "
                  f"mel warp +-{self.cfg.spoken_warp:g})")
        return [s.texts[picks[k % n]] for k in keep], [feats[k] for k in keep], [s.sources[picks[k % n]] for k in keep]

    def ask(self, img: torch.Tensor, question) -> list:
        """The user's parts: the picture and the question, in the configured order. The Thinker's
        attention is causal: picture tokens after the question can already look for what it asks."""
        return user_parts(len(img), [question], self.cfg.question_first)

    # -- turns: (ids, loss mask, image features or None, audio features or None, words said): the last
    # is [(frames, token ids of what is said)] per clip in frame order, for the audio projector's CTC
    def turn(self, kind: str, g: torch.Generator):
        pick = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
        if kind in ("image_qa", "spoken_qa"):
            k, _, _ = self.qa[pick(len(self.qa))]  # a picture, in proportion to its questions
            first, n = self.first_qa[k], self.first_qa[k + 1] - self.first_qa[k]
            chosen = torch.randperm(n, generator=g)[: self.cfg.qa_turns].tolist()
            img, turns, clips, words = self.images["train"][k], [], [], []
            for j, c in enumerate(chosen):  # the picture comes with the first question only
                _, q, a = self.qa[first + c]
                if kind == "spoken_qa":
                    said = self.voices["train"][normalize(q)]
                    clips.append(said[pick(len(said))])
                    words.append((len(clips[-1]), self.t.text_ids(q)))  # the typed question's tokens
                    q = (AUDIO, len(clips[-1]))
                turns += [("user", self.ask(img, q) if j == 0 else [q]), ("assistant", [a])]
            ids, mask = self.t.encode(turns)
            while len(ids) - 1 > self.max_len:  # the inputs are ids[:-1]; several spoken questions may not fit
                turns, clips, words = turns[:-2], clips[:-1], words[:-1]
                ids, mask = self.t.encode(turns)
            return ids, mask, img, torch.cat(clips) if clips else None, words
        if kind == "caption":
            k = pick(len(self.records["train"]))
            img = self.images["train"][k]
            return (*self.t.encode([("user", self.ask(img, CAPTION_PROMPT)),
                                    ("assistant", [self.records["train"][k]["caption"]])]), img, None, [])
        if kind in ("asr", "spell"):
            texts, feats = self.asr["train"]
            if kind == "asr" and self.asr_weights is not None:  # data.asr_weights: by the clip's source
                j = self.asr_idx[int(torch.multinomial(self.asr_weights, 1, generator=g))]
            else:
                j = self.asr_idx[pick(len(self.asr_idx))] if kind == "asr" else pick(len(texts))
            if kind == "spell":  # no turn: only the frames and what they say
                return [], [], None, feats[j], [(len(feats[j]), self.t.text_ids(texts[j]))]
            turns = [("user", [(AUDIO, len(feats[j])), ASR_PROMPT]), ("assistant", [texts[j]])]
            return *self.t.encode(turns), None, feats[j], [(len(feats[j]), self.t.text_ids(texts[j]))]
        if kind == "copy":  # a transcription turn with the clip's words typed: the reply copies them
            text = self.asr["train"][0][self.asr_idx[pick(len(self.asr_idx))]]
            return *self.t.encode([("user", [text, ASR_PROMPT]), ("assistant", [text])]), None, None, []
        n = self.cfg.text_tokens
        start = pick(len(self.text_ids) - n)
        ids = self.text_ids[start: start + n].tolist()
        if self.cfg.text_plain:  # replay of stage A: no template, the loss on every next token
            return ids, [1] * n, None, None, []
        return *self.t.encode([("user", [TEXT_PROMPT, ids[: n // 2]]), ("assistant", [ids[n // 2:]])]), None, None, []

    def batch(self, i: int, shares: dict[str, float] | None = None):
        """Micro-batch i: one kind drawn by the shares (None = data.shares), then B x batch_scale[kind]
        turns of it; a pure function of i and the shares. Returns x, y, loss mask (B, T), image and
        audio frames (N, d), and what the clips say: (token ids of all clips (S,), ids per clip (n,),
        frames per clip (n,), character ids of all clips (C,), characters per clip (n,)), in frame order.
        A spell batch's x, y and mask are empty (B, 0)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        shares = shares or self.cfg.shares
        kinds = [k for k in KINDS if shares.get(k, 0) > 0]
        kind = kinds[int(torch.multinomial(torch.tensor([float(shares[k]) for k in kinds]), 1, generator=g))]
        turns = [self.turn(kind, g) for _ in range(self.B * self.cfg.batch_scale.get(kind, 1))]
        said = [w for tr in turns for w in tr[4]]
        chars = [self.vocab.encode(normalize(self.t.tok.decode(ids))) for _, ids in said]  # what is said, spelled
        words = (torch.tensor([t for _, ids in said for t in ids], dtype=torch.long),
                 torch.tensor([len(ids) for _, ids in said], dtype=torch.long),
                 torch.tensor([n for n, _ in said], dtype=torch.long),
                 torch.tensor([c for cs in chars for c in cs], dtype=torch.long),
                 torch.tensor([len(cs) for cs in chars], dtype=torch.long))
        rows = [tr[:2] for tr in turns] if kind != "spell" else [([0], [0])] * len(turns)
        return (*collate(rows, self.t.tok.pad_id),
                self.frames([tr[2] for tr in turns], 0), self.frames([tr[3] for tr in turns], 1), words)

    def frames(self, feats: list, which: int) -> torch.Tensor:
        """The frames of a batch in order, (N, d); (0, d) when the batch has none."""
        feats = [f.reshape(-1, f.shape[-1]).float() for f in feats if f is not None]
        return torch.cat(feats) if feats else torch.zeros(0, self.dims[which])

    # -- held-out sets
    def cell_words(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pictures' cell tokens (N * 9, d_vision) and what each should arrive as, (N * 9,
        d_model): the mean of the Thinker's embeddings (table) of its object's size, colour and shape
        (a word's own tokens averaged first), or of " empty" for a cell with nothing in it."""
        words = {}

        def emb(word: str) -> torch.Tensor:
            if word not in words:
                words[word] = table[self.t.text_ids(" " + word)].float().mean(0)
            return words[word]

        targets = []
        for r in self.records["train"]:
            cells = [emb("empty")] * len(POSITIONS)
            for o in r["objects"]:
                said = [emb(o[k]) for k in ("size", "colour", "shape")]
                cells[POSITIONS.index(o["position"])] = torch.stack(said).mean(0)
            targets += cells
        return self.images["train"].flatten(0, 1), torch.stack(targets)

    def qa_eval(self) -> list[dict]:
        """Test questions (pictures with unseen colour-shape pairs), each with an unseen voice's clip."""
        items = [(k, qa["q"], qa["a"]) for k, r in enumerate(self.records["test"]) for qa in r["questions"]]
        random.Random(0).shuffle(items)
        out = []
        for k, q, a in items[: self.cfg.eval_questions or len(items)]:
            img = self.images["test"][k]
            typed = self.t.encode([("user", self.ask(img, q))], add_generation_prompt=True)[0]
            out.append({"picture": k, "q": q, "a": a, "kind": question_kind(q), "typed": (typed, img, None)})
            if not self.voices:
                continue
            clips = self.voices["test"].get(normalize(q))
            if clips is None:
                raise UserError(f"{self.cfg.spoken}: no spoken clip of the test question {q!r}; rebuild it "
                                f"(python -m omni.omni_data --out {self.cfg.spoken} --shapes {self.cfg.shapes})")
            aud = clips[(k + len(out)) % len(clips)].float()
            said = self.t.encode([("user", self.ask(img, (AUDIO, len(aud))))], add_generation_prompt=True)[0]
            out[-1]["spoken"] = (said, img, aud)
        return out

    def asr_eval(self) -> tuple[list[str], list[tuple]]:
        texts, feats = self.asr["test"]
        prompts = [(self.t.encode([("user", [(AUDIO, len(f)), ASR_PROMPT])], add_generation_prompt=True)[0], None,
                    f.float()) for f in feats]
        return texts, prompts

    def text_eval(self, seq_len: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return eval_windows(self.val_ids, seq_len, tokens)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(description="Speak the questions of the shapes world (stage E's spoken questions).")
    p.add_argument("--out", default="data/omni_tiny", help="output folder (relative to the repository root)")
    p.add_argument("--shapes", default="data/shapes_tiny", help="the shapes world whose questions are spoken")
    p.add_argument("--train-voices", type=int, default=6, help="training voices per training question")
    p.add_argument("--test-voices", type=int, default=3, help="unseen voices per test question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes speaking in parallel")
    a = p.parse_args(argv)
    return build(a.out, a.shapes, a.train_voices, a.test_voices, a.seed, a.workers)


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
