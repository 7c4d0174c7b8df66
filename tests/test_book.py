"""The book stays true to the code.

- Every script, module, config file and figure the README and chapters name exists.
- Every `--flag` and dotted config key they name is a real key of some stage's config.
- Every block of program output is real: a fenced block right after a marker line
  `<!-- output: chapters/logs/NAME.txt -->` must consist of lines of that log file, the saved
  console output of a real run ("..." stands for lines left out).
"""
from __future__ import annotations

import dataclasses
import importlib
import re

import pytest

from omni.paths import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "chapters").glob("*.md"))]
STAGE_SCRIPTS = ["train_text", "train_audio_enc", "train_vision", "train_talker", "sft_omni"]
# flags of the omni.* commands (argparse)
OTHER_FLAGS = {"config", "resume", "debug", "stages", "prompt", "tokens", "temperature", "top_k", "seed",
               "out", "root", "captions", "images", "help", "key", "nproc_per_node",
               "json", "image", "audio", "text", "checkpoint", "talker", "demo", "voice", "other-synth", "seeds",
               "stage", "answer-share", "answer-rate-spread", "gpu-configs", "train-voices", "compile",
               "breakdown"}
RUN_FILES = {"config.json", "curves.png", "meta.json", "metrics.json", "log.jsonl"}  # written into run dirs


def _keys(cls, prefix=""):
    out = set()
    for f in dataclasses.fields(cls):
        sub = getattr(cls(), f.name)
        out |= _keys(type(sub), f"{prefix}{f.name}.") if dataclasses.is_dataclass(sub) else {prefix + f.name}
    return out


def _all_config_keys() -> set[str]:
    keys = set()
    for name in STAGE_SCRIPTS:
        if (ROOT / f"{name}.py").exists():
            mod = importlib.import_module(name)
            cls = next(v for k, v in vars(mod).items() if k.endswith("StageConfig"))
            keys |= _keys(cls)
    return keys


def _text(doc):
    return doc.read_text()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_files_exist(doc):
    text = _text(doc)
    names = set(re.findall(r"\b([\w/.-]+\.(?:py|json|md|png|txt))\b", text))
    names |= {m.replace(".", "/") + ".py" for m in re.findall(r"python -m (omni[\w.]*)", text)}
    names -= RUN_FILES
    missing = []
    for n in names:
        if n.startswith(("runs/", "data/", "http")) or "*" in n:
            continue  # made by running the code, not part of the repository
        if not any(p.exists() for p in (ROOT / n, doc.parent / n, ROOT / "chapters" / n)):
            missing.append(n)
    assert not missing, f"{doc.name} names files that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_flags_and_keys_exist(doc):
    text = re.sub(r"<!-- output: \S+ -->\s*\n```.*?```", "", _text(doc), flags=re.S)  # logs may show mistakes
    keys = _all_config_keys()
    flags = set(re.findall(r"(?<![\w-])--([a-z_][\w.-]*[\w.]|[a-z_])", text))
    dotted = set(re.findall(r"`((?:data|model|train|audio|vision|text|codec|talker)\.[a-z_]+)`", text))
    bad = sorted(f for f in flags if f not in OTHER_FLAGS and f not in keys)
    bad += sorted(k for k in dotted if k not in keys)
    assert not bad, f"{doc.name} names flags or config keys that no stage has: {bad}"


def _output_blocks(text):
    for m in re.finditer(r"<!-- output: (\S+) -->\s*\n```[a-z]*\n(.*?)```", text, re.S):
        yield m.group(1), m.group(2)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_output_blocks_come_from_real_logs(doc):
    for log_name, block in _output_blocks(_text(doc)):
        log = ROOT / log_name
        assert log.exists(), f"{doc.name}: output log {log_name} is missing"
        lines = {line.rstrip() for line in log.read_text().splitlines()}
        for line in block.splitlines():
            if line.strip() and line.strip() != "...":
                assert line.rstrip() in lines, f"{doc.name}: line not in {log_name}: {line!r}"


def test_every_chapter_is_in_the_index():
    index = (ROOT / "chapters" / "README.md").read_text()
    for p in sorted((ROOT / "chapters").glob("*.md")):
        if p.name != "README.md":
            assert f"({p.name})" in index, f"chapters/README.md does not link {p.name}"


def test_runs_table_matches_its_logs():
    """Chapter 10's table of main-job runs: each row's matmul peaks, wall clock and stage times are
    the ones its log printed (the whole log, and the summary beside it where the peaks went)."""
    rows = re.findall(r"^\| (\d+) \| [^|]+ \| (\d+) -> (\d+) \| (\d+) s \| ((?:\d+ \| ){6})[^|]+\| `logs/(\S+)` \|$",
                      (ROOT / "chapters" / "10_main_job_runs.md").read_text(), re.M)
    assert len(rows) >= 26, "chapter 10's table of runs is missing rows"
    for run, before, after, wall, times, name in rows:
        full = (ROOT / "chapters" / "logs" / name).read_text()
        text = full + (ROOT / "chapters" / "logs" / name.replace("full_run", "summary")).read_text()
        assert re.search(rf"before: matmul peak.*: {before} GFLOP/s", text), f"run {run}: peak before"
        assert re.search(rf"after: matmul peak.*: {after} GFLOP/s", text), f"run {run}: peak after"
        assert f"wall clock, install included: {wall}s" in text, f"run {run}: wall clock"
        expected = [x.strip() for x in times.split("|") if x.strip()]
        assert re.findall(r"^held-out.*\| (\d+)s$", full, re.M) == expected, f"run {run}: stage times"
