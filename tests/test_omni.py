"""Stage E: the chat template and the splice, the assistant-only loss mask, the freeze plan,
sft_omni.py end to end on tiny stage A/B/C checkpoints made here, exact resume, and a missing or
mismatched stage checkpoint as one clear line."""
import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from omni import omni_data, shapes, speech_data
from omni.audio import FrontEndConfig
from omni.audio_encoder import AudioCTC, AudioEncoderConfig, CharVocab
from omni.chat_template import AUDIO, IMAGE, ChatTemplate, collate, splice, user_parts
from omni.clip import CLIP, ClipConfig, TextConfig
from omni.codec import Codec, CodecConfig
from omni.paths import ROOT
from omni.spoken_answers import score_spoken_answers
from omni.talker import Talker, TalkerConfig
from omni.thinker import Thinker, ThinkerConfig
from omni.tokenizer import train_tokenizer
from omni.vision import VisionConfig
from tests.conftest import assert_resume_exact, run_stage

CHAPTER = "It was a fine day, and she said that he was not at home. They walked to the village together.\n\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data of every kind and tiny stage A, B and C checkpoints; returns the stage's flags."""
    d = tmp_path_factory.mktemp("stage_e")
    shapes.build(d / "shapes", n_train=24, n_val=8, n_test=8, seed=1)
    speech = speech_data.build(d / "speech", seed=1, train=8, val=2, test=3, workers=1, shards=1)
    omni_data.build(str(d / "spoken"), str(d / "shapes"), train_voices=1, test_voices=1, workers=1)
    (d / "corpus").mkdir()
    (d / "corpus" / "book.txt").write_text("".join(f"CHAPTER {i}\n\n{CHAPTER * 6}" for i in range(1, 21)))
    texts = [json.loads(line)["caption"] for line in (d / "shapes" / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer(texts + [CHAPTER] * 3, d / "tokenizer.model", 300)
    torch.manual_seed(0)
    thinker = ThinkerConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, n_kv_head=1, max_seq_len=256)
    audio = AudioEncoderConfig(d_model=32, n_layer=1, n_head=2, d_ff=64)
    vision = VisionConfig(d_model=32, n_layer=1, n_head=2, merge_dim=32)
    clip = CLIP(vision, TextConfig(d_model=32, n_layer=1, n_head=2), ClipConfig(embed_dim=32), tok.vocab_size)
    for stage, model, cfg in (("A", Thinker(thinker), {"model": dataclasses.asdict(thinker),
                                                        "data": {"seq_len": 32, "eval_tokens": 256}}),
                              ("B", AudioCTC(audio), {"model": dataclasses.asdict(audio), "audio": {}}),
                              ("C", clip, {"vision": dataclasses.asdict(vision)})):
        torch.save({"stage": stage, "model": model.state_dict(), "config": cfg}, d / f"stage_{stage}.pt")
    # an untrained stage D (codec and Talker) to speak the answers: the chain runs, its score is near 0
    codec = CodecConfig(channels=16, n_res=1, code_dim=8, n_codebooks=2, codebook_size=8)
    torch.save({"stage": "D-codec", "config": {"codec": dataclasses.asdict(codec)}, "model": Codec(codec).state_dict()},
               d / "codec.pt")
    talker = TalkerConfig(codec=str(d / "codec.pt"), thinker=str(d / "stage_A.pt"),
                          tokenizer=str(d / "tokenizer.model"), d_model=16, n_layer=1, n_head=2, text_layers=1,
                          depth_d_model=16, n_codebooks=2,
                          codebook_size=8, temperature=0, temperature_res=0, max_len_ratio=0.5)
    table = torch.load(d / "stage_A.pt", weights_only=True)["model"]["tok_emb.weight"]
    torch.save({"stage": "D-talker", "config": {"talker": dataclasses.asdict(talker), "audio": {},
                                                "data": {"train": str(speech["train"])}},  # whose voice it learned
                "model": Talker(talker, table).state_dict()}, d / "talker.pt")
    return [f"--init.thinker={d / 'stage_A.pt'}", f"--init.tokenizer={d / 'tokenizer.model'}",
            f"--init.audio={d / 'stage_B.pt'}", f"--init.vision={d / 'stage_C.pt'}", f"--init.talker={d / 'talker.pt'}",
            f"--data.shapes={d / 'shapes'}", f"--data.spoken={d / 'spoken'}", f"--data.speech={speech['train'].parent}",
            f"--data.corpus={d / 'corpus'}", "--data.eval_questions=0"], tok, d


def test_splice_puts_features_exactly_at_the_placeholders(world):
    _, tok, _ = world
    t = ChatTemplate(tok)
    rows = [t.encode([("user", [(IMAGE, 3), "what colour?", (AUDIO, 2)]), ("assistant", ["red"])])[0],
            t.encode([("user", [(AUDIO, 4), "hello"]), ("assistant", ["hi"])])[0]]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    embeds = torch.randn(2, T, 8)
    audio = torch.arange(6 * 8, dtype=torch.float).view(6, 8) + 100  # frames 0-1 of row 0, then 2-5 of row 1
    out = splice(embeds, ids, t.audio_id, audio, "audio")
    where = (ids == t.audio_id).nonzero().tolist()
    assert [b for b, _ in where] == [0, 0, 1, 1, 1, 1]
    for n, (b, p) in enumerate(where):
        assert torch.equal(out[b, p], audio[n])
    keep = ids != t.audio_id
    assert torch.equal(out[keep], embeds[keep])  # every other position is untouched
    with pytest.raises(ValueError, match="6 audio placeholder tokens but 5 audio feature frames"):
        splice(embeds, ids, t.audio_id, audio[:5], "audio")


def test_batch_scale_multiplies_the_rows_of_one_kind(world):
    _, tok, _ = world
    d = object.__new__(omni_data.OmniData)  # only what batch() reads; turns are stubs
    d.cfg = omni_data.OmniDataConfig(shares={"image_qa": 1, "text": 1}, batch_scale={"image_qa": 3})
    d.t, d.seed, d.B, d.dims = ChatTemplate(tok), 0, 2, (4, 4)
    d.turn = lambda kind, g: (*d.t.encode([("user", [kind])]), None, None, [])
    sizes = {len(d.batch(i)[0]) for i in range(20)}
    assert sizes == {2, 6}  # text batches of B rows, image question batches of 3 B
    assert {len(d.batch(i, {"text": 1})[0]) for i in range(20)} == {2}  # another mix (phase1.shares): text only
    with pytest.raises(ValueError, match="batch_scale"):
        omni_data.OmniDataConfig(batch_scale={"image": 2})


def test_qa_turns_ask_several_questions_about_one_picture(world):
    _, tok, _ = world
    d = object.__new__(omni_data.OmniData)  # only what turn() reads for picture questions
    d.cfg, d.t, d.max_len = omni_data.OmniDataConfig(qa_turns=3), ChatTemplate(tok), 256
    d.records = {"train": [{"questions": [{"q": f"q{k}{j}?", "a": f"a{k}{j}"} for j in range(n)]}
                           for k, n in enumerate((4, 2, 5))]}
    d.qa = [(k, qa["q"], qa["a"]) for k, r in enumerate(d.records["train"]) for qa in r["questions"]]
    d.first_qa = [0, 4, 6, 11]
    d.images = {"train": torch.arange(3.0).view(3, 1, 1).expand(3, 9, 4)}  # picture k's frames are all k
    d.voices = {"train": {omni_data.normalize(q): [torch.full((2 + int(q[1]), 4), 1.0)] for _, q, _ in d.qa}}
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        ids, mask, img, _, said = d.turn("image_qa", g)
        assert said == []  # typed questions: nothing is spoken
        k = int(img[0, 0])
        text = tok.decode([i for i, m in zip(ids, mask) if m and i != d.t.im_end])
        answers = [f"a{k}{j}" for j in range(len(d.records["train"][k]["questions"]))]
        n = min(3, len(answers))
        assert ids.count(d.t.image_id) == 9 and ids.count(d.t.im_end) == 2 * n  # the picture once, n turns
        assert len(text.replace("a", " a").split()) == n and all(w in answers for w in text.replace("a", " a").split())
        ids, mask, img, aud, said = d.turn("spoken_qa", g)
        assert ids.count(d.t.audio_id) == len(aud) and ids.count(d.t.image_id) == 9  # one clip per question
        assert sum(n for n, _ in said) == len(aud) and all(w in [d.t.text_ids(q) for _, q, _ in d.qa] for _, w in said)
    d.max_len = 40  # room for one spoken question but not three: a row asks fewer, never overflows
    lengths = set()
    for _ in range(10):
        ids, mask, img, aud, said = d.turn("spoken_qa", g)
        assert sum(n for n, _ in said) == len(aud)
        assert len(ids) - 1 <= d.max_len and ids.count(d.t.audio_id) == len(aud) and ids.count(d.t.im_end) >= 2
        lengths.add(ids.count(d.t.im_end) // 2)
    assert min(lengths) < 3


def test_spoken_copies_are_changed_voices_of_the_same_questions(world):
    _, _, d = world

    class Identity:  # stands in for the frozen encoder: a clip's features are its log-mel frames
        @staticmethod
        def encode_audio(x, lengths):
            return [x[i, :n] for i, n in enumerate(lengths.tolist())]

    def clips(copies, seed=1):
        data = object.__new__(omni_data.OmniData)  # only what _clips() reads
        data.cfg, data.seed, data.max_len = omni_data.OmniDataConfig(spoken_copies=copies), seed, 10_000
        return data._clips(Identity, d / "spoken" / "questions_train.jsonl", FrontEndConfig(), copies=copies)

    texts, feats, _ = clips(0)
    n = len(texts)
    texts2, feats2, _ = clips(2)
    assert texts2 == texts * 3 and all(torch.equal(a, b) for a, b in zip(feats, feats2[:n]))  # originals unchanged
    for k in range(n, 3 * n):  # each copy: another length or other values, and the same question
        orig = feats[k % n]
        assert len(feats2[k]) != len(orig) or not torch.equal(feats2[k], orig), k
        assert abs(len(feats2[k]) / len(orig) - 1) <= 0.12, k  # speed within 0.1 (and rounding)
    assert all(torch.equal(a, b) for a, b in zip(feats2, clips(2)[1]))  # drawn from the seed: the same every run
    with pytest.raises(ValueError, match="spoken_copies"):
        omni_data.OmniDataConfig(spoken_copies=-1)


def test_plain_text_rows_count_every_token(world):
    _, tok, _ = world
    d = object.__new__(omni_data.OmniData)  # only what turn() reads for text rows
    d.t, d.text_ids = ChatTemplate(tok), torch.arange(100, 164)
    d.cfg = omni_data.OmniDataConfig(text_tokens=8, text_plain=True)
    ids, mask, img, aud, _ = d.turn("text", torch.Generator().manual_seed(0))
    assert mask == [1] * 8 and ids == list(range(ids[0], ids[0] + 8)) and img is None and aud is None
    d.cfg = omni_data.OmniDataConfig(text_tokens=8)  # the chat turn: only the reply counts
    ids, mask, *_ = d.turn("text", torch.Generator().manual_seed(0))
    assert d.t.im_start in ids and 0 < sum(mask) <= 5


def test_a_copy_row_types_a_transcript_and_counts_only_its_copy(world):
    """data kind 'copy': a transcription turn whose words are typed instead of spoken; the reply,
    the only counted part, is those same words."""
    _, tok, _ = world
    d = object.__new__(omni_data.OmniData)  # only what turn() reads for copy rows
    d.t, d.cfg = ChatTemplate(tok), omni_data.OmniDataConfig()
    d.asr, d.asr_idx = {"train": (["a small red circle", "she was not at home"], [])}, [0, 1]
    ids, mask, img, aud, said = d.turn("copy", torch.Generator().manual_seed(0))
    assert img is None and aud is None and said == []
    reply = [i for i, m in zip(ids, mask) if m][:-1]  # the counted tokens, less the closing <|im_end|>
    text = tok.decode(reply)
    assert text in d.asr["train"][0] and sum(mask) == len(d.t.text_ids(text)) + 1
    user = tok.decode(ids[: ids.index(d.t.im_end)])
    assert text in user and omni_data.ASR_PROMPT in user


def test_a_spell_row_is_a_clip_alone_drawn_from_every_clip(world):
    """data kind 'spell': no chat turn, only a clip's frames and the tokens it says (for the audio
    projector's CTC); spell rows draw from every training clip, transcription turns from the
    data.asr_clips spread over them; a spell batch's token tensors are empty."""
    _, tok, _ = world
    d = object.__new__(omni_data.OmniData)  # only what turn() and batch() read
    d.t, d.seed, d.B, d.dims, d.vocab = ChatTemplate(tok), 0, 4, (4, 6), CharVocab()
    d.cfg = omni_data.OmniDataConfig(shares={"spell": 1}, batch_scale={"spell": 2})
    texts = ["a small red circle", "she was not at home", "they walked to the village"]
    d.asr, d.asr_weights = {"train": (texts, [torch.full((3 + k, 6), float(k)) for k in range(3)])}, None
    d.asr_idx = omni_data.spread(3, 1)  # data.asr_clips = 1: the first clip
    x, y, mask, img, aud, (words, n_words, n_frames, chars, n_chars) = d.batch(0)
    assert x.shape == y.shape == mask.shape == (8, 0) and img.shape == (0, 4)
    assert len(n_frames) == 8 and aud.shape == (int(n_frames.sum()), 6)
    for w, c, f in zip(words.split(n_words.tolist()), chars.split(n_chars.tolist()), aud.split(n_frames.tolist())):
        j = int(f[0, 0])  # the clip's index, written in its frames
        assert len(f) == 3 + j and w.tolist() == d.t.text_ids(texts[j]) and d.vocab.decode(c.tolist()) == texts[j]
    spelled = {int(f[0, 0]) for i in range(10) for f in d.batch(i)[4].split(d.batch(i)[5][2].tolist())}
    assert spelled == {0, 1, 2}  # every clip, though transcription turns would draw from one only
    assert {d.turn("asr", torch.Generator().manual_seed(i))[4][0][0] for i in range(10)} == {3}


def test_spell_rows_and_the_letter_head_train_under_torchrun(tmp_path, world):
    """Spell rows leave the Thinker without a gradient (phase 1), a batch without clips the letter head
    (phase 2): DDP (2 processes, gloo) must look for unused parameters (Task.partial), else it hangs."""
    flags, _, _ = world
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        "sft_omni.py", "--debug", *flags, "--init.talker=", "--train.device=cpu",
                        '--phase1.shares={"spell": 1}', '--data.shares={"asr": 1, "image_qa": 1}',
                        "--projector.audio_chars=1", f"--train.out_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("held-out: typed") == 1  # only rank 0 prints
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 6


def test_clip_samples_are_spread_over_the_manifest(world):
    """data.asr_clips and data.eval_clips take clips spread evenly over the speech set, not its first
    ones: a speech set lists its bare answers last, and a sample of the first clips held none (stage E
    never learned to transcribe a word said alone, and its evaluation never asked it to)."""
    manifest = world[2] / "speech" / "train.jsonl"  # the --data.speech of the world's flags
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows[-1]["source"] == "answer"  # the case that matters: answers come last

    # encode_audio as a frozen encoder would shape it, each clip's log-mel as its frames
    frames = SimpleNamespace(encode_audio=lambda mels, lengths: [m[:n] for m, n in zip(mels, lengths.tolist())])
    d = object.__new__(omni_data.OmniData)  # only what _clips reads
    d.seed, d.cfg, d.max_len = 0, omni_data.OmniDataConfig(), 10 ** 6
    n = len(rows)
    for limit in (2, 3, n - 1, 0):
        texts, feats, sources = d._clips(frames, manifest, FrontEndConfig(), limit)
        picked = omni_data.spread(n, limit or n)
        assert texts == [speech_data.normalize(rows[j]["text"]) for j in picked]
        assert sources == [rows[j]["source"] for j in picked] and len(feats) == len(picked)
    assert omni_data.spread(660, 100)[-1] >= 600 and omni_data.spread(5, 5) == [0, 1, 2, 3, 4]
    assert sum(j >= 600 for j in omni_data.spread(660, 100)) == 9  # the 60 answers of 660 clips: 9 of 100


def test_asr_weights_draw_transcription_clips_by_their_source(world):
    """data.asr_weights: a transcription turn draws its clip in proportion to the weight of the clip's
    source (here only the second clip has weight); without weights every clip is alike."""
    _, tok, _ = world
    d = object.__new__(omni_data.OmniData)  # only what turn() reads for transcription turns
    d.t, d.cfg, d.asr_idx = ChatTemplate(tok), omni_data.OmniDataConfig(), [0, 1, 2]
    texts = ["a small red circle", "she was not at home", "they walked to the village"]
    d.asr = {"train": (texts, [torch.zeros(3 + k, 6) for k in range(3)])}
    d.asr_weights = torch.tensor([0.0, 1.0, 0.0])  # e.g. {"world": 0} for sources world, austen, world
    assert {d.turn("asr", torch.Generator().manual_seed(i))[3].shape[0] for i in range(20)} == {4}
    d.asr_weights = None
    assert {d.turn("asr", torch.Generator().manual_seed(i))[3].shape[0] for i in range(20)} == {3, 4, 5}
    with pytest.raises(ValueError, match="asr_weights"):
        omni_data.OmniDataConfig(asr_weights={"austen": -1})


def test_the_question_goes_before_the_picture_when_the_config_says_so(world):
    _, tok, _ = world
    t = ChatTemplate(tok)
    spoken_and_typed = [(AUDIO, 3), "what colour is the star?"]
    assert user_parts(9, spoken_and_typed, True) == [*spoken_and_typed, (IMAGE, 9)]
    assert user_parts(9, spoken_and_typed, False) == [(IMAGE, 9), *spoken_and_typed]
    ids, _ = t.encode([("user", user_parts(9, ["what colour is the star?"], True))])
    assert ids.index(t.image_id) > ids.index(t.text_ids("what colour is the star?")[0])
    d = object.__new__(omni_data.OmniData)  # the training rows take the same order from data.question_first
    d.cfg = omni_data.OmniDataConfig(question_first=True)
    assert d.ask(torch.zeros(9, 4), "where is the star?") == ["where is the star?", (IMAGE, 9)]


def test_loss_mask_covers_the_assistant_tokens_only(world):
    _, tok, _ = world
    t = ChatTemplate(tok)
    ids, mask = t.encode([("user", [(IMAGE, 2), "what shape is on the left?"]), ("assistant", ["a star"]),
                          ("user", ["and its colour?"]), ("assistant", ["red"])])
    counted = [i for i, m in zip(ids, mask) if m]
    assert counted == tok.encode("a star") + [t.im_end] + tok.encode("red") + [t.im_end]
    x, y, m = collate([(ids, mask)], tok.pad_id)
    assert torch.equal(y[0], torch.tensor(ids[1:])) and torch.equal(m[0], torch.tensor(mask[1:]))
    prompt, pmask = t.encode([("user", ["hi"])], add_generation_prompt=True)
    head = [t.im_start, *tok.encode("assistant"), t.nl]
    assert sum(pmask) == 0 and prompt[-len(head):] == head


def test_sft_omni_debug_runs_end_to_end_and_the_freeze_plan_holds(tmp_path, world):
    flags, _, d = world
    # transcripts by hybrid CTC/attention decoding: the frames' spelling in characters beside the Thinker
    m = run_stage("sft_omni", tmp_path, *flags, "--projector.audio_ctc=1", "--projector.audio_chars=1",
                  "--transcribe.ctc_weight=0.7", "--transcribe.spelling=chars", "--transcribe.candidates=16")
    for k in ("qa", "spoken", "qa_count", "qa_yesno", "spoken_colour", "asr_cer", "bpb", "ref_bpb", "ref_cer",
              "spoken_answers", "spoken_answers_cer", "spoken_answers_espeak", "spoken_answers_espeak_cer"):
        assert k in m and m[k] >= 0, k
    assert m["step"] == 6 and abs(m["ref_bpb"] - m["bpb"]) < 5
    # transcription is also scored per kind of clip of the evaluation's sample (world, austen, answer)
    rows = [json.loads(line) for line in (d / "speech" / "test.jsonl").read_text().splitlines()]
    picked = {rows[j]["source"] for j in omni_data.spread(len(rows), 4)}  # DEBUG's data.eval_clips
    assert len(picked) > 1 and {k for k in m if k.startswith("asr_cer_")} == {f"asr_cer_{k}" for k in picked}
    for name in ("curves.png", "answers.png", "best.pt", "metrics.json", "phase1/latest.pt"):
        assert (tmp_path / name).stat().st_size > 500, name
    a = torch.load(d / "stage_A.pt", weights_only=True)["model"]
    c = torch.load(d / "stage_C.pt", weights_only=True)["model"]
    p1 = torch.load(tmp_path / "phase1" / "latest.pt", weights_only=True)
    p2 = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert p1["stage"] == p2["stage"] == "E"
    for k, v in a.items():  # phase 1: the Thinker frozen; phase 2: it learns
        assert torch.equal(p1["model"][f"thinker.{k}"], v), k
    assert any(not torch.equal(p2["model"][f"thinker.{k}"], v) for k, v in a.items())
    for state in (p1, p2):  # the encoders are frozen in both phases, the projectors always learn
        for k, v in c.items():
            if k.startswith("vision."):
                assert torch.equal(state["model"][k], v), k
    projectors = [k for k in p1["model"] if k.startswith("projectors.")]
    assert any(not torch.equal(p1["model"][k], p2["model"][k]) for k in projectors)
    assert not torch.equal(p1["model"]["char_head.weight"], p2["model"]["char_head.weight"])  # the spelling learns
    # the chat command: a spoken question about a test picture; "what did they say?" answered by the transcript
    chat = [sys.executable, "-m", "omni.chat", "--checkpoint", str(tmp_path / "best.pt"), "--audio",
            str(next((d / "spoken" / "wav").glob("*.wav"))), "--talker", str(tmp_path / "no_talker.pt")]
    for extra in (["--image", str(d / "shapes" / "test" / "000000.png")], ["--text", "What did they say?"]):
        r = subprocess.run(chat + extra, cwd=ROOT, capture_output=True, text=True, timeout=120)
        said = dict(line.split(": ", 1) for line in r.stdout.splitlines() if line.startswith(("question", "answer")))
        assert r.returncode == 0 and "time to first word" in r.stdout and len(said) == 2, r.stdout + r.stderr[-800:]
    assert said["answer"] == said["question heard as"], r.stdout[-800:]


def test_spoken_answers_count_an_answer_only_when_heard_exactly_as_said():
    heard_as = {"purple": "purple", "top left": "top lift", "three": "three"}
    asked = []

    def hear(texts):  # a stand-in for Talker -> codec -> Griffin-Lim -> recogniser
        asked.extend(texts)
        return [heard_as[t].upper() + "." for t in texts]  # transcripts are normalised before comparing

    s = score_spoken_answers(["purple", "Top left", "three", "purple", ""], hear)
    assert sorted(asked) == ["purple", "three", "top left"]  # each distinct answer is spoken once
    assert s["rate"] == 3 / 5 and s["distinct"] == 3 and s["heard"]["top left"] == "top lift"
    assert s["cer"] == 1 / (6 + 8 + 5 + 6)  # one wrong letter in the 25 letters of the four answers said
    assert score_spoken_answers(["", ""], hear)["rate"] == 0


def test_the_tiny_configs_order_and_named_cells_train_and_a_misuse_is_one_clear_line(tmp_path, world):
    """configs/omni_tiny.json's switches (the question first, named cells, the frames' CTC) train; named cells
    without cell vectors, and transcripts decoded with a spelling that nothing trains, are one clear line."""
    flags, _, _ = world
    base = [sys.executable, "sft_omni.py", "--debug", *flags, f"--train.out_dir={tmp_path}",
            "--data.question_first=true", "--projector.image_pos_names=true", "--projector.audio_ctc=1"]
    for wrong, said in ((["--projector.image_pos=false"], "projector.image_pos_names: needs projector.image_pos"),
                        # decoding with the frames' spelling, in tokens or in characters, when nothing trains it
                        (["--projector.audio_ctc=0", "--transcribe.ctc_weight=0.7"],
                         "transcribe.ctc_weight: 0.7 weighs the audio frames' spelling, which nothing trains"),
                        (["--transcribe.ctc_weight=0.7", "--transcribe.spelling=chars"],
                         "transcribe.spelling: 'chars' weighs the frames' spelling in characters, which nothing")):
        r = subprocess.run(base + wrong, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, r.stderr[-800:]
    r = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    assert "held-out: typed" in r.stdout
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert state["config"]["data"]["question_first"] and state["config"]["projector"]["image_pos_names"]
    assert state["config"]["projector"]["audio_ctc"] == 1


def test_resume_is_exact(tmp_path, world):
    assert_resume_exact("sft_omni", tmp_path, *world[0])


@pytest.mark.parametrize("key, value, message", [
    ("init.vision", "nowhere/best.pt", "nowhere/best.pt: checkpoint not found"),
    ("init.vision", "stage_A.pt", "this is a stage A checkpoint (the Thinker); this command needs a stage C"),
    ("init.thinker", "stage_B.pt", "this is a stage B checkpoint (the audio encoder); this command needs a stage A"),
    ("init.talker", "stage_B.pt", "this is a stage B checkpoint (the audio encoder); this command needs a stage D"),
    ("train.lr_scale", '{"audio.": 0}', "train.lr_scale: the encoders are frozen in stage E"),
])
def test_a_missing_or_mismatched_stage_checkpoint_is_one_clear_line(tmp_path, world, key, value, message):
    flags, _, d = world
    if value.startswith("stage_"):
        value = str(d / value)
    r = subprocess.run([sys.executable, "sft_omni.py", "--debug", *flags, f"--{key}={value}",
                        f"--train.out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr[-800:]


def test_a_phase_1_mix_may_draw_kinds_phase_2_does_not_and_an_unknown_kind_is_one_clear_line(tmp_path, world):
    """phase1.shares draws phase 1's micro-batches by another mix; its kinds' data is loaded even when
    data.shares (phase 2) does not draw them (here: spell rows and transcription in phase 1 only)."""
    flags, _, _ = world
    common = [sys.executable, "sft_omni.py", "--debug", *flags, '--data.shares={"image_qa": 1, "text": 1}',
              f"--train.out_dir={tmp_path}", "--init.talker="]
    r = subprocess.run([*common, '--phase1.shares={"spell": 1, "asr": 1}'], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "data: spell 1, asr 1" in r.stdout, r.stderr[-800:]
    r = subprocess.run([*common, '--phase1.shares={"video": 1}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    message = "phase1.shares: kinds are image_qa, caption, spoken_qa, asr, text, copy, spell"
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr[-800:]
