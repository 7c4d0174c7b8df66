"""Config loading: defaults, JSON files, command-line overrides, and clear errors."""
import json
import subprocess
import sys

import pytest

from omni.config import UserError, parse_args
from omni.paths import ROOT
from train_text import DEBUG, TextStageConfig


def test_json_then_command_line(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"d_model": 64, "n_head": 4}, "train": {"lr": 0.002}}))
    cfg = parse_args(TextStageConfig, ["--config", str(f), "--train.lr=5e-4", "--model.n_layer", "3"])
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.train.lr) == (64, 3, 5e-4)
    assert cfg.train.max_steps == TextStageConfig().train.max_steps  # untouched default


def test_int_accepted_for_float_and_lists_parse():
    cfg = parse_args(TextStageConfig, ["--train.lr=1", '--data.prompts=["a", "b"]', "--resume", "auto"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.prompts == ["a", "b"] and cfg.train.resume == "auto"


def test_debug_applies_before_overrides():
    cfg = parse_args(TextStageConfig, ["--debug", "--train.max_steps=4"], DEBUG)
    assert cfg.model.d_model == DEBUG["model.d_model"] and cfg.train.max_steps == 4


@pytest.mark.parametrize("argv, words", [
    (["--model.d_modle=3"], ["model.d_modle", "did you mean 'model.d_model'"]),
    (["--train.max_steps=ten"], ["train.max_steps", "int"]),
    (["--train.max_steps=2.5"], ["train.max_steps", "int"]),
    (["--model.tie_embeddings=3"], ["model.tie_embeddings", "bool"]),
    (["--config", "configs/nope.json"], ["configs/nope.json", "not found"]),
    (["stray"], ["stray"]),
    (["--model.n_kv_head=3"], ["n_kv_head"]),
])
def test_mistakes_are_named(argv, words):
    with pytest.raises(UserError) as e:
        parse_args(TextStageConfig, argv)
    for w in words:
        assert w in str(e.value)


def test_a_bad_value_names_where_it_was_set(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"n_kv_head": 3}}))
    with pytest.raises(UserError, match=r"^.*c\.json: model\.n_kv_head: "):
        parse_args(TextStageConfig, ["--config", str(f)])
    f.write_text(json.dumps({"model": {"n_kv_head": 2}}))
    with pytest.raises(UserError, match=r"^command line: model\.n_kv_head: "):
        parse_args(TextStageConfig, ["--config", str(f), "--model.n_kv_head=3"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"lrr": 1.0}}))
    with pytest.raises(UserError, match=r"c\.json: unknown config key 'train\.lrr' \(did you mean 'train\.lr'"):
        parse_args(TextStageConfig, ["--config", str(f)])
    f.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        parse_args(TextStageConfig, ["--config", str(f)])


def test_script_prints_one_line_and_exits_2():
    r = subprocess.run([sys.executable, "train_text.py", "--train.lrr=1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: command line: unknown config key 'train.lrr' (did you mean 'train.lr'?)"]
    assert "Traceback" not in r.stderr + r.stdout
