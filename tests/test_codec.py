"""The codec: shapes of encode/decode, load_codec, the judge wrapper, and the codec phase of
train_talker.py end to end (with the judge), with exact resume and clear errors."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import FrontEndConfig
from omni.audio_encoder import AudioCTC, AudioEncoderConfig
from omni.codec import Codec, CodecConfig, load_codec, pad_mel, reconstruct
from omni.config import UserError
from omni.paths import ROOT
from omni.recogniser import load_recogniser
from tests.conftest import assert_resume_exact, run_stage

TINY = CodecConfig(channels=16, n_res=1, code_dim=8, n_codebooks=3, codebook_size=8)


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """A tiny voice set in the manifest format (tones and noise, 0.5-1.2 s, "world" sentences) and a
    random stage B checkpoint as the judge; returns the command-line flags that point at them."""
    root = tmp_path_factory.mktemp("voice")
    (root / "wav").mkdir()
    g = np.random.default_rng(0)
    words = ["a", "small", "red", "circle", "at", "the", "top", "is", "there", "blue", "square"]
    for split, n in (("train", 10), ("val", 3), ("test", 3)):
        rows = []
        for i in range(n):
            sec = g.uniform(0.5, 1.2)
            t = np.arange(int(16000 * sec)) / 16000
            wav = 0.3 * np.sin(2 * np.pi * g.uniform(150, 400) * t) + 0.02 * g.standard_normal(len(t))
            sf.write(root / "wav" / f"{split}_{i}.wav", wav.astype(np.float32), 16000)
            text = " ".join(g.choice(words, size=4))
            rows.append({"audio": f"wav/{split}_{i}.wav", "text": text, "speaker": "en-us+m1",
                         "duration": sec, "source": "world"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = AudioEncoderConfig(d_model=16, n_layer=1, n_head=2, d_ff=32)
    torch.manual_seed(0)
    torch.save({"config": {"model": dataclasses.asdict(enc), "audio": dataclasses.asdict(FrontEndConfig())},
                "model": AudioCTC(enc).state_dict()}, root / "judge.pt")
    return [f"--data.{s}={root / s}.jsonl" for s in ("train", "val", "test")] + [f"--data.judge={root / 'judge.pt'}"]


def test_encode_decode_shapes_and_bitrate():
    torch.manual_seed(0)
    codec = Codec(TINY).eval()
    mel = torch.randn(2, 36, 80)
    codes = codec.encode(mel)
    assert codes.shape == (2, 9, 3) and codes.dtype == torch.long and codes.max() < 8
    assert codec.decode(codes).shape == (2, 36, 80)
    assert codec.decode(codes[..., :1]).shape == (2, 36, 80)  # fewer codebooks decode too
    assert codec.bitrate == 25 * 3 * 3
    with pytest.raises(ValueError, match="multiple of 4"):
        codec.encode(torch.randn(1, 37, 80))
    mel = torch.randn(37, 80)
    padded = pad_mel(mel)
    assert padded.shape == (40, 80) and torch.equal(padded[:37], mel)
    assert torch.equal(padded[37:], mel[-1:].expand(3, 80))  # the last frame held, no drop to silence
    assert torch.equal(pad_mel(mel[:36]), mel[:36])
    recon, per_clip = reconstruct(codec, [torch.randn(37, 80), torch.randn(12, 80)])
    assert [r.shape for r in recon] == [(37, 80), (12, 80)] and [c.shape for c in per_clip] == [(10, 3), (3, 3)]


def test_training_forward_learns_only_with_gradients():
    torch.manual_seed(0)
    codec = Codec(TINY).train()
    mel = torch.randn(4, 32, 80)
    codec.encode(mel)  # no_grad: the codebooks stay as they are, even in train mode
    assert codec.rvq.initted == 0
    y, codes, extra = codec(mel)
    assert codec.rvq.initted == 1 and y.shape == mel.shape and extra["commit"] > 0


def test_codec_phase_debug_runs_end_to_end_in_a_subprocess(tmp_path, voice):
    r = subprocess.run([sys.executable, "train_talker.py", "--debug", f"--train.out_dir={tmp_path}", *voice],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "judge CER on world test clips: original" in r.stdout and "bits/s" in r.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val_l1", "test_l1", "test_l1_1cb", "ppl_1", "dead_1", "cer_original", "cer_vocoder",
            "cer_codec", "bitrate", "step"} <= set(metrics)
    assert metrics["step"] == 6 and metrics["val_l1"] > 0 and metrics["bitrate"] == 25 * 4 * 4
    for name in ("codec_0.wav", "vocoder_0.wav", "codec_spectrograms.png", "codebooks.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    codec = load_codec(str(tmp_path / "best.pt"))
    assert not codec.training and codec.cfg.codebook_size == 16
    assert codec.encode(torch.randn(1, 20, 80)).shape == (1, 5, 4)


def test_codec_phase_resume_is_exact(tmp_path, voice):
    assert_resume_exact("train_talker", tmp_path, *voice)


def test_judge_transcribes_and_wrong_checkpoints_are_one_clear_line(tmp_path, voice):
    judge = load_recogniser(voice[-1].split("=", 1)[1])
    hyps = judge.transcribe([np.zeros(8000, np.float32), 0.1 * np.ones(16000, np.float32)])
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    torch.save({"config": {}, "model": {"x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="needs a stage D-codec checkpoint"):
        load_codec(str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="needs a stage B checkpoint"):
        load_recogniser(str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="phase"):
        run_stage("train_talker", tmp_path / "run", *voice, "--phase=vocoder")
