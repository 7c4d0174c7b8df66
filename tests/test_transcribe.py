"""python -m omni.transcribe: any sample rate, stereo folded to mono, one line per bad file."""
import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from omni import transcribe
from omni.audio import FrontEndConfig
from omni.audio_encoder import AudioCTC, AudioEncoderConfig
from omni.config import UserError


@pytest.fixture
def stage_b_checkpoint(tmp_path):
    """A randomly initialised toy recogniser saved the way stage B saves one (the transcripts are
    nonsense; what is tested is the path from a file to them)."""
    torch.manual_seed(0)
    model_cfg = AudioEncoderConfig(d_model=32, n_layer=1, n_head=2, d_ff=64)
    path = tmp_path / "best.pt"
    torch.save({"stage": "B", "model": AudioCTC(model_cfg).state_dict(),
                "config": {"audio": dataclasses.asdict(FrontEndConfig()), "model": dataclasses.asdict(model_cfg)}},
               path)
    return path


def _tone(sr: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_a_44k_stereo_file_is_resampled_and_folded_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left = _tone(44100)
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), 44100, subtype="FLOAT")
    wav = transcribe.read_clip(path, 16000)
    assert wav.ndim == 1 and abs(len(wav) - 16000) <= 1  # one second at the model's rate
    spectrum = np.abs(np.fft.rfft(wav[1000:-1000]))
    assert abs(np.argmax(spectrum) * 16000 / len(wav[1000:-1000]) - 440) < 2  # still a 440 Hz tone
    assert 0.2 < np.abs(wav[1000:-1000]).max() < 0.3  # the mean of the tone and a silent channel


def test_cli_transcribes_good_files_and_names_each_bad_one(tmp_path, stage_b_checkpoint, capsys):
    good = tmp_path / "clip.flac"
    sf.write(good, np.stack([_tone(22050), _tone(22050)], axis=1), 22050)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    files = [str(good), str(broken), str(empty), str(tmp_path / "missing.wav")]
    with pytest.raises(UserError, match="3 of 4 files could not be transcribed"):
        transcribe.main([str(stage_b_checkpoint), *files])
    out, err = capsys.readouterr()
    rec = transcribe.load_recogniser(str(stage_b_checkpoint))
    expected = rec.transcribe([transcribe.read_clip(good, 16000)])[0]
    assert out == f"{good}: {expected}\n"
    assert f"{broken}: cannot read this audio file" in err
    assert f"{empty}: 0 ms of audio, too short" in err
    assert "missing.wav: file not found" in err
    assert len(err.strip().splitlines()) == 3  # one line each, no traceback


def test_other_synth_without_flite_is_one_clear_line(tmp_path, stage_b_checkpoint, monkeypatch):
    monkeypatch.setattr(transcribe.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="needs the flite synthesizer"):
        transcribe.main([str(stage_b_checkpoint), "--other-synth", "4", "--synth-out", str(tmp_path / "o")])
