"""Device, precision and distributed set-up, chosen once per run.

- device "auto": cuda if there is one, then Apple's mps, then cpu.
- dtype "auto": bf16 autocast on a GPU that supports it, fp16 autocast with a gradient scaler on
  an older GPU, fp32 on cpu (bf16 matmuls on a CPU without AMX are many times slower than fp32, and
  with AMX the tiny models gain nothing: chapter 1) and on mps (its autocast is less mature).
  Weights always stay fp32; autocast runs the matmuls in low precision (the usual "mixed
  precision" recipe).
- `torchrun --nproc_per_node=N script.py ...` sets WORLD_SIZE/RANK/LOCAL_RANK: then each process
  takes one GPU (nccl backend), or with train.device=cpu or on a machine without CUDA runs on the
  CPU (gloo backend), and the training loop wraps the model in DistributedDataParallel.
- deterministic (on by default): on a GPU, ask PyTorch for its deterministic kernels (cuDNN's
  convolutions, index_add_ and scatter sums without atomics, cuBLAS with a fixed workspace), so that
  a run resumed from a checkpoint continues bit for bit, as it does on a CPU. Kernels that have no
  deterministic version (CTC's backward on CUDA, for one) warn once and run as they are. With
  train.compile the CPU needs it too: the C++ that torch.compile generates adds scatter sums (the
  token embedding's backward) with atomics across threads, so two runs on two threads drew other
  losses from step 40 on; in deterministic mode it does not.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from omni.config import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device  # where the model and batches live
    dtype: torch.dtype  # the autocast dtype (float32 means autocast is off)
    rank: int = 0  # this process's index among world_size processes
    world_size: int = 1  # number of processes (1 unless started with torchrun)

    @property
    def is_main(self) -> bool:
        """Only the main process prints, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def needs_scaler(self) -> bool:
        """fp16 has a narrow range: a gradient scaler keeps small gradients from underflowing."""
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: '{name}' asked for, but this machine has no CUDA GPU (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device: 'mps' asked for, but it is not available here (use auto or cpu)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UserError(f"train.device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"train.dtype: unknown dtype '{name}' (use auto, fp32, bf16 or fp16)")
    return DTYPES[name]


def make_deterministic() -> None:
    """Deterministic GPU kernels (see the module's docstring). cuBLAS reads its workspace setting when
    it starts, so this runs before the first matmul on the GPU."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def setup_runtime(device: str = "auto", dtype: str = "auto", deterministic: bool = True,
                  compiled: bool = False) -> Runtime:
    """Choose device and precision; join the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if pick_device(device).type == "cuda":  # one GPU per process
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"torchrun started more processes on this machine than it has GPUs "
                                f"({torch.cuda.device_count()}): use --nproc_per_node={torch.cuda.device_count()} "
                                "or fewer, or train.device=cpu")
            torch.cuda.set_device(local_rank)
            dev, backend = torch.device("cuda", local_rank), "nccl"
        else:
            dev, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
    else:
        rank, dev = 0, pick_device(device)
    if deterministic and (dev.type == "cuda" or compiled):
        make_deterministic()
    return Runtime(dev, pick_dtype(dtype, dev), rank, world_size)


def to_device(batch, device: torch.device, non_blocking: bool = True):
    """Move every tensor in a (nested) dict/list/tuple batch to `device` (non_blocking=False waits
    for each copy: a checkpoint must hold finished copies before it is written)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
