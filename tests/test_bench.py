"""The benchmark: it runs at toy size and prints every column with positive figures; its FLOP count of
one small Thinker matches a count by hand; its errors are one clear line."""
import json
import os

import pytest
import torch

from omni import bench
from omni.bench_rows import Case
from omni.config import UserError
from omni.thinker import Thinker, ThinkerConfig


def test_toy_bench_prints_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(["--toy", "--threads", "1", "--warmup", "1", "--repeats", "2", "--json", str(out)])
    table = capsys.readouterr().out
    for column in ("units/s", "step ms", "GFLOP/step", "GFLOP/s", "% peak", "peak MB", "data %"):
        assert column in table
    assert [r["row"] for r in result["rows"]] == list(bench.ROWS)
    assert result["machine"]["peak_gflop_per_s"] > 0 and result["machine"]["threads"] == 1
    for r in result["rows"]:
        assert r["row"] in table
        for key in ("units_per_s", "step_ms", "gflop_per_step", "gflop_per_s", "share_of_peak", "params"):
            assert r[key] > 0, (r["row"], key)
        assert r["peak_mem_mb"] >= 0
    assert result["rows"][0]["data_share"] > 0  # stage A times its get_batch (synthetic ids, same work)
    assert json.loads(out.read_text())["rows"][0]["row"] == "A thinker"
    assert {r["row"].split()[0] for r in result["rows"]} == set("ABCDE")  # every stage has a row
    assert "A thinker vs A gpt2" in table and "D codec vs" not in table  # only variants of one model compare


def test_stage_filter_and_errors(tmp_path):
    result = bench.run_bench("C", threads=1, toy=True, warmup=0, repeats=1)
    assert [r["row"] for r in result["rows"]] == ["C vision"]
    with pytest.raises(UserError, match="--stages"):
        bench.run_bench("Z", threads=1, toy=True)


def test_compiled_rows_count_the_same_flops(tmp_path, capsys):
    """--compile times each row through torch.compile (as train.compile does); the FLOPs are the model's."""
    plain = bench.run_bench("A", threads=1, toy=True, warmup=0, repeats=1)
    try:
        result = bench.main(["--toy", "--compile", "--stages", "A", "--threads", "1", "--warmup", "1",
                             "--repeats", "2", "--json", str(tmp_path / "bench.json")])
    finally:
        torch.use_deterministic_algorithms(False)  # --compile switched it on, as a compiled run does
    assert "every row compiled (torch.compile)" in capsys.readouterr().out and result["machine"]["compile"]
    assert [r["gflop_per_step"] for r in result["rows"]] == [r["gflop_per_step"] for r in plain["rows"]]
    assert all(r["units_per_s"] > 0 for r in result["rows"])


def test_breakdown_puts_each_kernel_in_its_kind(capsys):
    """--breakdown splits a profiled step into matmuls, attention, optimizer and the rest. A model of one
    linear layer and a sum: its matmuls land in "matmul" with every FLOP of the step, nothing in
    attention, the sum among the others. The Thinker's toy row has attention, and nothing double counts
    (the other time, what the three kinds leave of the step, is not negative)."""
    case = Case(torch.nn.Linear(64, 96), (torch.randn(256, 64),), lambda model, b: model(*b).sum(), 256, "row")
    row = bench.Row("linear", case, torch.device("cpu"), torch.float32, warmup=1)
    b = row.breakdown(peak=100.0, steps=2)
    assert b["matmul_ms"] > 0 and b["attention_ms"] == 0 and b["optimizer_ms"] > 0 and b["other_ms"] >= 0
    assert "aten::sum" in b["others_ms"] and not any(bench.is_matmul(name) for name in b["others_ms"])
    # every FLOP of a linear layer is a matmul's: the matmul kernels' share of the peak is the ceiling's
    assert b["matmul_share_of_peak"] == pytest.approx(b["ceiling_share_of_peak"], rel=0.01)

    result = bench.main(["--toy", "--breakdown", "--stages", "A", "--threads", "1", "--warmup", "1",
                         "--repeats", "1", "--json", os.devnull])
    table = capsys.readouterr().out
    assert "where a step's time goes" in table and "A thinker, largest others: " in table
    for r in result["rows"]:
        b = r["breakdown"]
        assert b["matmul_ms"] > 0 and b["attention_ms"] > 0 and b["other_ms"] >= 0, r["row"]
    with pytest.raises(UserError, match="--breakdown"):
        bench.main(["--toy", "--breakdown", "--gpu-configs"])


def test_gpu_configs_build_and_step_every_row():
    """`--gpu-configs` builds its rows from the *_gpu / small configs (the Talker's conditions on the
    Thinker's hidden states there, which needs a Thinker in the row). Toy sizes keep their choices, so
    a CPU checks that each row builds and steps; on a CUDA machine the same call would time them."""
    result = bench.run_bench("", threads=1, gpu_configs=True, toy=True, warmup=0, repeats=1)
    assert [r["row"] for r in result["rows"]] == list(bench.ROWS)
    assert all(r["units_per_s"] > 0 and r["gflop_per_step"] > 0 for r in result["rows"])


@pytest.mark.parametrize("loss_chunk", [0, 8])  # the chunked loss runs its matmuls itself: same count
def test_flops_match_hand_count(loss_chunk):
    """Forward + backward of a small Thinker, counted by hand. Every linear layer (q/k/v, o, gate/up,
    down, head) costs 2 FLOPs per weight per token forward, and 4 backward (gradient of its input and
    of its weight): 6 per weight per token. Attention per layer and head: forward q @ k.T and p @ v,
    2 * T * T * hd each; backward recomputes q @ k.T and runs four more products of that size."""
    B, T, d, L, H, kv, V, ffn = 2, 16, 32, 2, 4, 2, 61, 64
    cfg = ThinkerConfig(vocab_size=V, d_model=d, n_layer=L, n_head=H, n_kv_head=kv, ffn_hidden=ffn,
                        max_seq_len=T, loss_chunk=loss_chunk)
    model = Thinker(cfg)
    idx, tgt = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    hd = d // H
    linear = L * (d * (H + 2 * kv) * hd + H * hd * d + 3 * d * ffn) + d * V  # weights in matmuls
    attention = L * B * H * (2 + 5) * 2 * T * T * hd
    expected = 6 * B * T * linear + attention

    def step():
        model(idx, tgt)[1].backward()

    assert bench.count_flops(step) == expected


def test_grouped_query_attention_counts_as_full_attention():
    """Keys and values shared by query heads (enable_gqa) do the same products per query head as
    repeated keys and values: the count must match, forward and backward, when the kernel is given the
    unrepeated heads (PyTorch 2.11's own count refused them: the bench failed so on a GPU machine)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 16, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, 16, 8, generator=g, requires_grad=True) for _ in range(2))

    def step(repeat: bool):
        if repeat:
            kk, vv = (t.repeat_interleave(3, dim=1) for t in (k, v))
            y = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True)
        else:  # the kernel itself, given 2 key/value heads for 6 query heads, as on a GPU
            y = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]
        y.sum().backward()

    full = 2 * (2 * 2 * 6 * 16 * 16 * 8)  # q @ k^T and attn @ v, every (query, key) pair of every head
    assert bench.count_flops(lambda: step(True)) == bench.count_flops(lambda: step(False)) >= 3 * full


def test_threads_zero_means_every_core_we_may_use(monkeypatch):
    from omni.config import cpu_threads

    assert cpu_threads(3) == 3  # an explicit train.threads wins
    assert cpu_threads(0) == 1  # the test fixture sets OMP_NUM_THREADS=1, as a shared machine should
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(0) == len(os.sched_getaffinity(0))


def test_train_threads_hold_from_the_start_of_a_stage():
    """The stage's data work (features, codec codes, encoder features) runs before the training loop,
    so config.run must apply train.threads before main; otherwise a run told to use one thread
    prepares its data on every core and two such runs side by side fight over them."""
    import torch

    from omni import config
    from train_text import TextStageConfig

    before = torch.get_num_threads()
    try:
        seen = config.run(lambda cfg: torch.get_num_threads(), TextStageConfig, argv=["--train.threads=3"])
        assert seen == 3
    finally:
        torch.set_num_threads(before)
