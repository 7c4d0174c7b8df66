"""The speech data: the data command on a handful of sentences, the LibriSpeech layout, the
feature cache, and how broken files are counted."""
import json

import numpy as np
import pytest
import soundfile as sf

from omni import audio
from omni.audio import load_speech_set
from omni.audio_encoder import CharVocab
from omni.config import UserError
from omni.librispeech import prepare
from omni.ljspeech import prepare as prepare_ljspeech
from omni.paths import ROOT, repo_path
from omni.speech_data import (
    ANSWERS,
    TEST_ACCENTS,
    TEST_VARIANTS,
    build,
    normalize,
    plan,
    plan_one_voice,
    spoken_form,
    word_starts,
)
from omni.tts import Voice, WordEvent, english_accents, parse_voice, synthesize, voice_variants


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


TINY = dict(seed=3, train=6, val=2, test=4, workers=1, shards=1, answer_share=0.5)


@pytest.fixture(scope="module")
def tiny_speech(tmp_path_factory):
    """A data set of 12 clips, built twice with the same seed."""
    a, b = tmp_path_factory.mktemp("speech_a"), tmp_path_factory.mktemp("speech_b")
    return build(a, **TINY), build(b, **TINY)


def test_tts_speaks_at_16k_with_voices_from_the_data_folder():
    assert {"en", "en-us", "en-gb-scotland"} <= set(english_accents())
    assert {"m1", "f1", "klatt"} <= set(voice_variants())
    slow = synthesize("a small red circle", Voice("en-us", "m1", rate=120))
    fast = synthesize("a small red circle", Voice("en-us", "m1", rate=220))
    assert slow.dtype == np.float32 and 0.05 < np.abs(slow).max() <= 1.0
    assert 1.4 * len(fast) < len(slow) < 2.2 * len(fast)  # the rate is words per minute
    with pytest.raises(UserError, match="no voice variant"):
        synthesize("hello", Voice("en-us", "nobody"))
    with pytest.raises(UserError, match="no accent"):
        synthesize("hello", Voice("xx-nowhere", "m1"))


def test_normalize_keeps_words_and_inner_apostrophes():
    spoken = '"Mr. Knightley\'s twenty-one _very_ good--friends!"'
    assert normalize(spoken) == "mr knightley's twenty one very good friends"
    assert normalize("'Tis so,' said she.") == "tis so said she"


def test_data_command_writes_valid_manifests_with_unseen_test_voices(tiny_speech):
    paths, _ = tiny_speech
    vocab = CharVocab()
    rows = {split: read(p) for split, p in paths.items()}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [6 + 3, 2 + 1, 4 + 2]  # sentences + answers
    for split, part in rows.items():
        for r in part:
            assert set(r) == {"audio", "text", "speaker", "duration", "source"} and vocab.is_valid(r["text"])
            assert r["source"] in ("austen", "world", "answer")
            assert (r["source"] == "answer") == (r["text"] in ANSWERS and len(r["text"].split()) <= 2)
            wav, sr = sf.read(paths[split].parent / r["audio"])
            assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - r["duration"]) < 1e-3
            assert 0.15 < r["duration"] < 8
    train_voices = {r["speaker"] for r in rows["train"] + rows["val"]}
    test_voices = {r["speaker"] for r in rows["test"]}
    assert not train_voices & test_voices
    for v in test_voices:  # every test voice has a held-out accent or variant
        accent, variant = v.split("@")[0].split("+")
        assert accent in TEST_ACCENTS or variant in TEST_VARIANTS
    for v in train_voices:
        accent, variant = v.split("@")[0].split("+")
        assert accent not in TEST_ACCENTS and variant not in TEST_VARIANTS


def test_bare_answers_come_after_the_sentences_and_change_none_of_them():
    """The answer clips have a generator of their own and come last, so a set built with them holds
    the same sentence clips, spoken by the same voices in the same order, as one built without."""
    args = (3, {"train": 40, "val": 8, "test": 12}, 0.25, repo_path("data/austen"), TEST_ACCENTS, TEST_VARIANTS)
    without, with_answers = plan(*args), plan(*args, answer_share=0.25)
    assert with_answers[:len(without)] == without
    extra = with_answers[len(without):]
    assert [sum(c["split"] == s for c in extra) for s in ("train", "val", "test")] == [10, 2, 3]
    assert all(c["source"] == "answer" and c["spoken"] in ANSWERS for c in extra)
    for c in extra:  # test answers by unseen voices only, train and val answers by training voices
        assert (c["voice"].variant in TEST_VARIANTS) == (c["split"] == "test")


def test_data_command_is_deterministic_for_a_seed(tiny_speech):
    a, b = tiny_speech
    for split in a:
        assert a[split].read_text() == b[split].read_text()
        for r in read(a[split]):
            assert (a[split].parent / r["audio"]).read_bytes() == (b[split].parent / r["audio"]).read_bytes()


def test_data_command_leaves_a_finished_folder_alone(tiny_speech, capsys):
    folder = tiny_speech[0]["train"].parent
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.wav")}
    build(folder, **TINY)
    assert "already built with these settings" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in folder.rglob("*.wav")}


def test_feature_cache_is_written_once_and_reused(tiny_speech, monkeypatch):
    train = tiny_speech[0]["train"]
    first = load_speech_set(train, valid_text=CharVocab().is_valid)
    assert len(list((train.parent / ".cache").glob("train-*.pt"))) == 1
    monkeypatch.setattr(audio, "_compute", lambda *a: pytest.fail("features recomputed despite the cache"))
    again = load_speech_set(train, valid_text=CharVocab().is_valid)
    assert again.texts == first.texts and all(n > 15 for n in again.lengths)  # a bare answer: 0.2 s or more
    assert np.array_equal(again.features(0).numpy(), first.features(0).numpy())


def test_broken_files_and_bad_transcripts_are_counted_not_dropped_silently(tmp_path, capsys):
    sr = 16000
    sf.write(tmp_path / "good1.wav", 0.1 * np.sin(np.arange(sr) / 5), sr)
    sf.write(tmp_path / "good2.wav", 0.1 * np.sin(np.arange(sr // 2) / 3), sr)
    sf.write(tmp_path / "empty.wav", np.zeros(0), sr)
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio")
    rows = [("good1.wav", "hello there"), ("good2.wav", "hi"), ("empty.wav", "nothing"),
            ("garbage.wav", "noise"), ("missing.wav", "gone"), ("good1.wav", "Number 42!")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"audio": a, "text": t}) + "\n" for a, t in rows))
    s = load_speech_set(tmp_path / "m.jsonl", valid_text=CharVocab().is_valid, cache=False)
    assert s.texts == ["hello there", "hi"] and s.lengths == [100, 50]
    out = capsys.readouterr().out
    assert "2 of 6 clips usable" in out and "skipped 3 unreadable/empty audio" in out
    assert "1 with characters outside the vocabulary" in out


def test_all_broken_set_and_bad_manifest_line_are_user_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"audio": "missing.wav", "text": "gone"}) + "\n")
    with pytest.raises(UserError, match="no usable clip"):
        load_speech_set(tmp_path / "bad.jsonl", cache=False)
    (tmp_path / "notjson.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{oops\n')
    with pytest.raises(UserError, match=r"notjson.jsonl:2"):
        load_speech_set(tmp_path / "notjson.jsonl", cache=False)
    with pytest.raises(UserError, match="not found"):
        load_speech_set(tmp_path / "nowhere.jsonl")


def test_librispeech_layout_becomes_manifests_split_by_speaker(tmp_path):
    root = tmp_path / "LibriSpeech" / "train-clean-100"
    rng = np.random.default_rng(0)
    for spk in ("19", "26", "32", "40"):
        for chap in ("198", "495"):
            folder = root / spk / chap
            folder.mkdir(parents=True)
            lines = []
            for utt in range(2):
                uid = f"{spk}-{chap}-{utt:04d}"
                sf.write(folder / f"{uid}.flac", 0.1 * rng.standard_normal(8000 + 1600 * utt), 16000)
                lines.append(f"{uid} IT'S A TRUTH UNIVERSALLY ACKNOWLEDGED {utt}"[:-2])
            (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    paths = prepare(root, tmp_path / "out", val_fraction=0.25, test_fraction=0.25)
    rows = {s: read(p) for s, p in paths.items()}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    speakers = {s: {r["speaker"] for r in part} for s, part in rows.items()}
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])
    r = rows["train"][0]
    assert r["text"] == "it's a truth universally acknowledged" and r["duration"] in (0.5, 0.6)
    s = load_speech_set(paths["train"], valid_text=CharVocab().is_valid, cache=False)  # paths resolve
    assert len(s) == 8 and sorted(set(s.lengths)) == [50, 60]
    with pytest.raises(UserError, match="trans.txt"):
        prepare(tmp_path / "out", tmp_path / "out2")


ONE_VOICE = dict(seed=1, train=10, val=3, test=5, workers=1, shards=1, voice="en-us+m1", answer_copies=1)


def test_spoken_form_keeps_the_words_and_drops_what_shifts_espeaks_positions():
    for text in ('"Yes," said she, "it is."', "A house in town--that, she thought, must be impossible.",
                 "Ah!--so you say; but I cannot believe it.", "A quiet-looking young man.", "'Tis so,' said she."):
        spoken = spoken_form(text)
        assert normalize(spoken) == normalize(text) and not set(spoken) & set('"_-')
        assert all(len(normalize(w).split()) <= 1 for w in spoken.split())  # one token, one word
    assert spoken_form("Ah!--so you say") == "Ah! so you say"


def test_word_starts_match_events_to_words_and_refuse_what_does_not_match():
    spoken = "the square is on the left."  # eSpeak says "on the" as one unit: no event for "the"
    ev = [WordEvent(t, p, n) for t, p, n in [(0.0, 0, 3), (0.2, 4, 6), (0.6, 11, 2), (0.8, 14, 2), (1.2, 21, 4)]]
    assert word_starts(spoken, ev, 1.6) == [0.0, 0.2, 0.6, 0.8, 0.8, 1.2]  # "the" shares the start of "on"
    assert word_starts(spoken, ev[1:], 1.6) is None  # the first word has no start
    assert word_starts(spoken, ev, 1.1) is None  # a word starts after the clip ends
    shifted = ev[:3] + [WordEvent(0.8, 12, 2)] + ev[4:]  # eSpeak's position drift: inside "is" again
    assert word_starts(spoken, shifted, 1.6) is None
    swapped = ev[:2] + [WordEvent(0.9, 11, 2), WordEvent(0.8, 14, 2)] + ev[4:]  # starts must rise
    assert word_starts(spoken, swapped, 1.6) is None


@pytest.fixture(scope="module")
def one_voice(tmp_path_factory):
    return build(tmp_path_factory.mktemp("voice"), **ONE_VOICE)


def test_one_voice_set_has_word_timings_and_held_out_sentences(one_voice):
    rows = {split: read(p) for split, p in one_voice.items()}
    for split, part in rows.items():
        extra = len(ANSWERS) if split == "train" else 0  # the bare answers, once each (answer_copies=1)
        assert 0 < len(part) <= ONE_VOICE[split] + extra  # a clip whose events did not match is left out
        for r in part:
            assert set(r) == {"audio", "text", "speaker", "duration", "source", "words", "phonemes"}
            assert r["phonemes"] and all(a[0] <= b[0] for a, b in zip(r["phonemes"], r["phonemes"][1:]))
            assert r["speaker"] == "en-us+m1@r175p50" and len(r["words"]) == len(r["text"].split())
            assert r["words"][0] < 0.2 and r["words"][-1] < r["duration"]
            assert all(a <= b for a, b in zip(r["words"], r["words"][1:]))
            assert sf.info(str(one_voice[split].parent / r["audio"])).samplerate == 16000
    train = {r["text"] for r in rows["train"]}
    assert not train & {r["text"] for r in rows["val"] + rows["test"]}  # held out: never trained on
    assert sum(r["text"] in ANSWERS for r in rows["train"]) >= len(ANSWERS) - 2  # one-word clips may not match
    assert sum(r["source"] == "world" for r in rows["test"]) == 4  # round(0.8 * 5)
    with pytest.raises(UserError, match="ACCENT\\+VARIANT"):
        build(one_voice["train"].parent / "x", **{**ONE_VOICE, "voice": "en-us+nobody"})


def test_one_voice_build_prints_its_checks(tmp_path, capsys):
    build(tmp_path, **{**ONE_VOICE, "train": 4, "val": 1, "test": 2})
    out = capsys.readouterr().out
    assert "word timings:" in out and "skipped" in out and "share their start" in out
    assert "wav/train_000000.wav" in out  # an example clip with its word starts


def test_ljspeech_layout_becomes_manifests_with_stretched_word_timings(tmp_path, capsys):
    root = tmp_path / "LJSpeech-tiny"
    (root / "wavs").mkdir(parents=True)
    lines = ["LJ001-0001|Printing, in the only sense|Printing, in the only sense",
             "LJ001-0002|In 1469 he moved.|In fourteen sixty-nine he moved.",
             "LJ001-0003|The earliest book|", "LJ001-0004|The Mr. Smith case|The Mister Smith case",
             "LJ001-0005|A lost clip|A lost clip", "LJ001-0006|Noise|Noise", "LJ001-0007|   |"]
    for i, line in enumerate(lines[:4]):  # a real voice, slower than eSpeak's: the timings must stretch
        sf.write(root / "wavs" / f"{line.split('|')[0]}.wav",
                 synthesize(line.split("|")[1], Voice("en", "f1", rate=130)), 22050 if i % 2 else 16000)
    (root / "wavs" / "LJ001-0006.wav").write_bytes(b"not audio")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    paths = prepare_ljspeech(root, tmp_path / "out", every=3, workers=1)
    rows = {s: read(p) for s, p in paths.items()}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [1, 1, 2]  # ranks 0, 3 test; 1 val; 2 train
    by_text = {r["text"]: r for part in rows.values() for r in part}
    assert set(by_text) == {"printing in the only sense", "in fourteen sixty nine he moved",
                            "the earliest book", "the mister smith case"}  # the normalized field when given
    for r in by_text.values():
        assert set(r) == {"audio", "text", "speaker", "duration", "source", "words"}
        assert len(r["words"]) == len(r["text"].split()) and r["words"][-1] < r["duration"]
        assert all(a <= b for a, b in zip(r["words"], r["words"][1:]))
    out = capsys.readouterr().out
    assert "skipped 3: 1 empty transcript (e.g. LJ001-0007), 2 missing or unreadable wav" in out
    s = load_speech_set(paths["test"], valid_text=CharVocab().is_valid, cache=False)  # paths resolve
    assert len(s) == 2 and all(abs(n / 100 - by_text[t]["duration"]) < 0.02 for n, t in zip(s.lengths, s.texts))
    with pytest.raises(UserError, match="metadata.csv"):
        prepare_ljspeech(tmp_path / "out", tmp_path / "out2")


def test_one_voice_bare_answers_come_at_spread_rates_and_sentences_at_the_voice():
    voice = parse_voice("en-us+m1", 175, 50)
    sizes = {"train": 20, "val": 3, "test": 5}
    clips = plan_one_voice(1, voice, sizes, 0.25, 0.8, ROOT / "data/austen", answer_copies=4,
                           answer_rate_spread=15)
    answers = [c for c in clips if c["split"] == "train" and c["spoken"] in ANSWERS]
    assert len(answers) == 4 * len(ANSWERS)
    for a in ANSWERS:  # each answer once at 160, 170, 180 and 190 words per minute, same voice otherwise
        assert sorted(c["voice"].rate for c in answers if c["spoken"] == a) == [160, 170, 180, 190]
    assert {(c["voice"].name, c["voice"].pitch) for c in answers} == {(voice.name, voice.pitch)}
    assert all(c["voice"] == voice for c in clips if c["spoken"] not in ANSWERS)
    # the spread changes only the answers' voices: the sentences and the order stay as they were
    same = plan_one_voice(1, voice, sizes, 0.25, 0.8, ROOT / "data/austen", answer_copies=4, answer_rate_spread=0)
    assert [c["spoken"] for c in same] == [c["spoken"] for c in clips]
    assert {c["voice"] for c in same} == {voice}
