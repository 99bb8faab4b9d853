"""Shapes (notebooks 01 and 14): every tensor a checkpoint of a config holds, shapes printed with the names
of their dimensions and beside Llama 3 8B's, and parameter counts from the shapes alone."""

from __future__ import annotations

import math

import torch

from .config import LLAMA3_8B, ModelConfig


def expected_shapes(config: ModelConfig, tied_output: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Meta-format checkpoint with this config, by key, in the order Meta's files list them.

    Nothing depends on that order: the readers check a file key by key, and writers
    use this order only so their files look like Meta's.
    """
    D, V, F = config.dim, config.vocab_size, config.ffn_hidden_dim
    kv = config.n_kv_heads * config.head_dim
    shapes = {"tok_embeddings.weight": (V, D)}
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (D, D),
            p + "attention.wk.weight": (kv, D),
            p + "attention.wv.weight": (kv, D),
            p + "attention.wo.weight": (D, D),
            p + "feed_forward.w1.weight": (F, D),
            p + "feed_forward.w3.weight": (F, D),  # w3 before w2, as in Meta's files
            p + "feed_forward.w2.weight": (D, F),
            p + "attention_norm.weight": (D,),
            p + "ffn_norm.weight": (D,),
        }
    shapes["norm.weight"] = (D,)
    if not tied_output:
        shapes["output.weight"] = (V, D)
    return shapes


def parameter_count(config: ModelConfig, tied_output: bool = False) -> int:
    """Parameters a checkpoint of this config holds, from the shapes alone (a tied output counts once)."""
    return sum(math.prod(s) for s in expected_shapes(config, tied_output=tied_output).values())


def named_shape(t: torch.Tensor, *names: str) -> str:
    """`[tokens=17, head_dim=128]`: a shape with what each dimension is."""
    if len(names) != t.dim():
        raise ValueError(f"{len(names)} names for a {t.dim()}-d tensor")
    return "[" + ", ".join(f"{n}={s}" for n, s in zip(names, t.shape)) + "]"


def dim_sizes(config: ModelConfig, n_tokens: int) -> dict[str, int]:
    """The size of every named dimension the notebooks print, for this config and prompt length."""
    return {
        "tokens": n_tokens, "dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim, "pairs": config.head_dim // 2,
        "queries_per_kv_head": config.queries_per_kv_head, "ffn_hidden": config.ffn_hidden_dim,
        "vocab_size": config.vocab_size,
    }  # fmt: skip


def shape_from_names(names, config: ModelConfig, n_tokens: int) -> tuple[int, ...]:
    """("n_heads*head_dim", "dim") -> (4096, 4096) at 8B: each name a dimension, or a product of them."""
    sizes = dim_sizes(config, n_tokens)
    return tuple(math.prod(sizes[part] for part in name.split("*")) for name in names)


def shapes_beside_8b(rows, config: ModelConfig, n_tokens: int) -> str:
    """A table of tensors' shapes here and at Llama 3 8B with the same number of tokens.

    rows: (label, tensor, dimension names). The 8B column is computed from Meta's 8B params.json
    with the same names, and each tensor must have the shape its names give at this config,
    so the table cannot name a dimension wrongly.
    """
    lines = []
    for label, tensor, names in rows:
        here = shape_from_names(names, config, n_tokens)
        if tuple(tensor.shape) != here:
            raise ValueError(f"{label} has shape {list(tensor.shape)}, not {list(here)} = {list(names)}")
        lines.append((label, named_shape(tensor, *names), str(list(shape_from_names(names, LLAMA3_8B, n_tokens)))))
    header = ("", "this checkpoint", "Llama 3 8B")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])
