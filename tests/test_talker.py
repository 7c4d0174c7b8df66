"""The Talker: frame tracks from word times, shapes, masked loss, KV-cache generation equal to a full
forward, end of speech, and (further down) the stage script and omni.say end to end."""
import json
import random
import subprocess
import sys
from dataclasses import asdict

import pytest
import soundfile as sf
import torch

from omni.codec import Codec, CodecConfig
from omni.paths import ROOT
from omni.talker import Talker, TalkerConfig, generate, place_in_word, talker_loss
from omni.talker_data import TalkerSet, batch_order, collate, frame_track, phone_track, positions_and_ends
from omni.talker_eval import FIELDS
from omni.tokenizer import train_tokenizer
from omni.tts import synthesize_timed
from tests.conftest import assert_resume_exact

K, C, VOCAB, D_THINKER = 3, 16, 40, 24


def tiny_talker(seed: int = 0, **kw) -> Talker:
    torch.manual_seed(seed)
    cfg = TalkerConfig(d_model=32, n_layer=2, n_head=2, text_layers=1, depth_d_model=32, max_frames=64,
                       n_codebooks=K, codebook_size=C, **kw)
    return Talker(cfg, torch.randn(VOCAB, D_THINKER))


def toy_set(n: int = 6, seed: int = 0) -> TalkerSet:
    """n clips of 2-4 words, 1-3 tokens a word, 3-6 frames a word, random codes."""
    g = torch.Generator().manual_seed(seed)
    s = TalkerSet([], [], [], [], [], [], [])
    for _ in range(n):
        n_words = int(torch.randint(2, 5, (), generator=g))
        per_tok = torch.randint(1, 4, (n_words,), generator=g)
        per_frame = torch.randint(3, 7, (n_words,), generator=g)
        s.tok_word.append(torch.repeat_interleave(torch.arange(n_words), per_tok))
        s.tokens.append(torch.randint(4, VOCAB, (int(per_tok.sum()),), generator=g))
        s.tracks.append(torch.repeat_interleave(torch.arange(n_words), per_frame))
        s.codes.append(torch.randint(0, C, (int(per_frame.sum()), K), generator=g))
        s.texts.append(" ".join(["w"] * n_words))
        s.sources.append("world")
    return s


def test_frame_track_from_word_times():
    # 25 frames a second: words at 0, 0.2 s (frame 5), 0.21 s (rounds to 5: pushed to 6), 0.6 s (frame 15)
    track = frame_track([0.0, 0.2, 0.21, 0.6], 20)
    assert track.tolist() == [0] * 5 + [1] + [2] * 9 + [3] * 5
    pos, ends = positions_and_ends(track)
    assert pos.tolist() == [0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4]
    assert ends.nonzero().flatten().tolist() == [4, 5, 14, 19]  # every word's last frame, and the clip's
    assert frame_track([0.0, 0.5, 0.9], 3) is None  # more words than frames: cannot be aligned


def test_shapes_and_loss_mask_ignores_padding():
    s, model = toy_set(), tiny_talker().eval()  # eval: no history dropout, so two passes are comparable
    batch = collate(s, [0, 1, 2])
    logits, log_dur, phones = model(*(batch[k] for k in FIELDS))
    T, W = batch["codes"].size(1), int(batch["n_words"].max())
    assert logits.shape == (3, T, K, C) and log_dur.shape == (3, W + 1)  # every word, then the end slot
    assert batch["durations"].sum(1).tolist() == batch["mask"].sum(1).tolist()  # every frame in one word
    assert phones is None  # no phoneme head unless talker.phoneme_weight > 0
    loss, stats = talker_loss(logits, log_dur, phones, batch, model.cfg)
    assert loss.ndim == 0 and {"acc0", f"acc{K - 1}", "dur_mae"} <= set(stats)
    # Garbage in the padded frames must change nothing: not the loss, not the real frames' logits.
    noisy = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["mask"]
    assert pad.any(), "the toy batch should need padding"
    noisy["codes"][pad] = C - 1
    logits2, log_dur2, _ = model(*(noisy[k] for k in FIELDS))
    loss2, _ = talker_loss(logits2, log_dur2, None, noisy, model.cfg)
    assert torch.allclose(loss, loss2, atol=1e-6)
    assert torch.allclose(logits[batch["mask"]], logits2[batch["mask"]], atol=1e-5)


def test_gradients_reach_every_trained_part_but_not_the_thinker_table():
    model = tiny_talker()
    batch = collate(toy_set(), [0, 1])
    loss, _ = talker_loss(*model(*(batch[k] for k in FIELDS)), batch, model.cfg)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert "thinker_table" not in dict(model.named_parameters())


def test_history_dropout_hides_the_past_in_training_only():
    """With every frame's history hidden, codebook 0 can only come from the text: other codes in the
    past change nothing. In eval mode the past is always seen."""
    model = tiny_talker(history_dropout=0.999)
    b = collate(toy_set(), [0, 1])
    other = torch.randint(0, C, b["codes"].shape, generator=torch.Generator().manual_seed(1))

    def logits0(codes):
        torch.manual_seed(0)  # the same hiding draw for both code tensors
        return model(*(codes if k == "codes" else b[k] for k in FIELDS))[0][..., 0, :]

    assert torch.allclose(logits0(b["codes"]), logits0(other), atol=1e-6)
    model.eval()
    assert not torch.allclose(logits0(b["codes"]), logits0(other), atol=1e-4)


def test_hidden_conditioning_reads_the_frozen_thinker():
    """cond='hidden': the Thinker's last hidden states replace the token embeddings; the Thinker stays frozen."""
    from omni.thinker import Thinker, ThinkerConfig

    torch.manual_seed(0)
    thinker = Thinker(ThinkerConfig(vocab_size=VOCAB, d_model=D_THINKER, n_layer=1, n_head=2, n_kv_head=1))
    cfg = TalkerConfig(d_model=32, n_layer=1, n_head=2, text_layers=1, depth_d_model=32, max_frames=64,
                       n_codebooks=K, codebook_size=C, cond="hidden")
    model = Talker(cfg, thinker.tok_emb.weight, thinker)
    b = collate(toy_set(), [0, 1])
    states = model.encode_text(b["tokens"], b["tok_word"], b["n_words"])["states"]
    embed = Talker(TalkerConfig(**{**cfg.__dict__, "cond": "embed"}), thinker.tok_emb.weight)
    embed.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("thinker.")})
    assert not torch.allclose(states, embed.encode_text(b["tokens"], b["tok_word"], b["n_words"])["states"])
    assert not any(p.requires_grad for p in model.thinker.parameters())


def test_cached_generation_equals_a_full_forward():
    """Generate with the KV cache, then run the teacher-forced forward on what was generated, with the
    same word tracks and durations: the codebook-0 logits must agree frame by frame."""
    model = tiny_talker(seed=1, temperature=1.0, top_k=0).eval()
    batch = collate(toy_set(), [0, 1, 2])
    out = generate(model, batch["tokens"], batch["tok_word"], batch["n_words"], torch.tensor([12, 12, 12]),
                   generator=torch.Generator().manual_seed(0), return_logits=True)
    logits = model(batch["tokens"], batch["tok_word"], batch["n_words"], out["codes"],
                   out["frame_word"], out["frame_pos"], out["durations"])[0]
    T = out["codes"].size(1)
    assert T >= 2
    for r in range(3):
        n = int(out["lengths"][r])  # after a row stops, its later frames are not part of its speech
        assert torch.allclose(out["logits"][r, :n], logits[r, :n, 0], atol=1e-4)
        if out["ended"][r]:  # each word lasted exactly its predicted frames
            assert n == int(out["durations"][r].sum())
            per_word = torch.bincount(out["frame_word"][r, :n]).tolist()
            assert per_word == out["durations"][r, :batch["n_words"][r]].tolist()


def test_predicted_durations_drive_words_and_the_end_of_speech():
    model = tiny_talker()
    batch = collate(toy_set(), [0, 1])
    last = model.duration[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.0)  # log duration 0: one frame a word
    out = generate(model, batch["tokens"], batch["tok_word"], batch["n_words"], torch.tensor([40, 40]))
    assert out["ended"].all()
    assert out["lengths"].tolist() == batch["n_words"].tolist()  # one frame a word, then the end
    with torch.no_grad():
        last.bias.fill_(torch.tensor(3.0).log().item())  # three frames a word
    out = generate(model, batch["tokens"], batch["tok_word"], batch["n_words"], torch.tensor([40, 40]))
    assert out["ended"].all() and out["lengths"].tolist() == (3 * batch["n_words"]).tolist()
    assert out["frame_pos"][0, :6].tolist() == [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        last.bias.fill_(5.0)  # 148 frames a word: the cap stops it and it counts as "did not end"
    out = generate(model, batch["tokens"], batch["tok_word"], batch["n_words"], torch.tensor([7, 9]))
    assert not out["ended"].any() and out["lengths"].tolist() == [7, 9]


def test_each_frame_knows_its_place_in_the_word():
    """A word of 6 frames and 3 tokens (ids 10, 11, 12): frames 0-1 read token 10, 2-3 token 11, 4-5
    token 12, and the relative position runs through 4 buckets; the word's length changes the bucket."""
    k, n = torch.arange(6)[None], torch.full((1, 6), 6)
    rel, tok = place_in_word(k, n, torch.full((1, 6), 10), torch.full((1, 6), 3), bins=4)
    assert tok.tolist() == [[10, 10, 11, 11, 12, 12]] and rel.tolist() == [[0, 0, 1, 2, 2, 3]]
    model = tiny_talker().eval()
    b = collate(toy_set(), [0])
    text = model.encode_text(b["tokens"], b["tok_word"], b["n_words"])
    k = torch.tensor([[1]])
    short, long = (model.frame_condition(text, torch.zeros_like(k), k, torch.tensor([[n]]), b["n_words"])
                   for n in (2, 12))
    assert not torch.allclose(short, long)  # frame 1 of 2 is the word's end, frame 1 of 12 its start


def test_the_duration_model_learns_word_lengths():
    """A few Adam steps on one toy batch: the predicted word lengths approach eSpeak's (3-6 frames)."""
    model = tiny_talker()
    b = collate(toy_set(), [0, 1, 2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    maes = []
    for _ in range(60):
        loss, stats = talker_loss(*model(*(b[k] for k in FIELDS)), b, model.cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        maes.append(float(stats["dur_mae"]))
    assert maes[-1] < 0.5 * maes[0] and maes[-1] < 1.0


def test_phoneme_teacher_reads_espeak_phonemes_per_frame_and_trains_only_its_head_target():
    """eSpeak's phoneme events -> the class sounding at each 40 ms frame's middle (stress marks dropped,
    unknown classes -1); the head's loss ignores padding and unknown frames and its gradient reaches it."""
    vocab = {"s": 0, "O:": 1, "l": 2}
    track = phone_track([[0.0, "s"], [0.12, "'O:"], [0.2, "l"], [0.32, "x"]], 10, vocab)
    assert track.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, -1, -1]
    model = tiny_talker(phoneme_weight=1.0, phonemes="s O: l")
    s = toy_set()
    g = torch.Generator().manual_seed(0)
    s.phones = [torch.randint(-1, 3, (len(c),), generator=g) for c in s.codes]
    b = collate(s, [0, 1, 2])
    assert b["phones"].shape == b["mask"].shape and (b["phones"][~b["mask"]] == -1).all()
    logits, log_dur, phones = model(*(b[k] for k in FIELDS))
    assert phones.shape == (*b["mask"].shape, 3)
    loss, stats = talker_loss(logits, log_dur, phones, b, model.cfg)
    plain, _ = talker_loss(logits, log_dur, None, b, model.cfg)
    assert loss > plain and 0 <= float(stats["phone_acc"]) <= 1
    loss.backward()
    assert model.phone_head.weight.grad.abs().sum() > 0
    noisy = {**b, "phones": torch.where(b["mask"], b["phones"], 2)}  # labels in padding count nowhere
    assert torch.allclose(talker_loss(logits, log_dur, phones, noisy, model.cfg)[0], loss)


def test_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = [int(x) for x in torch.randint(5, 50, (40,), generator=torch.Generator().manual_seed(0))]
    a, b = batch_order(lengths, 4, 1, 3), batch_order(lengths, 4, 1, 3)
    assert a == b and a != batch_order(lengths, 4, 1, 4)
    assert sorted(i for batch in a for i in batch) == sorted(range(40))


# ---------------------------------------------------------------- the stage script and omni.say, end to end

WORDS = "a small big red blue green circle square star at the top bottom left right".split()


@pytest.fixture(scope="module")
def stage_d(tmp_path_factory):
    """A tiny one-voice set (eSpeak, evenly spaced word times), a tiny stage A tokenizer and Thinker
    table, and a tiny codec checkpoint: the command-line flags that point the Talker phase at them."""
    root = tmp_path_factory.mktemp("stage_d")
    rng = random.Random(0)
    (root / "wav").mkdir()
    for split, n in (("train", 10), ("val", 3), ("test", 3)):
        rows = []
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
            wav, _, phonemes = synthesize_timed(text)
            sf.write(root / f"wav/{split}_{i}.wav", wav, 16000)
            dur = len(wav) / 16000
            rows.append({"audio": f"wav/{split}_{i}.wav", "text": text, "speaker": "en-us+m1", "duration": dur,
                         "source": "world", "words": [dur * w / len(text.split()) for w in range(len(text.split()))],
                         "phonemes": [[p.start, p.symbol] for p in phonemes]})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer([" ".join(WORDS)] * 20 + ["It is a truth universally acknowledged."] * 20,
                          root / "tokenizer.model", vocab_size=300)
    torch.manual_seed(0)
    thinker_cfg = {"vocab_size": tok.vocab_size, "d_model": 16, "n_layer": 1, "n_head": 2, "n_kv_head": 1}
    table = torch.randn(tok.vocab_size, 16)
    torch.save({"stage": "A", "config": {"model": thinker_cfg}, "model": {"tok_emb.weight": table}},
               root / "thinker.pt")
    codec_cfg = CodecConfig(channels=16, n_res=1, code_dim=8, n_codebooks=2, codebook_size=8)
    torch.save({"stage": "D-codec", "config": {"codec": asdict(codec_cfg)}, "model": Codec(codec_cfg).state_dict()},
               root / "codec.pt")
    return [f"--data.{s}={root}/{s}.jsonl" for s in ("train", "val", "test")] + [
        "--phase=talker", f"--talker.codec={root}/codec.pt", f"--talker.thinker={root}/thinker.pt",
        f"--talker.tokenizer={root}/tokenizer.model"]


def test_train_talker_debug_runs_end_to_end_and_say_speaks(tmp_path, stage_d):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "train_talker.py", "--debug", f"--train.out_dir={out}", *stage_d,
                        "--talker.phoneme_weight=0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "10 clips for the Talker" in r.stdout and "ended by themselves" in r.stdout
    assert "phoneme teacher:" in r.stdout  # eSpeak's phoneme events of the rows, a training-only head
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"loss", "test_acc0", "test_acc1", "test_dur_mae", "gen_ended", "gen_dur_ratio",
            "test_phone_acc"} <= set(metrics)
    assert 0 <= metrics["gen_ended"] <= 1 and metrics["gen_dur_ratio"] <= 2.0 + 1e-6  # the cap is 2x the original
    assert (out / "talker_0.wav").is_file() and (out / "talker_spectrograms.png").is_file()
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["stage"] == "D-talker" and state["config"]["talker"]["n_codebooks"] == 2
    assert torch.equal(state["model"]["thinker_table"], torch.load(stage_d_table(stage_d), weights_only=True)
                       ["model"]["tok_emb.weight"])  # the Thinker's table stayed frozen
    r = subprocess.run([sys.executable, "-m", "omni.say", str(out / "best.pt"), "A red circle, 3 times!",
                        "--out", str(tmp_path / "hello.wav")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "saying 'a red circle times': the Talker knows lower-case words only" in r.stdout  # said what it drops
    assert "real-time factor" in r.stdout and sf.info(str(tmp_path / "hello.wav")).samplerate == 16000


def stage_d_table(flags: list[str]) -> str:
    return next(f.split("=", 1)[1] for f in flags if f.startswith("--talker.thinker="))


def test_talker_phase_resume_is_exact(tmp_path, stage_d):
    assert_resume_exact("train_talker", tmp_path, *stage_d, "--data.judge=")


@pytest.mark.parametrize("args, message", [
    (["   "], "nothing to say"),
    (["42 %!"], "nothing to say in lower-case words"),
    (["a red circle", "--out", "/nonexistent_folder/x.wav"], "does not exist"),
])
def test_say_mistakes_are_one_clear_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "omni.say", str(tmp_path / "missing.pt"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr


def test_say_names_a_checkpoint_of_another_stage(tmp_path, stage_d):
    r = subprocess.run([sys.executable, "-m", "omni.say", stage_d_table(stage_d), "a red circle"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "stage A" in r.stderr.replace("a stage A", "stage A")
