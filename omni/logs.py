"""Run logs: every logged value goes to `log.jsonl` (one JSON object a line, easy to read with
any tool), and the curves PNG is drawn from that file alone, so it can be redrawn any time:

    python -m omni.logs runs/thinker_tiny
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


class JsonlLog:
    """Appends records to log.jsonl. On resume, records after the resumed step are dropped first,
    so the log reads as one continuous run."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in keep))
        else:  # resumed in a run directory whose log was lost: it starts again here
            print(f"{path}: not found; a new log starts at step {resume_step}, so the curves start there too")
            path.write_text("")

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """One panel for the training loss and one per held-out metric, against the step."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    records = read_log(run_dir / "log.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    metrics = sorted({k for r in evals for k in r if k not in ("kind", "step", "time")})
    others = [m for m in metrics if m != "loss"]  # "loss" shares the first panel with the train loss
    n = 1 + len(others)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    # constrained layout leaves room for the run name above the panels (tight_layout lets them overlap)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train")
    if "loss" in metrics:
        ax.plot([r["step"] for r in evals if "loss" in r], [r["loss"] for r in evals if "loss" in r],
                "o-", ms=3, label="held-out")
    ax.set_title("loss")
    ax.set_xlabel("step")
    ax.legend()
    for i, m in enumerate(others, start=1):
        ax = axes[i // cols][i % cols]
        pts = [(r["step"], r[m]) for r in evals if m in r]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", ms=3)
        ax.set_title(m)
        ax.set_xlabel("step")
    for j in range(1 + len(others), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(run_dir.name)
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    from omni.paths import repo_path

    for arg in sys.argv[1:] or ["runs/thinker_tiny"]:
        print(plot_curves(repo_path(arg)))
