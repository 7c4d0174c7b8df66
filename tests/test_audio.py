"""The audio front end: log-mel against an independent NumPy computation, frame counts,
resampling, stereo mixdown, augmentation."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import FrontEndConfig, augment, load_audio, log_mel, mel_filterbank, pad_batch, resample


def numpy_log_mel(wav: np.ndarray, sr=16000, n_fft=400, hop=160, n_mels=80) -> np.ndarray:
    """The same features written independently with NumPy loops: (T, n_mels)."""
    def hz_to_mel(f):  # Slaney: 3 mels per 200 Hz below 1 kHz, then 27 mels per factor 6.4
        return f * 3 / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

    def mel_to_hz(m):
        return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    edges = [mel_to_hz(hz_to_mel(sr / 2) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= mid:
                fb[m, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[m, k] = (hi - f) / (hi - mid)
        fb[m] *= 2 / (hi - lo)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    padded = np.pad(wav, n_fft // 2, mode="reflect")
    n_frames = len(wav) // hop  # centred frames, the last one dropped
    frames = np.stack([padded[t * hop: t * hop + n_fft] * window for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, n_fft // 2 + 1)
    logmel = np.log10(np.maximum(power @ fb.T, 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 8)
    return (logmel + 4) / 4


def chirp(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    wav = 0.5 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.05 * rng.standard_normal(len(t))
    return wav.astype(np.float32)


def test_log_mel_matches_independent_numpy_computation():
    wav = chirp(1.3)
    ours = log_mel(wav).numpy()
    ref = numpy_log_mel(wav.astype(np.float64))
    assert ours.shape == ref.shape == (130, 80)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    assert ours.std() > 0.1  # real content, not a constant


def test_mel_filters_are_slaney_normalised_triangles():
    fb = mel_filterbank(80, 400, 16000).numpy()
    assert fb.shape == (80, 201) and (fb >= 0).all()
    # each triangle has unit area in Hz (height 2 / width): bins are 40 Hz apart
    wide = fb[40:]  # the upper filters span many bins, so the discrete sum is close to the area
    np.testing.assert_allclose(wide.sum(axis=1) * 40, 1.0, rtol=0.08)
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # centre frequencies rise with the band index


@pytest.mark.parametrize("seconds, frames", [(1.0, 100), (2.5, 250), (0.03, 3), (1.0101, 101)])
def test_frame_count_is_100_per_second(seconds, frames):
    assert log_mel(np.zeros(int(round(seconds * 16000)), np.float32) + 0.1).shape == (frames, 80)


@pytest.mark.parametrize("orig, new, freq", [(44100, 16000, 1000.0), (22050, 16000, 3000.0),
                                             (8000, 16000, 440.0), (48000, 16000, 6000.0)])
def test_resampling_a_sine_keeps_its_frequency_and_level(orig, new, freq):
    t = np.arange(orig) / orig  # one second
    y = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), orig, new)
    assert len(y) == new
    mid = y[new // 10: -new // 10]
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    peak_hz = spectrum.argmax() * new / len(mid)
    assert abs(peak_hz - freq) < 3
    assert np.sqrt((mid ** 2).mean()) == pytest.approx(1 / math.sqrt(2), rel=0.06)  # within 0.5 dB


def test_resampling_removes_what_the_new_rate_cannot_hold():
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 9000 * t).astype(np.float32), 22050, 16000)  # above 8 kHz Nyquist
    assert 20 * np.log10(np.sqrt((y[1600:-1600] ** 2).mean()) * math.sqrt(2)) < -45  # dB, was 0 dB


def test_load_audio_mixes_stereo_down_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 500 * t), 0.5 * np.sin(2 * np.pi * 500 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "stereo.wav", 16000)
    assert y.ndim == 1 and len(y) == 16000 and y.dtype == np.float32
    expected = 0.75 * np.sin(2 * np.pi * 500 * np.arange(16000) / 16000)  # the average of both channels
    np.testing.assert_allclose(y[100:-100], expected[100:-100], atol=2e-3)
    sf.write(tmp_path / "mono16k.wav", expected, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "mono16k.wav"), expected.astype(np.float32))


def test_augment_is_a_pure_function_of_the_generator():
    x = log_mel(chirp(1.0))
    kw = dict(speed=0.1, warp=0.1, freq_masks=2, freq_width=10, time_masks=2, time_width=20)
    a = augment(x, torch.Generator().manual_seed(7), **kw)
    b = augment(x, torch.Generator().manual_seed(7), **kw)
    c = augment(x, torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape[1] == 80 and 90 <= a.shape[0] <= 112  # time stretched by at most 10%
    assert torch.equal(augment(x, torch.Generator()), x)  # everything off: unchanged
    batch, lengths = pad_batch([a, x[:50]])
    assert batch.shape == (2, max(len(a), 50), 80) and lengths.tolist() == [len(a), 50]
    assert (batch[1, 50:] == 0).all() and torch.equal(batch[1, :50], x[:50])


def test_front_end_config_defaults_are_whisper_like():
    cfg = FrontEndConfig()
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels) == (16000, 400, 160, 80)
