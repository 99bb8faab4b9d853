"""The bf16 matmul kernel gives torch's result bit for bit, and steps aside where it should.

The kernel is optional (x86-64 with AVX-512 BF16 and a g++ build); without it the equality
tests are skipped with the reason, and llama3.linear is torch's matmul.
"""

import pytest
import torch

import llama3
from llama3 import kernel

kernel_in_use = kernel.available()
needs_kernel = pytest.mark.skipif(not kernel_in_use, reason=f"weight matmuls: {kernel.backend()}")


def spiky(shape, seed):
    """Random bf16 values with a few large ones: a different summation order changes the result."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=gen) / shape[-1] ** 0.5
    spikes = torch.rand(*shape, generator=gen) < 0.002
    return torch.where(spikes, torch.randn(*shape, generator=gen) * 512, t).bfloat16()


def kernel_takes(rows):
    """The shapes the kernel must take: any rows up to 64, but with AMX only up to 32 (beyond,
    torch's blocking changes with the rows; the AVX-512 path then takes a shape only where it
    happens to match torch)."""
    return not kernel._amx or rows <= kernel.MAX_AMX_ROWS


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5, 17, 24, 25, 32, 64])
@pytest.mark.parametrize("columns", [1024, 2048, 3072, 4096, 14336])
def test_kernel_equals_torch(rows, columns):
    x = spiky((rows, columns), seed=rows)
    w = spiky((1040, columns), seed=columns)  # 65 tiles of 16 output columns: an odd one at the end
    got = kernel.linear(x, w)
    if kernel_takes(rows):
        assert got is not None, "the kernel should take this shape"
    if got is not None:
        assert torch.equal(got, x @ w.T)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 17])
def test_kernel_at_8b_weight_shapes(rows):
    """wq, wk, w1 and w2 of Llama 3 8B against the prompt's 17 tokens and a decode step's one.
    (torch may split long rows differently for each weight size: these are the real ones.)"""
    for out_features, in_features in [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]:
        x = spiky((rows, in_features), seed=out_features)
        w = spiky((out_features, in_features), seed=in_features)
        assert kernel.linear(x, w) is not None, "the kernel should take this shape"
        assert torch.equal(llama3.linear(x, w), x @ w.T)


@needs_kernel
def test_kernel_summation_order_is_measured_not_assumed():
    """The summation order the kernel uses is the one torch shows on this machine, per shape."""
    for rows, columns in [(1, 4096), (17, 4096), (1, 14336), (17, 14336)]:
        x = torch.randn(rows, columns).bfloat16()
        kernel.linear(x, torch.randn(1024, columns).bfloat16())
        if kernel._amx:
            expected = ("amx", kernel._torch_amx_blocks(rows, columns, 1024))
        else:
            expected = ("avx512", kernel._torch_run_length(rows, columns))
        assert None not in expected
        assert kernel._choice[(rows, columns, 1024)] == expected


@needs_kernel
def test_a_wrong_summation_order_is_caught():
    """The equality check would refuse a kernel that sums in another order."""
    if kernel._amx:
        rows, columns = 1, 14336  # torch splits these rows into partial sums
        block = kernel._torch_amx_blocks(rows, columns, 1024)
        assert kernel._agrees_with_torch(rows, columns, ("amx", block), 1024)
        for wrong in (("amx", 1 << 30), ("amx", block + 32), ("avx512", 32)):
            assert not kernel._agrees_with_torch(rows, columns, wrong, 1024), wrong
    else:
        rows, columns = 17, 4096
        run = kernel._torch_run_length(rows, columns)
        assert kernel._agrees_with_torch(rows, columns, ("avx512", run))
        assert not kernel._agrees_with_torch(rows, columns, ("avx512", run * 2))


@needs_kernel
@pytest.mark.parametrize("run", [512, 1024, 1 << 30])
@pytest.mark.parametrize("out_features, in_features", [(1040, 4096), (64, 14336), (16, 1024), (48, 2048)])
def test_matrix_vector_path_sums_as_the_tile_path(out_features, in_features, run):
    """Without AMX a single row has a path of its own (blocks transposed in registers, several tiles at
    once; scripts/kernel/bf16_linear.cpp). It must add the same products in the same order as the path for
    several rows, whose order is the one checked against torch on such CPUs: the same x as row 0 of two
    rows gives the same bits. Any CPU with AVX-512 BF16 runs both paths, AMX or not. (1, 2, 3 and 65
    tiles of 16 weight rows: groups of four tiles and what is left over.) Random inputs, and ones against
    rows that hold +2**30 and -2**30, where another order or other run boundaries give other bits."""
    gen = torch.Generator().manual_seed(out_features * in_features)
    absorbing = kernel.absorbing_weight(out_features, in_features, gen)
    ones = torch.ones(1, in_features, dtype=torch.bfloat16)
    for x, w in (
        (spiky((1, in_features), seed=in_features), spiky((out_features, in_features), seed=out_features)),
        (ones, absorbing),
    ):
        one = kernel._kernel(x, w, ("avx512", run))
        two = kernel._kernel(torch.cat([x, spiky((1, in_features), seed=7)]), w, ("avx512", run))
        assert one is not None and two is not None
        assert torch.equal(one[0], two[0])


@needs_kernel
def test_read_all_reads_every_byte():
    t = torch.randint(0, 2**62, (1 << 16,), dtype=torch.int64)
    expected = 0
    for value in t.tolist():
        expected ^= value
    assert kernel.read_all(t) == expected
    t[12345] ^= 1 << 40
    assert kernel.read_all(t) == expected ^ (1 << 40)


@pytest.mark.parametrize(
    "x, w",
    [
        (torch.randn(17, 4096), torch.randn(64, 4096)),  # float32
        (torch.randn(65, 4096).bfloat16(), torch.randn(64, 4096).bfloat16()),  # too many rows
        (torch.randn(17, 512).bfloat16(), torch.randn(64, 512).bfloat16()),  # small: torch is fast enough
        (torch.randn(4096, 17).bfloat16().T, torch.randn(64, 4096).bfloat16()),  # x not contiguous
        (torch.randn(17, 4096).bfloat16(), torch.randn(60, 4096).bfloat16()),  # not whole tiles of 16
        (torch.randn(17, 4096).bfloat16(), torch.randn(4096, 64).bfloat16().T),  # w not contiguous
    ],
)
def test_other_shapes_go_to_torch(x, w):
    assert kernel.linear(x, w) is None
    assert torch.equal(llama3.linear(x, w), x @ w.T)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("LLAMA3_MATMUL", "torch")
    monkeypatch.setattr(kernel, "_status", None)
    monkeypatch.setattr(kernel, "_lib", None)
    assert kernel.backend() == "torch (LLAMA3_MATMUL=torch)"
    x, w = torch.randn(17, 4096).bfloat16(), torch.randn(64, 4096).bfloat16()
    assert kernel.linear(x, w) is None


def test_map_weights_maps_the_demo(demo):
    assert llama3.map_weights(demo.weights, progress=False)


def test_map_weights_skips_what_does_not_fit(demo, monkeypatch):
    monkeypatch.setattr(llama3.pages, "memory_limit", lambda: 1 << 20)  # the name map_weights reads
    weights = demo.weights
    assert not llama3.map_weights(weights, progress=False)


def test_memory_limit_is_at_most_the_machine():
    import os

    assert 0 < llama3.memory_limit() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
