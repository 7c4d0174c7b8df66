"""How much do a stage's numbers move with the seed? Train its config once per seed and tabulate
the headline metrics: each seed, then mean, min and max.

    python -m omni.seeds --stage C --seeds 1,2,3 --train.threads=1    # three tiny stage C runs
    python -m omni.seeds --stage A --seeds 1,2 --debug                 # the tool itself, in seconds

A single run's number is one draw: the seed picks the initial weights, the data order and the
augmentation, and on a small test set (600 clips, 1,000 pictures) that moves a percentage by a
point or more. The book quotes a headline number with its range over seeds, so a reader who gets
a different number on their machine can tell a normal draw from a broken set-up.

The stage (its training script, config and headline metrics) comes from `omni.pipeline.STAGES`,
so a new stage added there can be run here too. Each seed trains in its own run directory
(--out/seed_N) with `--resume auto`, so an interrupted sweep carries on where it stopped and a
finished seed is not trained again. Flags this tool does not know (`--debug`, `--train.lr=...`)
go to the stage script unchanged. The table is printed and written to --table.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omni.config import UserError, read_json, writable_dir
from omni.paths import ROOT, repo_path
from omni.pipeline import STAGES


def train_command(stage: str) -> list[str]:
    """The stage's training command in the pipeline: its last step that runs a .py script (for stage
    D the Talker, trained on the codec the pipeline made first)."""
    if stage not in STAGES:
        raise UserError(f"--stage {stage}: unknown stage (choose from {', '.join(STAGES)})")
    cmd = list([c for c in STAGES[stage].commands if c[0].endswith(".py")][-1])
    if "--resume" in cmd:  # each seed gets its own --resume auto
        del cmd[cmd.index("--resume"): cmd.index("--resume") + 2]
    return cmd


def format_table(title: str, seeds: list[int], metrics: list[dict],
                 columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: one row per headline metric, one column per seed, then mean, min, max.
    `columns` is the pipeline's [(metric key, label, format)]; a metric no run reported is left out."""
    width = max(len(label) for _, label, _ in columns)
    head = f"{'metric':<{width}}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds)
    lines = [title, head + f"{'mean':>10}{'min':>10}{'max':>10}"]
    for key, label, fmt in columns:
        if not all(key in m for m in metrics):
            continue
        values = [float(m[key]) for m in metrics]
        cells = [*values, statistics.fmean(values), min(values), max(values)]
        lines.append(f"{label:<{width}}" + "".join(f"{fmt.format(v):>10}" for v in cells))
    return "\n".join(lines) + "\n"


def run_seed(cmd: list[str], run_dir: Path, seed: int, extra: list[str]) -> dict:
    """Train one seed (output to run_dir/console.txt) and return its metrics.json."""
    full = [sys.executable, *cmd, *extra, f"--train.seed={seed}", f"--train.out_dir={run_dir}", "--resume", "auto"]
    log = run_dir / "console.txt"
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(full, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"seed {seed} failed (exit {r.returncode}, see {log}): {tail[0]}", code=1)
    metrics = read_json(run_dir / "metrics.json", "metrics file")
    print(f"seed {seed}: done in {time.time() - t0:.0f}s -> {run_dir} (console output in {log.name})", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, help=f"which stage: {', '.join(STAGES)}")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated values of train.seed")
    ap.add_argument("--config", default="", help="the stage's config file (default: the pipeline's tiny config)")
    ap.add_argument("--out", default="", help="parent of the per-seed run directories (default runs/seeds_STAGE)")
    ap.add_argument("--table", default="", help="where the table goes (default chapters/logs/seeds_STAGE.txt)")
    args, extra = ap.parse_known_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds}: expected whole numbers separated by commas, e.g. 1,2,3") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {args.seeds}: give at least two different seeds")
    cmd = train_command(args.stage)
    if args.config:
        cmd[cmd.index("--config") + 1] = args.config
    tag = args.stage.replace("-", "_")
    out = writable_dir(args.out or f"runs/seeds_{tag}")
    table_path = repo_path(args.table or f"chapters/logs/seeds_{tag}.txt")
    writable_dir(table_path.parent, "--table")  # fail now, not after an hour of training
    print(f"$ python {' '.join(cmd + extra)} --train.seed=N --train.out_dir={out}/seed_N --resume auto", flush=True)
    metrics = [run_seed(cmd, writable_dir(out / f"seed_{s}"), s, extra) for s in seeds]
    title = f"stage {args.stage}: python {' '.join(cmd + extra)}, train.seed = {', '.join(map(str, seeds))}"
    table = format_table(title, seeds, metrics, STAGES[args.stage].reports[-1][1])
    print(table, end="")
    table_path.write_text(table)
    print(f"table written to {args.table or table_path.relative_to(ROOT)}")
    return table


if __name__ == "__main__":
    from omni.config import cli

    cli(main)
