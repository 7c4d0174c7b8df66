"""omni.chat's user mistakes are one clear line; an answer with no words is not spoken. (The chat
answering from a trained stage E checkpoint is checked in tests/test_omni.py, after its debug run.)"""
import subprocess
import sys

import pytest

from omni.chat import speak_answer
from omni.paths import ROOT


@pytest.mark.parametrize("args, said", [
    (["--text", "hi", "--tokens", "0"], "error: --tokens 0: give at least 1"),
    (["--text", "hi", "--checkpoint", "runs/nope/best.pt"], "error: runs/nope/best.pt: checkpoint not found"),
])
def test_mistakes_are_one_clear_line(args, said):
    r = subprocess.run([sys.executable, "-m", "omni.chat", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == said


def test_an_answer_without_words_is_not_spoken(tmp_path, capsys):
    talker = tmp_path / "talker.pt"
    talker.write_bytes(b"")  # never read: there is nothing to say
    assert speak_answer("?! 42", str(talker), "no_recogniser.pt", str(tmp_path / "a.wav"), 0.0) is None
    assert "spoken answer: none (no words to say in '?! 42')" in capsys.readouterr().out
    assert not (tmp_path / "a.wav").exists()
