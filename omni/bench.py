"""How fast each stage's model trains on this machine, measured against the machine's own limit.

    python -m omni.bench                          # every stage at its tiny config, all cores
    python -m omni.bench --threads 1 --stages A   # stage A only (Thinker and GPT-2 rows), one thread
    python -m omni.bench --gpu-configs            # on a GPU: the *_gpu / small configs, bf16 autocast
    python -m omni.bench --toy                    # toy sizes, seconds: checks the set-up
    python -m omni.bench --compile --stages A     # every row through torch.compile (train.compile)
    python -m omni.bench --breakdown --stages A   # then where each step's time goes (CPU profiler)

Per row: one training step (forward, backward, AdamW step) on one batch at the config's shapes, timed
after warm-up; the median of several repeats. From it: units per second (tokens, seconds of audio,
pictures), the model FLOPs of the step (forward + backward, counted by torch.utils.flop_counter, causal
attention counted in full as usual), the achieved GFLOP/s, and that as a share of this machine's matmul
peak, which the command measures first: a large fp32 matmul on the same threads (bf16 on a GPU). This
share is model FLOPs utilisation (MFU, PaLM, Chowdhery et al. 2022, arXiv:2204.02311). Peak memory is the
growth of the process's resident memory over the row (CPU) or the largest allocation (GPU). "data %" is
the stage's get_batch time as a share of the step, when the stage's data is on disk (else "-": synthetic
batches of the same shapes are used, so the command runs on a fresh clone).

A row is a builder (a function returning a `Case`) plus one line in ROWS, both in omni/bench_rows.py.
Chapter: chapters/01_setup.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import flop_counter as fc

from omni import config
from omni.bench_rows import ROWS, VARIANTS, Case
from omni.config import cpu_threads
from omni.device import make_deterministic, pick_device, pick_dtype, to_device
from omni.paths import repo_path
from omni.trainer import compiled

# ---------------------------------------------------------------- measuring

MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")  # operator names
ATTENTION = "aten::_scaled_dot_product"  # the prefix of every attention kernel's name, forward and backward


def is_matmul(name: str) -> bool:
    """A matmul or a convolution (im2col, a matmul too): the kernels that can approach the peak."""
    return name in MATMULS or re.search(r"conv(olution|\d|_)", name) is not None  # mkldnn_convolution, ...


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of everything `fn` runs (see flops_by_op)."""
    return sum(flops_by_op(fn).values())


def flops_by_op(fn: Callable[[], None]) -> dict[str, int]:
    """FLOPs of everything `fn` runs, per operator ("aten::mm": ...), by torch.utils.flop_counter. Its
    registry misses CPU attention (a kernel of its own) and in-place addmm_ (the Thinker's chunked loss):
    both are added here. And every attention kernel is counted here with keys and values at the queries'
    head count: with grouped-query attention the kernels get the n_kv_head heads unrepeated, which the
    registry of PyTorch before 2.13 refuses (seen with 2.11 on a GPU machine), though each query head
    still does its full products."""
    def as_query_heads(q, kv):  # (B, H_kv, T, D) -> (B, H_q, T, D)
        return (*kv[:-3], q[-3], *kv[-2:])

    def attention(q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(q, as_query_heads(q, k), as_query_heads(q, v))

    def attention_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, q, as_query_heads(q, k), as_query_heads(q, v))

    def addmm_inplace(acc, m1, m2, *args, out_shape=None, **kwargs):  # acc += m1 @ m2, m1 (m, k), m2 (k, n)
        return 2 * m1[0] * m1[1] * m2[1]

    extra = {torch.ops.aten.addmm_: addmm_inplace}
    for kernel in ("flash_attention_for_cpu", "flash_attention", "efficient_attention", "cudnn_attention"):
        name = f"_scaled_dot_product_{kernel}"
        if hasattr(torch.ops.aten, name):  # each (q, k, v, ...) forward, (grad_out, q, k, v, ...) backward
            extra[getattr(torch.ops.aten, name)] = attention
            extra[getattr(torch.ops.aten, name + "_backward")] = attention_backward
    with fc.FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn()
    # the profiler's names for the same operators ("aten.mm" -> "aten::mm")
    return {str(op).replace(".", "::", 1): n for op, n in counter.get_flop_counts().get("Global", {}).items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> Callable[[], float]:
    """A function that times one large square matmul and returns its GFLOP/s: the most this machine's
    threads do on the best-shaped work there is."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up

    def once() -> float:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        return 2 * n ** 3 / (time.perf_counter() - t) / 1e9
    return once


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, from /proc (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> None:
    try:  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Row:
    """A row being measured: its model and optimizer on the device, ready for timed steps."""

    def __init__(self, name: str, case: Case, device: torch.device, dtype: torch.dtype, warmup: int,
                 compile_: bool = False):
        base = _rss_mb("VmRSS")
        _reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.name, self.case, self.device, self.dtype = name, case, device, dtype
        self.model = case.model.to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda" or compile_)
        self.batch = to_device(case.batch, device)
        self.train_model = compiled(self.model) if compile_ else self.model  # compiled in the first step
        for _ in range(max(warmup, 2 if compile_ else 0)):  # a compiled model's second step may compile again
            self.step()
        _sync(device)
        self.peak_mem_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" \
            else max(0.0, _rss_mb("VmHWM") - base)  # what the model, optimizer, batch and activations added
        self.op_flops = flops_by_op(lambda: self.forward_backward(self.model))  # the same FLOPs either way
        self.opt.zero_grad(set_to_none=True)
        self.times: list[float] = []
        self.data_times: list[float] = []

    @property
    def flops(self) -> int:
        return sum(self.op_flops.values())

    def forward_backward(self, model: torch.nn.Module) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.case.loss(model, self.batch)
        loss.backward()

    def step(self) -> None:
        self.forward_backward(self.train_model)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed_step(self) -> None:
        _sync(self.device)
        t = time.perf_counter()
        self.step()
        _sync(self.device)
        self.times.append(time.perf_counter() - t)
        if self.case.get_batch is not None:  # the stage's data path, timed right after its step
            t = time.perf_counter()
            self.case.get_batch(len(self.times))
            self.data_times.append(time.perf_counter() - t)

    def breakdown(self, peak: float, steps: int = 5) -> dict:
        """Where a step's time goes, by torch.profiler on the CPU, in ms per step: the matmul (and
        convolution) kernels, attention's, the optimizer (AdamW and zero_grad with all they call), and the
        rest: elementwise passes, the loss, the autograd engine, Python, and the profiler's own cost. From
        the FLOPs of each kind: the matmul kernels' own share of the peak, and the "ceiling", the share the
        step would reach if only its matmuls and attention took time."""
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                self.step()
            step_ms = (time.perf_counter() - t) * 1000 / steps
        parts, others = {"matmul": 0.0, "attention": 0.0, "optimizer": 0.0}, {}
        for e in prof.events():
            ms, name, parent = e.self_cpu_time_total / 1000 / steps, e.name, e
            while parent is not None and not parent.name.startswith("Optimizer."):
                parent = parent.cpu_parent
            kind = "optimizer" if parent is not None else "matmul" if is_matmul(name) \
                else "attention" if name.startswith(ATTENTION) else None
            if kind:
                parts[kind] += ms
            else:
                name = "fused kernels (torch.compile)" if name.startswith("## Call CompiledFxGraph") \
                    else name.removeprefix("autograd::engine::evaluate_function: ")  # the engine's share
                others[name] = others.get(name, 0.0) + ms
        matmul_flops = sum(n for op, n in self.op_flops.items() if is_matmul(op))
        heavy = parts["matmul"] + parts["attention"]
        return {"step_ms": step_ms, **{f"{k}_ms": v for k, v in parts.items()},
                "other_ms": step_ms - sum(parts.values()),
                "matmul_share_of_peak": matmul_flops / max(parts["matmul"], 1e-9) / 1e6 / peak,
                "ceiling_share_of_peak": self.flops / max(heavy, 1e-9) / 1e6 / peak,
                "others_ms": dict(sorted(others.items(), key=lambda kv: -kv[1]))}  # largest first

    def figures(self, peak: float) -> dict:
        step_s = statistics.median(self.times)
        data_s = statistics.median(self.data_times) if self.data_times else None
        gflops = self.flops / step_s / 1e9
        return {"row": self.name, "unit": self.case.unit, "units_per_s": self.case.units / step_s,
                "step_ms": step_s * 1000, "gflop_per_step": self.flops / 1e9, "gflop_per_s": gflops,
                "share_of_peak": gflops / peak, "peak_mem_mb": self.peak_mem_mb,
                "data_share": None if data_s is None else data_s / step_s,
                "params": sum(p.numel() for p in self.model.parameters())}


def format_table(result: dict) -> str:
    m = result["machine"]
    compiled_ = " | every row compiled (torch.compile)" if m.get("compile") else ""
    lines = [f"{m['device']} | {m['threads']} threads | matmul peak {m['peak_gflop_per_s']:.1f} GFLOP/s "
             f"({m['dtype']}) | load average {m['load_avg']:.2f} before the run{compiled_}",
             f"{'row':<10} {'units/s':>16} {'step ms':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} {'% peak':>7} "
             f"{'peak MB':>8} {'data %':>7}"]
    for r in result["rows"]:
        data = "-" if r["data_share"] is None else f"{100 * r['data_share']:.1f}"
        rate = f"{r['units_per_s']:,.0f} {r['unit']}"
        lines.append(f"{r['row']:<10} {rate:>16} {r['step_ms']:>8.1f} {r['gflop_per_step']:>10.2f} "
                     f"{r['gflop_per_s']:>8.1f} {100 * r['share_of_peak']:>7.1f} {r['peak_mem_mb']:>8.0f} {data:>7}")
    first: dict[str, dict] = {}  # in VARIANTS, a stage's first row is compared with its others
    for r in result["rows"]:
        stage = r["row"].split()[0]
        if stage in first and stage in VARIANTS:
            lines.append(f"{first[stage]['row']} vs {r['row']}: {first[stage]['units_per_s'] / r['units_per_s']:.2f}x "
                         f"the {r['unit']}/s, side by side")
        first.setdefault(stage, r)
    if any("breakdown" in r for r in result["rows"]):
        lines += ["", "where a step's time goes, ms (torch.profiler, its own cost in \"other\"; "
                  "ceiling: the % peak with only the matmuls and attention taking time)",
                  f"{'row':<10} {'step':>7} {'matmul':>7} {'(% peak)':>8} {'attention':>9} {'optimizer':>9} "
                  f"{'other':>7} {'ceiling %':>9}"]
        for r in result["rows"]:
            b = r["breakdown"]
            lines.append(f"{r['row']:<10} {b['step_ms']:>7.1f} {b['matmul_ms']:>7.1f} "
                         f"{100 * b['matmul_share_of_peak']:>8.1f} {b['attention_ms']:>9.1f} "
                         f"{b['optimizer_ms']:>9.1f} {b['other_ms']:>7.1f} {100 * b['ceiling_share_of_peak']:>9.1f}")
        for r in result["rows"]:
            largest = list(r["breakdown"]["others_ms"].items())[:5]
            lines.append(f"{r['row']}, largest others: "
                         + ", ".join(f"{name.removeprefix('aten::')} {ms:.1f}" for name, ms in largest))
    return "\n".join(lines)


def run_bench(stages: str = "", threads: int = 0, gpu_configs: bool = False, toy: bool = False,
              warmup: int = 3, repeats: int = 10, compile_: bool = False, breakdown: bool = False) -> dict:
    """Build every row of the chosen stages (letters, "" = all), then time them and the peak in rounds."""
    threads = cpu_threads(threads)
    torch.set_num_threads(threads)
    device = pick_device("auto" if gpu_configs else "cpu")
    dtype = pick_dtype("auto", device)
    wanted = [name for name, (stage, _) in ROWS.items() if not stages or stage in stages.upper().split(",")]
    if not wanted:
        raise config.UserError(f"--stages {stages}: no such stage (choose among "
                               f"{sorted({s for s, _ in ROWS.values()})})")
    if compile_:
        make_deterministic()  # as a compiled run does (train.deterministic, on by default)
    load = os.getloadavg()[0]
    peak_once = matmul_peak(device, dtype)
    rows = []
    for name in wanted:
        torch.manual_seed(0)
        rows.append(Row(name, ROWS[name][1](gpu_configs, toy), device, dtype, warmup, compile_))
    # Interleaved: each round times the peak matmul once and every row once, so a machine whose speed
    # drifts (other work starting or stopping) slows all rows alike and the ratios stay fair. The order
    # turns by one row each round, so no row always runs first, on caches the peak matmul has emptied.
    peaks = []
    for i in range(repeats):
        peaks.append(peak_once())
        for row in rows[i % len(rows):] + rows[:i % len(rows)]:
            row.timed_step()
    peak = statistics.median(peaks)
    figures = [row.figures(peak) for row in rows]
    if breakdown:
        for row, fig in zip(rows, figures):
            fig["breakdown"] = row.breakdown(peak)
    machine = {"device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
               "threads": threads, "dtype": str(dtype).removeprefix("torch."), "peak_gflop_per_s": peak,
               "load_avg": load, "torch": torch.__version__, "compile": compile_}
    return {"machine": machine, "rows": figures}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m omni.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = every core this process may use, or OMP_NUM_THREADS)")
    p.add_argument("--stages", default="", help="comma-separated stage letters, e.g. A,C (default: all)")
    p.add_argument("--json", default="runs/bench.json", help="where to write the figures as JSON")
    p.add_argument("--gpu-configs", action="store_true", help="the GPU configs, on the GPU, in bf16/fp16")
    p.add_argument("--toy", action="store_true", help="toy model sizes: checks the set-up in seconds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=10, help="timed steps; the median is reported")
    p.add_argument("--compile", action="store_true",
                   help="train every row through torch.compile, as --train.compile=true does (compiles first)")
    p.add_argument("--breakdown", action="store_true",
                   help="then profile each row: time in matmuls, attention, optimizer and the rest (CPU)")
    a = p.parse_args(argv)
    if a.gpu_configs and a.breakdown:
        raise config.UserError("--breakdown: reads the profiler's CPU times, so it runs without --gpu-configs "
                               "(on a GPU, use torch.profiler's CUDA activity yourself)")
    if a.gpu_configs and not torch.cuda.is_available():
        raise config.UserError("--gpu-configs: this machine has no CUDA GPU (leave the flag out on a CPU)")
    result = run_bench(a.stages, a.threads, a.gpu_configs, a.toy, a.warmup, max(1, a.repeats), a.compile,
                       a.breakdown)
    print(format_table(result))
    out = repo_path(a.json)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise config.UserError(f"--json {a.json}: cannot write there ({e.strerror}); choose another path") from None
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    config.cli(main)
