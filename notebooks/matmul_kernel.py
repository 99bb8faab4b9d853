"""A faster `x @ w.T` for the weight matmuls on CPUs with AVX-512 BF16, bit for bit torch's.

llama3.linear calls `linear` here first; `None` means "use torch". The kernel
(scripts/bf16_linear.cpp, built by `make setup` into build/bf16_linear.so) is used only when

- the library was built and this CPU has AVX-512 BF16,
- the call is a bfloat16 matmul of at most 64 rows against a weight of at least 1024 columns
  (the 8B shapes; the demo's small matrices stay with torch), and
- for this number of rows and columns, a check has shown the kernel gives exactly torch's
  result: it measures how many products torch adds before starting a new partial sum, then
  compares both on random and on adversarial inputs.

Set LLAMA3_MATMUL=torch to switch it off.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

LIBRARY = Path(__file__).resolve().parent.parent / "build" / "bf16_linear.so"
MIN_COLUMNS = 1024
MAX_ROWS = 64
PROBE_ROWS = 16  # weight rows when measuring the run length (torch's blocking here does not depend on them)
CHECK_ROWS = 32  # weight rows when comparing results: two tiles of 16 outputs

_lib = None
_status = None  # why the kernel is or is not in use, once looked at
_run_length: dict[tuple[int, int], int | None] = {}  # (rows, columns) -> run length, None if unusable


def _load() -> None:
    global _lib, _status
    if _status is not None:
        return
    if os.environ.get("LLAMA3_MATMUL", "").lower() == "torch":
        _status = "torch (LLAMA3_MATMUL=torch)"
    elif not LIBRARY.exists():
        _status = f"torch ({LIBRARY.name} not built: x86-64 with g++ only)"
    else:
        try:
            lib = ctypes.CDLL(str(LIBRARY))
        except OSError as e:
            _status = f"torch ({LIBRARY.name} did not load: {e})"
            return
        lib.bf16_linear.restype = ctypes.c_int
        lib.bf16_linear.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
        if not lib.bf16_linear_supported():
            _status = "torch (this CPU has no AVX-512 BF16)"
        else:
            _lib = lib
            _status = "bf16 kernel for large weights, checked equal to torch"


def backend() -> str:
    """Which code runs the weight matmuls, and why."""
    _load()
    return _status


def available() -> bool:
    """Whether the kernel can run here (each shape is still checked against torch before use)."""
    _load()
    return _lib is not None


def _kernel(x: torch.Tensor, w: torch.Tensor, run: int) -> torch.Tensor | None:
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.bfloat16)
    rc = _lib.bf16_linear(x.data_ptr(), w.data_ptr(), out.data_ptr(), x.shape[0], w.shape[0], x.shape[1], run)
    return out if rc == 0 else None


def _torch_run_length(rows: int, columns: int) -> int | None:
    """How many inputs torch sums into one partial sum: 1 + 2**24 - 2**24 is 0 inside a run, 1 across."""
    x = torch.ones(rows, columns, dtype=torch.bfloat16)
    for run in (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        if run + 3 > columns:
            return 1 << 30  # one run over all the columns
        w = torch.zeros(PROBE_ROWS, columns)
        w[:, 0], w[:, run], w[:, run + 2] = 1.0, 2.0**24, -(2.0**24)
        if (x @ w.bfloat16().T)[0, 0].item() != 0:
            return run
    return None


def _agrees_with_torch(rows: int, columns: int, run: int) -> bool:
    """Kernel == torch on random inputs, and on inputs where the summation order decides the result:
    each weight row is ones with +2**24 and -2**24 at two random places, so every one summed after
    +2**24 within the same partial sum is rounded away. Which ones survive depends on where each
    partial sum starts, so a kernel with other boundaries than torch's gets other results."""
    gen = torch.Generator().manual_seed(rows * 100003 + columns)
    x = torch.randn(rows, columns, generator=gen).bfloat16()
    w = (torch.randn(CHECK_ROWS, columns, generator=gen) / columns**0.5).bfloat16()
    places = torch.stack([torch.randperm(columns, generator=gen)[:2].sort().values for _ in range(CHECK_ROWS)])
    absorbing = torch.ones(CHECK_ROWS, columns)
    absorbing.scatter_(1, places, torch.tensor([2.0**24, -(2.0**24)]).expand(CHECK_ROWS, 2))
    for xs, weight in ((x, w), (torch.ones(rows, columns, dtype=torch.bfloat16), absorbing.bfloat16())):
        got = _kernel(xs, weight, run)
        if got is None or not torch.equal(got, xs @ weight.T):
            return False
    return True


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] @ w [N, K]^T with the kernel, or None where torch should do it."""
    if not (
        x.dtype == w.dtype == torch.bfloat16
        and x.device.type == w.device.type == "cpu"
        and x.dim() == w.dim() == 2
        and 1 <= x.shape[0] <= MAX_ROWS
        and x.shape[1] >= MIN_COLUMNS
        and x.shape[1] % 32 == 0
        and w.shape[0] % 16 == 0
        and x.is_contiguous()
        and w.is_contiguous()
        and not (x.requires_grad or w.requires_grad)
    ):
        return None
    if not available():
        return None
    key = (x.shape[0], x.shape[1])
    if key not in _run_length:
        run = _torch_run_length(*key)
        _run_length[key] = run if run is not None and _agrees_with_torch(*key, run) else None
    run = _run_length[key]
    return None if run is None else _kernel(x, w, run)
