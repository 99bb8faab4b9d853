"""A faster `x @ w.T` for the weight matmuls on CPUs with AVX-512 BF16, bit for bit torch's.

llama3.linear (weights.py) calls `linear` here first; `None` means "use torch". The kernel
(scripts/kernel/bf16_linear.cpp, built by `make setup` into build/bf16_linear.so) has two paths, one
per way torch (oneDNN) sums on such CPUs:

- with AMX (Intel Xeon 4th generation and later) torch uses AMX tiles; the kernel then uses
  the same tile instruction on the weight rows as they lie (up to 32 rows of x);
- otherwise (AMD Zen 4, Intel without AMX) torch sums pairs of products into float32 runs; the
  kernel reproduces the run length it measures.

A path is used only when

- the library was built and this CPU has AVX-512 BF16 (and AMX for the first path),
- the call is a bfloat16 matmul of at most 64 rows against a weight of at least 1024 columns
  (the 8B shapes; the demo's small matrices stay with torch), and
- for this number of rows and columns, a check has shown the path gives exactly torch's
  result, on random and on adversarial inputs (where the summation order decides the result).

Set LLAMA3_MATMUL=torch to switch it off.
"""

from __future__ import annotations

import ctypes
import os

import torch

from .config import REPO_DIR

LIBRARY = REPO_DIR / "build" / "bf16_linear.so"
MIN_COLUMNS = 1024
MAX_ROWS = 64
PROBE_ROWS = 16  # weight rows when measuring the run length (torch's blocking here does not depend on them)
CHECK_ROWS = 32  # weight rows when comparing results: two tiles of 16 outputs

MAX_AMX_ROWS = 32  # above this torch's AMX blocking changes with the rows (measured: 33 and 64 differ)
AMX_PROBE_ROWS = 1024  # weight rows when measuring how torch splits the columns (see _torch_amx_blocks)

_lib = None
_amx = False
_status = None  # why the kernel is or is not in use, once looked at
# (rows, columns, weight rows probed) -> ("amx", inputs per partial sum), ("avx512", run length) or None: torch
_choice: dict[tuple[int, int, int], tuple[str, int] | None] = {}


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
        lib.bf16_linear_amx.restype = ctypes.c_int
        lib.bf16_linear_amx.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
        lib.read_all.restype = ctypes.c_uint64
        lib.read_all.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        if not lib.bf16_linear_supported():
            _status = "torch (this CPU has no AVX-512 BF16)"
        else:
            global _amx
            _lib, _amx = lib, bool(lib.bf16_amx_supported())
            path = "AMX tiles" if _amx else "AVX-512 BF16"
            _status = f"bf16 kernel ({path}) for large weights, checked equal to torch"


def backend() -> str:
    """Which code runs the weight matmuls, and why."""
    _load()
    return _status


def available() -> bool:
    """Whether the kernel can run here (each shape is still checked against torch before use)."""
    _load()
    return _lib is not None


def _kernel(x: torch.Tensor, w: torch.Tensor, choice: tuple[str, int]) -> torch.Tensor | None:
    """choice: ("amx", inputs per partial sum) or ("avx512", float32 run length)."""
    path, n = choice
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.bfloat16)
    args = (x.data_ptr(), w.data_ptr(), out.data_ptr(), x.shape[0], w.shape[0], x.shape[1], n)
    rc = _lib.bf16_linear_amx(*args) if path == "amx" else _lib.bf16_linear(*args)
    return out if rc == 0 else None


def read_all(t: torch.Tensor) -> int:
    """Read every byte of a contiguous tensor on all threads (the benchmark's bandwidth probe)."""
    return int(_lib.read_all(t.data_ptr(), t.numel() * t.element_size()))


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


def _torch_amx_blocks(rows: int, columns: int, weight_rows: int) -> int | None:
    """How many inputs torch's AMX path sums into one partial sum before the partial sums are added
    (it splits long rows, e.g. 14336 columns into blocks of 2400 for a single row of x). Weight row j
    holds 2**24 at input 0, 1 at b = 32 (j + 1) and -2**24 at b + 32: its result is 1 exactly when
    b and b + 32 share a partial sum that input 0 is not in, so one matmul shows where each starts."""
    if weight_rows < columns // 32:
        return None
    b = 32 * torch.arange(1, weight_rows + 1)
    inside = (b + 32 < columns).nonzero().flatten()
    w = torch.zeros(weight_rows, columns, dtype=torch.bfloat16)
    w[inside, 0], w[inside, b[inside]], w[inside, b[inside] + 32] = 2.0**24, 1.0, -(2.0**24)
    result = (torch.ones(rows, columns, dtype=torch.bfloat16) @ w.T)[0]
    shares = set(b[inside][result[inside] != 0].tolist())
    if not shares:
        return 1 << 30  # one partial sum over all the columns
    block = min(shares)  # the second partial sum starts here; then every `block` inputs
    expected = {s for start in range(block, columns, block) for s in range(start, min(start + block, columns) - 32, 32)}
    return block if shares == expected and block % 32 == 0 else None


def absorbing_weight(weight_rows: int, columns: int, gen: torch.Generator) -> torch.Tensor:
    """Ones, with +2**30 and -2**30 at two random places in each row: times a row of ones, the result
    counts the ones that were not added while 2**30 was in the sum, so it shows where partial sums start."""
    u = torch.rand(weight_rows, 2, generator=gen)
    first = (u[:, 0] * (columns - 1)).long()
    places = torch.stack([first, first + 1 + (u[:, 1] * (columns - 1 - first)).long()], dim=1)  # two, in order
    absorbing = torch.ones(weight_rows, columns, dtype=torch.bfloat16)
    absorbing.scatter_(1, places, torch.tensor([2.0**30, -(2.0**30)], dtype=torch.bfloat16).expand(weight_rows, 2))
    return absorbing


def _agrees_with_torch(rows: int, columns: int, choice: tuple[str, int], weight_rows: int = CHECK_ROWS) -> bool:
    """Kernel == torch on random inputs, and on inputs where the summation order decides the result:
    each weight row is ones with +2**30 and -2**30 at two random places. float32 keeps steps of 128
    near 2**30, so ones added to it a few at a time (2 per instruction, or 32 with AMX) are rounded
    away, while ones summed in a partial sum of their own survive. Which ones survive depends on
    where each partial sum starts, so a kernel with other boundaries than torch's gets other results."""
    gen = torch.Generator().manual_seed(rows * 100003 + columns)
    x = torch.randn(rows, columns, generator=gen).bfloat16()
    w = torch.randn(weight_rows, columns, generator=gen, dtype=torch.bfloat16) / columns**0.5
    absorbing = absorbing_weight(weight_rows, columns, gen)
    for xs, weight in ((x, w), (torch.ones(rows, columns, dtype=torch.bfloat16), absorbing)):
        got = _kernel(xs, weight, choice)
        if got is None or not torch.equal(got, xs @ weight.T):
            return False
    return True


def _shape_fits(rows: int, columns: int, weight_rows: int) -> bool:
    return 1 <= rows <= MAX_ROWS and columns >= MIN_COLUMNS and columns % 32 == 0 and weight_rows % 16 == 0


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] @ w [N, K]^T with the kernel, or None where torch should do it."""
    if not (
        x.dtype == w.dtype == torch.bfloat16
        and x.device.type == w.device.type == "cpu"
        and x.dim() == w.dim() == 2
        and _shape_fits(x.shape[0], x.shape[1], w.shape[0])
        and x.is_contiguous()
        and w.is_contiguous()
        and not (x.requires_grad or w.requires_grad)
    ):
        return None
    if not available():
        return None
    choice = _choice_for(x.shape[0], x.shape[1], w.shape[0])
    return None if choice is None else _kernel(x, w, choice)


def _choice_for(rows: int, columns: int, weight_rows: int) -> tuple[str, int] | None:
    # torch's AMX blocking depends on the weight's rows too, but is the same from 1024 rows on
    # (tests/test_matmul_kernel.py checks the 8B shapes themselves).
    key = (rows, columns, min(weight_rows, AMX_PROBE_ROWS))
    if key not in _choice:
        _choice[key] = _choose(*key)
    return _choice[key]


def cpu_kind() -> str:
    """What this CPU offers bfloat16 matmuls: AMX tiles, AVX-512 BF16 alone, or neither (from /proc/cpuinfo)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "amx_bf16" in flags and "avx512_bf16" in flags:
        return "AMX tiles and AVX-512 BF16"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16, no AMX"
    return "no AVX-512 BF16"


def model_paths(config, rows=(1, 17)) -> dict[str, dict[int, str]]:
    """path() for each weight matrix of a model (a llama3.ModelConfig), at each number of rows of x:
    1 for a decode step, the prompt's tokens for a forward pass."""
    D, F, kv = config.dim, config.ffn_hidden_dim, config.n_kv_heads * config.head_dim
    shapes = {"wq, wo": (D, D), "wk, wv": (kv, D), "w1, w3": (F, D), "w2": (D, F), "output": (config.vocab_size, D)}
    return {name: {r: path(r, columns, n) for r in rows} for name, (n, columns) in shapes.items()}


def path(rows: int, columns: int, weight_rows: int) -> str:
    """Which code serves a bfloat16 x [rows, columns] @ w [weight_rows, columns]^T here, in words
    (measuring torch's order and checking the kernel against it first, as linear does)."""
    if not available():
        return backend()
    if not _shape_fits(rows, columns, weight_rows):
        return "torch (a shape the kernel leaves to it)"
    choice = _choice_for(rows, columns, weight_rows)
    if choice is None:
        return "torch (the kernel's sums differ from torch's here)"
    kind, n = choice
    if kind == "amx":
        sums = "one float32 sum per output" if n >= columns else f"float32 partial sums of {n} inputs, added in order"
        return f"kernel: AMX tiles; {sums}"
    sums = "one float32 run per output" if n >= columns else f"float32 runs of {n} inputs, added in order"
    return f"kernel: AVX-512 BF16, the {'one-row' if rows == 1 else 'tile'} path; {sums}"


def _choose(rows: int, columns: int, weight_rows: int) -> tuple[str, int] | None:
    """The path that gives torch's bits for this shape, or None (torch)."""
    if _amx and rows <= MAX_AMX_ROWS:
        block = _torch_amx_blocks(rows, columns, weight_rows)
        if block is not None and _agrees_with_torch(rows, columns, ("amx", block), weight_rows):
            return ("amx", block)
    run = _torch_run_length(rows, columns)
    if run is not None and _agrees_with_torch(rows, columns, ("avx512", run), weight_rows):
        return ("avx512", run)
    return None
