"""The seeds tool: one run per seed, then a table of each seed's headline metrics and their spread."""
import json
import statistics

import pytest

from omni import seeds
from omni.config import UserError


def test_two_debug_seeds_make_a_table_that_matches_their_runs(tmp_path, capsys):
    table_path = tmp_path / "logs" / "seeds_A.txt"
    table = seeds.main(["--stage", "A", "--seeds", "3,4", "--out", str(tmp_path / "runs"),
                        "--table", str(table_path), "--debug", "--train.threads=1"])
    assert table_path.read_text() == table and table in capsys.readouterr().out
    runs = [json.loads((tmp_path / "runs" / f"seed_{s}" / "metrics.json").read_text()) for s in (3, 4)]
    assert runs[0]["bpb"] != runs[1]["bpb"]  # the seed reached the run: the two draws differ
    row = next(line for line in table.splitlines() if line.startswith("held-out bits per byte"))
    bpb = [r["bpb"] for r in runs]
    want = [*bpb, statistics.fmean(bpb), min(bpb), max(bpb)]
    assert row.split()[-5:] == [f"{v:.3f}" for v in want]
    assert "seed 3" in table.splitlines()[1] and "seed 4" in table.splitlines()[1]


def test_seed_flags_are_checked_before_any_training(tmp_path):
    with pytest.raises(UserError, match="unknown stage"):
        seeds.main(["--stage", "Z", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="at least two different seeds"):
        seeds.main(["--stage", "A", "--seeds", "1,1", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="whole numbers"):
        seeds.main(["--stage", "A", "--seeds", "1,x", "--out", str(tmp_path)])


def test_format_table_leaves_out_a_metric_no_run_reported():
    cols = [("acc", "accuracy", "{:.1%}"), ("cer", "CER", "{:.1%}")]
    table = seeds.format_table("t", [1, 2], [{"acc": 0.9}, {"acc": 1.0}], cols)
    assert table.splitlines()[2].split()[1:] == ["90.0%", "100.0%", "95.0%", "90.0%", "100.0%"]
    assert "CER" not in table
