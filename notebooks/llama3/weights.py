"""Weights as the files store them, and the one `linear` every weight matmul goes through (notebooks 04, 05, 17).

A weight in Meta's single file is a memory-mapped tensor. In Meta's model-parallel shards and in Hugging
Face's safetensors (with their permuted query and key rows) a weight is not one tensor, so it is held by a
small class that knows how to multiply by it, used in place, never joined or reordered into new memory:
`x @ w.T` works on it as on a tensor (the product is computed shard by shard, or with the outputs
reordered), and `w[rows, cols]` returns the part asked for (for drawing).
"""

from __future__ import annotations

import math

import torch

from . import kernel

# ---------------------------------------------------------------------------------------
# Weights kept as the file stores them
# ---------------------------------------------------------------------------------------


class StoredWeight:
    """What the shard and Hugging Face weights share: tensor-like shape and dtype, `x @ w.T`, `w[...]`."""

    shape: torch.Size

    @property
    def T(self) -> "_Transposed":
        return _Transposed(self)

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def size(self, i: int | None = None):
        return self.shape if i is None else self.shape[i]

    def element_size(self) -> int:
        return self.tensors()[0].element_size()

    def data_ptr(self) -> int:
        return self.tensors()[0].data_ptr()

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors()[0].dtype

    @property
    def device(self) -> torch.device:
        return self.tensors()[0].device

    def float(self):
        return self.to(dtype=torch.float32)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors in the file this weight is made of."""
        raise NotImplementedError

    def merged(self) -> torch.Tensor:
        """The whole weight in Meta's layout as one new tensor: a copy, made only for code that needs one
        (Meta's single-process reference model), never by the walkthrough's own forward pass."""
        return self[tuple(slice(None) for _ in self.shape)]

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x @ self.T."""
        raise NotImplementedError


class _Transposed:
    """`w.T` of a StoredWeight: only good for `x @ w.T`, which is all the notebooks do with it."""

    def __init__(self, weight: StoredWeight):
        self.weight = weight

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.linear(x)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(reversed(self.weight.shape))


class ShardedWeight(StoredWeight):
    """A weight [out, in] held as Meta's model-parallel shards, split along `split_dim`.

    split_dim 0 (column-parallel: wq, wk, wv, w1, w3, output, and Llama 3's embedding table): shard r
    holds a block of output rows, so x @ w.T is each shard's product, side by side.
    split_dim 1 (row-parallel: wo, w2): shard r holds a block of input columns, so x @ w.T is the sum
    of each shard's product with its own block of x's columns.
    """

    def __init__(self, shards: list[torch.Tensor], split_dim: int):
        shapes = {tuple(s.shape[:split_dim]) + tuple(s.shape[split_dim + 1 :]) for s in shards}
        if len(shapes) != 1:
            raise ValueError("shards differ in their unsplit dimensions")
        self.shards = list(shards)
        self.split_dim = split_dim
        full = list(shards[0].shape)
        full[split_dim] = sum(s.shape[split_dim] for s in shards)
        self.shape = torch.Size(full)

    def __repr__(self) -> str:
        kind = {0: "column-parallel (split on dim 0)", 1: "row-parallel (split on dim 1)"}[self.split_dim]
        return f"ShardedWeight({list(self.shape)}, {len(self.shards)} shards, {kind}, {self.dtype})"

    def tensors(self) -> list[torch.Tensor]:
        return self.shards

    def offsets(self) -> list[int]:
        """Where each shard starts along split_dim."""
        starts = [0]
        for s in self.shards:
            starts.append(starts[-1] + s.shape[self.split_dim])
        return starts

    def to(self, device=None, dtype=None) -> "ShardedWeight":
        return ShardedWeight([s.to(device=device, dtype=dtype) for s in self.shards], self.split_dim)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_dim == 0:  # each shard makes its own output columns
            return torch.cat([linear(x, s) for s in self.shards], dim=-1)
        starts = self.offsets()  # each shard multiplies its own input columns: partial sums
        partials = [linear(x[..., a:b], s) for s, a, b in zip(self.shards, starts, starts[1:])]
        return torch.stack(partials).float().sum(0).to(x.dtype)  # added in float32, rounded once

    def split_heads(self, n_heads: int) -> "ShardedWeight":
        """[n_heads*d, D] -> [n_heads, d, D], each shard viewed as its own heads (column-parallel only)."""
        if self.split_dim != 0 or n_heads % len(self.shards):
            raise ValueError(
                "only a column-parallel weight whose heads divide evenly over its shards splits into heads"
            )
        per_shard = n_heads // len(self.shards)
        return ShardedWeight([s.view(per_shard, -1, s.shape[-1]) for s in self.shards], 0)

    def __getitem__(self, index):
        """The part asked for: a view when it lies inside one shard, else the pieces joined (only that part)."""
        if isinstance(index, torch.Tensor) and index.dtype == torch.long:  # rows of an embedding table
            return self._gather_rows(index)
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (len(self.shape) - len(index))
        along = index[self.split_dim]
        rest = list(index)
        if isinstance(along, int):
            along = along + self.shape[self.split_dim] if along < 0 else along
            starts = self.offsets()
            r = next(r for r in range(len(self.shards)) if starts[r] <= along < starts[r + 1])
            rest[self.split_dim] = along - starts[r]
            return self.shards[r][tuple(rest)]
        start, stop, step = along.indices(self.shape[self.split_dim])
        if step != 1:
            raise IndexError("ShardedWeight takes unit-step slices only")
        pieces, starts = [], self.offsets()
        for shard, a, b in zip(self.shards, starts, starts[1:]):
            lo, hi = max(start, a), min(stop, b)
            if lo < hi:
                rest[self.split_dim] = slice(lo - a, hi - a)
                pieces.append(shard[tuple(rest)])
        if not pieces:
            rest[self.split_dim] = slice(0, 0)
            return self.shards[0][tuple(rest)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=self.split_dim)

    def _gather_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows for token ids: from the shard that holds each id (vocabulary split), or
        every shard's columns side by side (an embedding split over its features)."""
        if self.split_dim == 1:
            return torch.cat([s[ids] for s in self.shards], dim=-1)
        out = torch.empty(*ids.shape, self.shape[1], dtype=self.dtype, device=self.device)
        starts = self.offsets()
        for shard, a, b in zip(self.shards, starts, starts[1:]):
            here = (ids >= a) & (ids < b)
            if here.any():
                out[here] = shard[ids[here] - a]
        return out


def rope_row_permutation(head_dim: int) -> torch.Tensor:
    """Hugging Face's order of one head's query/key rows, as indices into Meta's order.

    Meta rotates pairs of neighbouring dimensions (0,1), (2,3), ...; Hugging Face's converter
    reorders each head's rows so that a pair's two members sit half a head apart (0, d/2),
    (1, d/2+1), ..., which is what its rotate_half RoPE rotates: all first members, then all second.
    """
    return torch.arange(head_dim).view(head_dim // 2, 2).t().flatten()


class RowPermutedWeight(StoredWeight):
    """A query or key projection in Hugging Face's row order, used as if it were in Meta's.

    Reordering a weight's rows reorders its outputs the same way: (x @ W[perm].T)[:, j] = (x @ W.T)[:, perm[j]].
    So instead of reordering the weight (a copy of it), each product is computed with the stored rows
    and its few outputs are put back in Meta's order.
    """

    def __init__(self, stored: torch.Tensor, n_heads: int):
        self.stored = stored
        self.n_heads = n_heads
        self.head_dim = stored.shape[0] // n_heads
        self.shape = stored.shape
        # to_meta[j]: the stored row that is Meta's row j of a head (the inverse of the converter's order)
        self.to_meta = torch.argsort(rope_row_permutation(self.head_dim))

    def __repr__(self) -> str:
        return f"RowPermutedWeight({list(self.shape)}, {self.n_heads} heads in Hugging Face's row order, {self.dtype})"

    def tensors(self) -> list[torch.Tensor]:
        return [self.stored]

    def to(self, device=None, dtype=None) -> "RowPermutedWeight":
        return RowPermutedWeight(self.stored.to(device=device, dtype=dtype), self.n_heads)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(x, self.stored)  # [..., n_heads*d], each head's outputs in Hugging Face's order
        per_head = out.view(*out.shape[:-1], self.n_heads, self.head_dim)
        return per_head[..., self.to_meta.to(out.device)].flatten(-2)

    def split_heads(self, n_heads: int) -> "RowPermutedHeads":
        if n_heads != self.n_heads:
            raise ValueError(f"this weight has {self.n_heads} heads, not {n_heads}")
        return RowPermutedHeads(self)

    def meta_rows(self) -> torch.Tensor:
        """Row indices into the stored weight, in Meta's order."""
        heads = torch.arange(self.n_heads).repeat_interleave(self.head_dim) * self.head_dim
        return heads + self.to_meta.repeat(self.n_heads)

    def __getitem__(self, index):
        """Rows in Meta's order: a copy of just the rows asked for (for drawing; products never copy)."""
        index = index if isinstance(index, tuple) else (index,)
        rows = self.meta_rows()[index[0]]
        return self.stored[(rows, *index[1:])]


class RowPermutedHeads:
    """split_heads of a RowPermutedWeight: [n_heads, d, D], head h a RowPermutedWeight of its own rows (a view)."""

    def __init__(self, weight: RowPermutedWeight):
        self.weight = weight
        self.shape = torch.Size([weight.n_heads, weight.head_dim, weight.shape[1]])

    def __len__(self) -> int:
        return self.weight.n_heads

    def dim(self) -> int:
        return 3

    def __getitem__(self, head: int) -> RowPermutedWeight:
        d = self.weight.head_dim
        return RowPermutedWeight(self.weight.stored[head * d : (head + 1) * d], 1)


def weight_rows(w) -> torch.Tensor:
    """A weight (or one head's block) as a tensor of rows in Meta's order: the tensor itself, or for a
    StoredWeight a copy of it (for checks and drawings)."""
    return w if isinstance(w, torch.Tensor) else w[:]


def stored_tensors(w) -> list[torch.Tensor]:
    """The tensors a weight is made of: itself, or the shards of a StoredWeight."""
    return w.tensors() if isinstance(w, StoredWeight) else [w]


def count_parameters(weights: dict[str, torch.Tensor]) -> int:
    """Parameters stored in the files (a tied output matrix counts once)."""
    seen = {}
    for w in weights.values():
        for t in stored_tensors(w):
            seen[t.data_ptr()] = t.numel()
    return sum(seen.values())


def output_is_tied(weights: dict[str, torch.Tensor]) -> bool:
    """Whether the output matrix is the embedding table (Llama 3.2 1B and 3B): no output.weight, the same
    storage, or a copy with the same values (Meta's 3.2 files carry one, as its reference model loads strictly)."""
    output, embeddings = weights.get("output.weight"), weights["tok_embeddings.weight"]
    if output is None or output is embeddings or output.data_ptr() == embeddings.data_ptr():
        return True
    if output.shape != embeddings.shape:
        return False
    output, embeddings = weight_rows(output), weight_rows(embeddings)
    return torch.equal(output[0], embeddings[0]) and torch.equal(
        output, embeddings
    )  # row 0 first: cheap when they differ


# ---------------------------------------------------------------------------------------
# x @ w.T for every kind of weight
# ---------------------------------------------------------------------------------------


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T: [T, D_in] times a weight [D_out, D_in] stored as Meta stores it -> [T, D_out].

    Every weight matmul goes through here. On CPUs with AVX-512 BF16 the large ones run in a
    small kernel (kernel.py) that reads the memory-mapped weight rows in place and returns
    exactly torch's result, only faster; everywhere else torch does it. A weight kept in
    shards or in Hugging Face's row order multiplies itself, shard by shard, through here.
    """
    if isinstance(w, StoredWeight):
        return w.linear(x)
    fast = kernel.linear(x, w)
    return x @ w.T if fast is None else fast


def split_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n_heads*d, D] projection -> [n_heads, d, D]: row block h is head h (a view, no copy).
    A sharded weight gives each shard's heads; a Hugging Face one a weight per head (notebook 17)."""
    if isinstance(w, StoredWeight):
        return w.split_heads(n_heads)
    return w.view(n_heads, w.shape[0] // n_heads, w.shape[1])
