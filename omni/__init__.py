"""TinyOmni: the shared package behind the five stage scripts.

Importing it settles one thing for the whole process. PyTorch computes cos, sin, exp, log and sqrt
of float tensors on a CPU with MKL's vector math, which picks its code path the first time it is
called. When that first call runs on two threads at once, the second thread's half of the result
can come out of another code path, some values a last bit off: the RoPE cos table of the first model
a process built differed in rows 128-255 in 3 and 10 of 30 processes, and stage E then trained
another run (chapter 1, "Why resuming is exact"). One call on one thread first, below, makes every
later call take the same path.
"""
import torch

torch.cos(torch.zeros(1))  # MKL's vector math settles its code path here, on one thread
