"""Every layout Meta and Hugging Face ship (notebooks 01, 05 and 17): Meta's checkpoints cut into
model-parallel shards, and Hugging Face's safetensors with their permuted query and key rows, read
memory-mapped and used in place, never joined or reordered into new memory.

A weight in one of these layouts is not one tensor, so it is held by a small class that knows how
to multiply by it: `x @ w.T` works on it as on a tensor (the product is computed shard by shard,
or with the outputs reordered), and `w[rows, cols]` returns the part asked for (for drawing).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from .config import *  # noqa: F401,F403
from .checkpoint import *  # noqa: F401,F403


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


def _tensor_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    from .model import linear  # model.py's linear dispatches back here for StoredWeights

    return linear(x, w)


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
            return torch.cat([_tensor_linear(x, s) for s in self.shards], dim=-1)
        starts = self.offsets()  # each shard multiplies its own input columns: partial sums
        partials = [_tensor_linear(x[..., a:b], s) for s, a, b in zip(self.shards, starts, starts[1:])]
        return torch.stack(partials).float().sum(0).to(x.dtype)  # added in float32, rounded once

    def split_heads(self, n_heads: int) -> "ShardedWeight":
        """[n_heads*d, D] -> [n_heads, d, D], each shard viewed as its own heads (column-parallel only)."""
        if self.split_dim != 0 or n_heads % len(self.shards):
            raise ValueError("only a column-parallel weight whose heads divide evenly over its shards splits into heads")
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
        out = _tensor_linear(x, self.stored)  # [..., n_heads*d], each head's outputs in Hugging Face's order
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


# ---------------------------------------------------------------------------------------
# Meta's shards
# ---------------------------------------------------------------------------------------

# params.json of the sharded releases, as Meta's llama_models.sku_list gives them (with their file counts).
SHARDED_PARAMS = {
    "Llama 3 70B": dict(
        LLAMA3_8B_PARAMS, dim=8192, n_layers=80, n_heads=64, multiple_of=4096, use_scaled_rope=False
    ),
    "Llama 3.1 405B": dict(
        LLAMA3_8B_PARAMS, dim=16384, n_layers=126, n_heads=128, ffn_dim_multiplier=1.2, multiple_of=4096,
        use_scaled_rope=True,
    ),
}
SHARDED_PARAMS["Llama 3.1 405B mp16"] = dict(SHARDED_PARAMS["Llama 3.1 405B"], n_kv_heads=16)
SHARD_COUNTS = {"Llama 3 70B": 8, "Llama 3.1 405B": 8, "Llama 3.1 405B mp16": 16}

# How Meta's reference model (llama_models.llama3.model) cuts each weight over model-parallel ranks:
# ColumnParallelLinear splits the output rows, RowParallelLinear the input columns, Llama 3's
# VocabParallelEmbedding the vocabulary; RMSNorm weights are whole in every shard.
COLUMN_PARALLEL = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
ROW_PARALLEL = ("attention.wo", "feed_forward.w2")
SHARD_FILE = re.compile(r"consolidated\.(\d\d)\.pth")


def split_dim_of(key: str) -> int | None:
    """0 or 1 for a weight Meta splits, None for one every shard holds whole."""
    name = key.removeprefix("layers.").split(".", 1)[-1].removesuffix(".weight") if key.startswith("layers.") else key.removesuffix(".weight")
    if name in COLUMN_PARALLEL or name == "tok_embeddings":
        return 0
    if name in ROW_PARALLEL:
        return 1
    return None


def shard_files(ckpt_dir: Path) -> list[Path]:
    """consolidated.00.pth, consolidated.01.pth, ...: checked to be numbered from 00 without a gap."""
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := SHARD_FILE.fullmatch(p.name)))
    for expected, (number, path) in enumerate(found):
        if number != expected:
            raise CheckpointError(
                f"{ckpt_dir / f'consolidated.{expected:02d}.pth'} is missing: the shards found are "
                f"{', '.join(p.name for _, p in found)}. Download the missing shard (a 70B checkpoint has "
                "consolidated.00.pth to consolidated.07.pth)."
            )
    return [p for _, p in found]


def check_shard(path: Path, shard: dict, want: dict[str, tuple[int, ...]], n: int, params_path: Path) -> None:
    """One of n shards against params.json's shapes (want, from expected_shapes): every tensor there, bfloat16,
    and 1/n of the whole along the dimension Meta splits it on (split_dim_of)."""
    same = "params.json and this file" if n == 1 else "every shard and params.json"
    missing = [k for k in want if k not in shard]
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} tensors that params.json implies (first: {missing[0]}). "
            f"Check that {same} come from the same model."
        )
    for key, shape in want.items():
        t = shard[key]
        if t.dtype != torch.bfloat16:
            raise CheckpointError(
                f"{path}: {key} is {t.dtype}, but Meta's checkpoints hold bfloat16 only. "
                "This file was converted by other code; use Meta's original shards."
            )
        part = list(shape)
        split = split_dim_of(key)
        if split is not None:
            part[split] //= n
        if key == "tok_embeddings.weight" and list(t.shape) == [shape[0], shape[1] // n]:
            continue  # Llama 2's convention (split over dim): read as well
        if list(t.shape) != part and n == 1:
            raise CheckpointError(
                f"{path}: {key} has shape {list(t.shape)} but {params_path} implies {part}. "
                f"Check that {same} come from the same model."
            )
        if list(t.shape) != part:
            raise CheckpointError(
                f"{path}: {key} has shape {list(t.shape)}, but {n} shards of the model in {params_path} "
                f"give each {part}. Every shard must come from the same download of the same model; "
                "check that no shard is missing or foreign."
            )


def load_sharded_weights(ckpt_dir: Path, config: ModelConfig) -> dict[str, StoredWeight | torch.Tensor]:
    """Meta's consolidated.NN.pth shards, memory-mapped: each weight a ShardedWeight, norms from shard 0.

    Checks every shard against params.json (each holds 1/n of every split weight), that the shard
    count divides the heads, and that the shards belong together (their norms, which every shard
    holds whole, are equal).
    """
    files = shard_files(ckpt_dir)
    n = len(files)
    params_path = ckpt_dir / "params.json"
    if config.n_heads % n or config.n_kv_heads % n:
        raise CheckpointError(
            f"{ckpt_dir} holds {n} shards, but params.json's {config.n_heads} query heads and {config.n_kv_heads} "
            f"key/value heads do not divide over {n}: Meta cuts every shard at whole heads. Check that no "
            "shard is missing and that no extra consolidated.*.pth is in the folder."
        )
    shards = [read_pth(p) for p in files]
    tied = "output.weight" not in shards[0]
    want = expected_shapes(config, tied_output=tied)
    for path, shard in zip(files, shards):
        check_shard(path, shard, want, n, params_path)
    for path, shard in zip(files[1:], shards[1:]):  # norms are whole in every shard: equal if they belong together
        for key in (k for k in want if split_dim_of(k) is None):
            if not torch.equal(shard[key], shards[0][key]):
                raise CheckpointError(
                    f"{path} is not from the same model as {files[0]}: its {key}, which every shard holds whole, "
                    "differs. Download all the shards of one model into one folder."
                )
    weights: dict[str, StoredWeight | torch.Tensor] = {}
    for key in want:
        split = split_dim_of(key)
        if split is None:
            weights[key] = shards[0][key]
        else:
            pieces = [s[key] for s in shards]
            if key == "tok_embeddings.weight" and pieces[0].shape[0] == config.vocab_size and n > 1:
                split = 1
            weights[key] = pieces[0] if n == 1 else ShardedWeight(pieces, split)
    weights["output.weight"] = weights["tok_embeddings.weight"] if tied else weights["output.weight"]
    return weights


def write_meta_shards(ck: "Checkpoint", out_dir: Path, n_shards: int) -> None:
    """Save a checkpoint in Meta's layout cut into n_shards, as Meta's model-parallel code holds it: rank r's
    slice of every weight in consolidated.0r.pth, with params.json and tokenizer.model.

    The shard count must divide the query heads. Where it does not divide the key/value heads, each of them
    is stored the fewest times that make it divide, copies in a row, and params.json says so, as in Llama 3.1
    405B's 16-shard release (8 heads twice): query head h then reads a copy of the same head. Writes one
    shard at a time. scripts/write_shards.py does the same for the command line, streaming at any size.
    """
    c = ck.config
    if c.n_heads % n_shards:
        raise CheckpointError(
            f"{n_shards} shards do not divide {c.n_heads} query heads: Meta's code gives every rank whole heads. "
            "Pick a divisor of n_heads."
        )
    copies = math.lcm(c.n_kv_heads, n_shards) // c.n_kv_heads  # the fewest copies that n_shards divides
    out_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(n_shards):
        shard = {}
        for key, w in ck.weights.items():
            tensor = weight_rows(w) if not isinstance(w, torch.Tensor) else w
            if copies > 1 and (key.endswith(".wk.weight") or key.endswith(".wv.weight")):
                tensor = tensor.view(c.n_kv_heads, c.head_dim, -1).repeat_interleave(copies, 0).flatten(0, 1)
            split = split_dim_of(key)
            shard[key] = (tensor if split is None else tensor.chunk(n_shards, dim=split)[rank]).clone()
        torch.save(shard, out_dir / f"consolidated.{rank:02d}.pth")
        del shard
    params = params_of(ck) | {"n_kv_heads": c.n_kv_heads * copies}
    (out_dir / "params.json").write_text(json.dumps(params))
    tokenizer_file = tokenizer_file_to_copy(ck)  # tokenizer.model, or another model's tokenizer.json
    (out_dir / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    if tokenizer_file.suffix == ".json" and tokenizer_file.with_name("tokenizer_config.json").exists():
        (out_dir / "tokenizer_config.json").write_bytes(tokenizer_file.with_name("tokenizer_config.json").read_bytes())


def kv_head_copies(weights, config: ModelConfig, layer: int = 0) -> int:
    """How many times each key/value head is stored: 1, or more when a release duplicated them so that
    more shards than key/value heads each hold one (Llama 3.1 405B's 16-shard "mp16" files carry
    n_kv_heads 16: its 8 key/value heads twice). Told from the weights: consecutive wk and wv heads equal."""
    wk, wv = weights[f"layers.{layer}.attention.wk.weight"], weights[f"layers.{layer}.attention.wv.weight"]
    d = config.head_dim
    copies = 1
    for c in range(2, config.n_kv_heads + 1):
        if config.n_kv_heads % c:
            continue
        groups = range(0, config.n_kv_heads, c)
        if all(torch.equal(w[g * d : (g + 1) * d], w[(g + i) * d : (g + i + 1) * d]) for w in (wk, wv) for g in groups for i in range(1, c)):
            copies = c
    return copies


# ---------------------------------------------------------------------------------------
# Hugging Face's safetensors
# ---------------------------------------------------------------------------------------

HF_INDEX = "model.safetensors.index.json"
# Hugging Face's names for Meta's (transformers' LlamaForCausalLM), per layer and for the rest.
HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
HF_OTHER_NAMES = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}


def meta_key(hf_key: str) -> str | None:
    """model.layers.3.self_attn.q_proj.weight -> layers.3.attention.wq.weight (None if not a Llama weight)."""
    stem = hf_key.removesuffix(".weight")
    if stem in HF_OTHER_NAMES:
        return HF_OTHER_NAMES[stem] + ".weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if m and m.group(2) in HF_LAYER_NAMES:
        return f"layers.{m.group(1)}.{HF_LAYER_NAMES[m.group(2)]}.weight"
    return None


def read_hf_config(ckpt_dir: Path, release: str | None = None) -> ModelConfig:
    """config.json of a Hugging Face Llama 3 folder as the walkthrough's ModelConfig."""
    path = ckpt_dir / "config.json"
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("model_type") != "llama":
        raise CheckpointError(
            f"{path} does not describe a Llama model (model_type {cfg.get('model_type') if isinstance(cfg, dict) else None!r}). "
            "Point LLAMA3_DIR at a meta-llama Llama 3 repository."
        )
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size", "rms_norm_eps")
    missing = [k for k in needed if k not in cfg]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}. Download config.json again.")
    if cfg["vocab_size"] == 32000 or "rope_theta" not in cfg and "rope_parameters" not in cfg:
        raise CheckpointError(f"{path} describes a Llama 2 model (vocab_size {cfg['vocab_size']}). This walkthrough needs Llama 3.")
    dim, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if cfg.get("head_dim") not in (None, dim // n_heads) or dim % n_heads:
        raise CheckpointError(f"{path}: head_dim {cfg.get('head_dim')} is not hidden_size / num_attention_heads; not a Llama 3 shape.")
    if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{path}: biases or an activation other than SiLU: not Llama 3's architecture.")
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("llama3", "default"):
        raise CheckpointError(f"{path}: rope_scaling type {kind!r} is not Llama 3's.")
    if kind == "llama3":
        fixed = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        odd = {k: scaling.get(k) for k, v in fixed.items() if float(scaling.get(k, v)) != v}
        factor = float(scaling.get("factor", 0))
        if odd or factor not in (ROPE_SCALE_FACTORS["3.1"], ROPE_SCALE_FACTORS["3.2"]):
            raise CheckpointError(
                f"{path}: rope_scaling {scaling} is not Llama 3.1's (factor 8) or 3.2's (factor 32) with {fixed}."
            )
        release = release or {ROPE_SCALE_FACTORS["3.1"]: "3.1", ROPE_SCALE_FACTORS["3.2"]: "3.2"}[factor]
    else:
        release = release or "3"
    params = {
        "dim": dim, "n_layers": int(cfg["num_hidden_layers"]), "n_heads": n_heads,
        "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads), "vocab_size": int(cfg["vocab_size"]),
        **ffn_params(dim, int(cfg["intermediate_size"])), "norm_eps": float(cfg["rms_norm_eps"]),
        "rope_theta": float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 500000.0)),
        "use_scaled_rope": kind == "llama3",
    }  # fmt: skip
    return ModelConfig.from_params(params, release)


def ffn_params(dim: int, ffn_hidden: int) -> dict:
    """multiple_of and ffn_dim_multiplier for which Meta's formula gives Hugging Face's intermediate_size:
    the first of the pairs Meta's releases use that does, else multiple_of = intermediate_size itself."""
    base = int(2 * 4 * dim / 3)
    for multiplier in (1.3, 1.5, 1.0, 1.2, None):
        for multiple_of in (1024, 256, 4096, 32, 64, 128):
            hidden = base if multiplier is None else int(multiplier * base)
            if multiple_of * ((hidden + multiple_of - 1) // multiple_of) == ffn_hidden:
                return {"multiple_of": multiple_of, "ffn_dim_multiplier": multiplier}
    if base <= ffn_hidden:  # rounding up to a multiple of ffn_hidden gives ffn_hidden
        return {"multiple_of": ffn_hidden, "ffn_dim_multiplier": None}
    return {"multiple_of": 1, "ffn_dim_multiplier": (ffn_hidden + 0.5) / base}


def same_model(a: ModelConfig, b: ModelConfig) -> bool:
    """Configs that give the same model: equal but for the pair (multiple_of, ffn_dim_multiplier), which
    config.json does not keep, as long as both give the same FFN width."""
    formula = ("multiple_of", "ffn_dim_multiplier")
    return a.ffn_hidden_dim == b.ffn_hidden_dim and all(
        getattr(a, f) == getattr(b, f) for f in a.__dataclass_fields__ if f not in formula
    )


def map_file(path: Path) -> dict[str, torch.Tensor]:
    """One weight file memory-mapped, a consolidated.NN.pth or a .safetensors: its tensors by their names in it."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    return read_pth(path)


def hf_weight_files(ckpt_dir: Path) -> dict[str, Path]:
    """Each Hugging Face tensor name -> the .safetensors file holding it (from the index when sharded)."""
    index = ckpt_dir / HF_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a readable safetensors index ({e}). Download it again.") from None
        files = {name: ckpt_dir / f for name, f in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.exists():
                raise CheckpointError(
                    f"{f} is missing: {index.name} lists it. Download every model-*.safetensors file of the repository."
                )
        return files
    single = ckpt_dir / "model.safetensors"
    if not single.exists():
        raise CheckpointError(
            f"{index} is missing: it says which model-*.safetensors file holds each tensor. "
            "Download it from the same Hugging Face repository."
        )
    return {name: single for name in _safetensors_names(single)}


def _safetensors_names(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be read as safetensors ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "It is probably truncated: download it again."
        ) from None


def load_hf_weights(ckpt_dir: Path, config: ModelConfig, tie_word_embeddings: bool) -> dict[str, StoredWeight | torch.Tensor]:
    """Hugging Face safetensors memory-mapped under Meta's names; wq and wk as RowPermutedWeights."""
    from safetensors import safe_open

    files = hf_weight_files(ckpt_dir)
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    weights = {}
    for f, names in by_file.items():
        try:
            with safe_open(f, framework="pt") as opened:  # tensors stay mapped from the file after closing
                for name in names:
                    key = meta_key(name)
                    if key is not None:
                        weights[key] = opened.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"{f} could not be read as safetensors ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
                "It is probably truncated: download it again."
            ) from None
    tied = "output.weight" not in weights
    if tied and not tie_word_embeddings:
        raise CheckpointError(f"{ckpt_dir}: lm_head.weight is missing and config.json does not set tie_word_embeddings. Download every safetensors file.")
    want = expected_shapes(config, tied_output=tied)
    for key, shape in want.items():
        if key not in weights:
            raise CheckpointError(
                f"{ckpt_dir}: the safetensors files lack the tensor Meta calls {key}, which config.json implies. "
                "Download every safetensors file of the repository."
            )
        t = weights[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{files_for(files, key)}: {key} has shape {list(t.shape)} but config.json implies {list(shape)}.")
        if t.dtype != torch.bfloat16:
            raise CheckpointError(f"{files_for(files, key)}: {key} is {t.dtype}; Llama 3's safetensors are bfloat16. Use the repository's own files.")
    for i in range(config.n_layers):
        p = f"layers.{i}.attention."
        weights[p + "wq.weight"] = RowPermutedWeight(weights[p + "wq.weight"], config.n_heads)
        weights[p + "wk.weight"] = RowPermutedWeight(weights[p + "wk.weight"], config.n_kv_heads)
    if tied:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return {k: weights[k] for k in [*want, "output.weight"] if k in weights}


def files_for(files: dict[str, Path], meta: str) -> Path:
    return next((f for name, f in files.items() if meta_key(name) == meta), Path("?"))


def read_hf_tie(ckpt_dir: Path) -> bool:
    """config.json's tie_word_embeddings (Llama 3.2 1B and 3B: the output matrix is the embedding table)."""
    return bool(json.loads((ckpt_dir / "config.json").read_text()).get("tie_word_embeddings", False))


def load_hf_tokenizer(ckpt_dir: Path, release: str):
    """The tokenizer of a Hugging Face folder: Meta's tokenizer.model from original/ when it is there,
    else the same tokenizer built from tokenizer.json. Returns it and the file it came from."""
    model_file = ckpt_dir / "original" / "tokenizer.model"
    if model_file.exists():
        return load_tokenizer(model_file, release), model_file
    json_file = ckpt_dir / "tokenizer.json"
    return load_tokenizer_file(json_file, release), json_file  # Llama 3's, or another model's (SmolLM2's)
