"""What an assert says when it fails: what it expected and what it got (every notebook assert uses it)."""

from __future__ import annotations

import torch


def mismatch(got, expected) -> str:
    """One line: for tensors, the shapes and dtypes if they differ, else the largest difference and where it is;
    for anything else, both values (shortened)."""
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor):
        if got.shape != expected.shape or got.dtype != expected.dtype:
            return f"expected {expected.dtype} {list(expected.shape)}, got {got.dtype} {list(got.shape)}"
        if got.numel() == 0:
            return "expected and got are both empty"
        difference = (got.double() - expected.double()).abs()
        differ = difference.gt(0) | (got.isnan() != expected.isnan())
        where = tuple(int(i) for i in torch.unravel_index(difference.nan_to_num(float("inf")).argmax(), got.shape))
        return (
            f"{int(differ.sum())} of {got.numel()} values differ, the most at {list(where)}: "
            f"expected {expected[where].item():.6g}, got {got[where].item():.6g}"
        )
    return f"expected {_short(expected)}, got {_short(got)}"


def _short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"
