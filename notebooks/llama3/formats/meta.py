"""Meta's original layout (notebooks 01 and 17), read and written: consolidated.00.pth with params.json and
tokenizer.model, or the same model cut into Meta's model-parallel shards consolidated.00.pth ..
consolidated.{N-1}.pth (Llama 3 70B in 8 files, Llama 3.1 405B in 8, or in 16 for its "mp16" release).

Reading: every file memory-mapped with weights_only (a checkpoint is data; never run code from it) and
checked against params.json; a split weight becomes a ShardedWeight that multiplies shard by shard.

Writing: rank r's file holds exactly the tensors that rank r of Meta's reference model
(llama_models.llama3.model, fairscale model parallel of size N) creates:

- column-parallel layers (ColumnParallelLinear: wq, wk, wv, w1, w3, output) and the embedding
  (VocabParallelEmbedding: split over the vocabulary) hold rows r*n/N .. (r+1)*n/N of the matrix (dim 0);
- row-parallel layers (RowParallelLinear: wo, w2) hold those columns (dim 1);
- the norms are whole in every file.

Meta's model gives each rank n_kv_heads // N key/value heads, so with more ranks than key/value heads
every key/value head is repeated (consecutive copies) until each rank holds whole heads, and
params.json says how many there now are: Llama 3.1 405B's 8 key/value heads become 16 in its mp16
release. Query head h still reads the copy of its own key/value head.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import PARAMS_REQUIRED, CheckpointError, ModelConfig
from ..shapes import expected_shapes
from ..weights import ShardedWeight, StoredWeight, weight_rows

# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_json(path: Path):
    """A checkpoint's JSON file (params.json, config.json), or one message naming it and the fix."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}). Download {path.name} again.") from None


def read_params(ckpt_dir: Path, release: str | None = None) -> ModelConfig:
    path = ckpt_dir / "params.json"
    params = read_json(path)
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} does not hold a JSON object. Download params.json again.")
    missing = [k for k in PARAMS_REQUIRED if k not in params]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}. Download params.json again from the same release.")
    if params["vocab_size"] in (-1, 32000) or "rope_theta" not in params:
        raise CheckpointError(
            f"{path} describes a Llama 2 model (vocab_size {params['vocab_size']}, no rope_theta). "
            "This walkthrough needs a Llama 3 checkpoint such as Meta-Llama-3-8B."
        )
    try:
        config = ModelConfig.from_params(params, release)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a value of the wrong type ({e}). Download params.json again.") from None
    if config.dim % config.n_heads or config.n_heads % config.n_kv_heads or config.head_dim % 2:
        raise CheckpointError(
            f"{path}: dim {config.dim}, n_heads {config.n_heads} and n_kv_heads {config.n_kv_heads} do not "
            "divide into whole, even-sized heads. Download params.json again from the same release."
        )
    return config


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A consolidated.NN.pth memory-mapped, with weights_only: a checkpoint is data; never run code from it."""
    try:
        weights = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged zip
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "It is probably truncated or corrupt: compare its size and checksum with the download and fetch it again."
        ) from None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} does not hold a dict of tensors. Download {path.name} again.")
    return weights


def load_weights(ckpt_dir: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """consolidated.00.pth memory-mapped: tensors are read from disk only when touched. Checked as the one
    shard of one (check_shard)."""
    path = ckpt_dir / "consolidated.00.pth"
    weights = read_pth(path)
    not_bf16 = [k for k, t in weights.items() if isinstance(t, torch.Tensor) and t.dtype != torch.bfloat16]
    if not_bf16:
        raise CheckpointError(
            f"{path}: {not_bf16[0]} is {weights[not_bf16[0]].dtype}, but Meta's checkpoints hold bfloat16 only. "
            "This file was converted by other code; use Meta's original consolidated.00.pth."
        )
    tied = "output.weight" not in weights  # a file without output.weight reuses the embedding matrix
    check_shard(path, weights, expected_shapes(config, tied_output=tied), 1, ckpt_dir / "params.json")
    if tied:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return weights


# How Meta's reference model (llama_models.llama3.model) cuts each weight over model-parallel ranks:
# ColumnParallelLinear splits the output rows, RowParallelLinear the input columns, Llama 3's
# VocabParallelEmbedding the vocabulary; RMSNorm weights are whole in every shard.
COLUMN_PARALLEL = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
ROW_PARALLEL = ("attention.wo", "feed_forward.w2")
SHARD_FILE = re.compile(r"consolidated\.(\d\d)\.pth")


def meta_name_of(name: str, layer_prefix: str, layer_names: dict, other_names: dict) -> str | None:
    """Another format's tensor name as Meta's: `<layer_prefix>.N.<part>.weight` -> layers.N.<layer_names[part]>.weight,
    `<stem>.weight` -> <other_names[stem]>.weight; None for a name that is not a Llama weight."""
    stem = name.removesuffix(".weight")
    if stem in other_names:
        return other_names[stem] + ".weight"
    m = re.fullmatch(re.escape(layer_prefix) + r"\.(\d+)\.(.+)", stem)
    if m and m.group(2) in layer_names:
        return f"layers.{m.group(1)}.{layer_names[m.group(2)]}.weight"
    return None


def split_dim_of(key: str) -> int | None:
    """0 or 1 for a weight Meta splits, None for one every shard holds whole."""
    name = (
        key.removeprefix("layers.").split(".", 1)[-1].removesuffix(".weight")
        if key.startswith("layers.")
        else key.removesuffix(".weight")
    )
    if name in COLUMN_PARALLEL or name == "tok_embeddings":
        return 0
    if name in ROW_PARALLEL:
        return 1
    return None


def shard_files(ckpt_dir: Path) -> list[Path]:
    """consolidated.00.pth, consolidated.01.pth, ...: checked to be numbered from 00 without a gap."""
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := SHARD_FILE.fullmatch(p.name)))
    for expected, (number, _) in enumerate(found):
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
        if all(
            torch.equal(w[g * d : (g + 1) * d], w[(g + i) * d : (g + i + 1) * d])
            for w in (wk, wv)
            for g in groups
            for i in range(1, c)
        ):
            copies = c
    return copies


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def shard_params(params: dict, n_shards: int) -> dict:
    """params.json for N shards: the same, with n_kv_heads raised when there are more ranks than key/value heads.

    Each rank must hold whole query heads, whole key/value heads and a whole slice of the vocabulary
    and of the FFN. Refuses with the reason when N cannot do that."""
    config = ModelConfig.from_params(params)
    n_heads, n_kv = config.n_heads, config.n_kv_heads
    if n_shards < 1 or n_heads % n_shards:
        divisors = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
        raise CheckpointError(
            f"cannot split {n_heads} query heads into {n_shards} shards: each rank of Meta's model holds "
            f"n_heads // N whole heads. Choose a shard count that divides {n_heads}: {divisors}."
        )
    for what, size in (("vocab_size", config.vocab_size), ("FFN hidden size", config.ffn_hidden_dim)):
        if size % n_shards:
            raise CheckpointError(
                f"cannot split the {what} {size} into {n_shards} equal shards, as Meta's parallel layers "
                "require. Choose a shard count that divides it."
            )
    written = dict(params)
    # More ranks than key/value heads: repeat each one until every rank holds whole heads
    # (lcm: Llama 3.1 405B's 8 heads on 16 ranks become 16). n_heads is a multiple of both, so of the lcm.
    kv_heads = math.lcm(n_kv, n_shards)
    if kv_heads != n_kv:
        written["n_kv_heads"] = kv_heads
    return written


def rank_slice(key: str, full: torch.Tensor, rank: int, n_shards: int, kv_repeat: int = 1, head_dim: int = 0):
    """Rank `rank`'s part of the whole tensor `full` (a view when no key/value head is repeated)."""
    if kv_repeat > 1 and key.endswith(("attention.wk.weight", "attention.wv.weight")):
        heads = full.reshape(-1, head_dim, full.shape[1])  # [n_kv_heads, head_dim, dim]
        per_rank = heads.shape[0] * kv_repeat // n_shards
        # the repeated heads are original heads 0,0,..,1,1,..: copy j is original head j // kv_repeat
        copies = torch.arange(rank * per_rank, (rank + 1) * per_rank) // kv_repeat
        return heads[copies].reshape(per_rank * head_dim, full.shape[1])
    dim = split_dim_of(key)
    if dim is None:
        return full
    return full.chunk(n_shards, dim=dim)[rank]


def shard_shapes(params: dict, n_shards: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of one rank's file, by key, in Meta's order (all ranks alike)."""
    written = shard_params(params, n_shards)
    shapes = expected_shapes(ModelConfig.from_params(written))
    out = {}
    for key, shape in shapes.items():
        dim = split_dim_of(key)
        out[key] = shape if dim is None else tuple(s // n_shards if i == dim else s for i, s in enumerate(shape))
    return out


def write_meta_shards(
    weights: Mapping[str, torch.Tensor],
    params: dict,
    out_dir: Path,
    n_shards: int,
    tokenizer_model: Path,
    tied_output_file: bool = True,
) -> dict:
    """Write `weights` (Meta's keys, whole bfloat16 tensors) as N model-parallel shards in out_dir.

    consolidated.{r:02d}.pth holds rank r's slice of every tensor in Meta's key order, each slice a
    contiguous tensor with its own storage; params.json (n_kv_heads raised if key/value heads had to
    be repeated) and tokenizer.model go beside them. A source without output.weight (Llama 3.2's tied
    output) gets one, equal to the embedding: Meta's model always has an output layer and loads strictly
    (tied_output_file=False leaves it out, for files that test the readers' handling of its absence).

    Memory stays at one whole tensor: the files' layout is saved first with no data, then filled
    through shared memory maps, one source tensor at a time, in key order (so `weights` may be lazy).
    Returns the params written.
    """
    out_dir = Path(out_dir)
    config = ModelConfig.from_params(params)
    written = shard_params(params, n_shards)
    kv_repeat = written.get("n_kv_heads", config.n_kv_heads) // config.n_kv_heads
    source_shapes = expected_shapes(config, tied_output="output.weight" not in weights)
    missing = [k for k in source_shapes if k not in weights]
    extra = [k for k in weights if k not in source_shapes]
    if missing or extra:
        raise CheckpointError(
            f"the weights do not match params.json: {len(missing)} tensors missing (first: {missing[:1]}), "
            f"{len(extra)} unexpected (first: {extra[:1]}). Check that the weights and params.json belong together."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / f"consolidated.{r:02d}.pth" for r in range(n_shards)]
    stale = sorted(p.name for p in out_dir.glob("consolidated.*.pth") if p not in targets)
    if stale:
        raise CheckpointError(
            f"{out_dir} already holds {', '.join(stale)}, which readers would take for shards of this "
            "checkpoint. Write into an empty folder."
        )

    shapes = shard_shapes(params, n_shards)
    if not tied_output_file and "output.weight" not in source_shapes:  # a one-file tied model without the copy
        del shapes["output.weight"]
    partial = [p.with_name(p.name + ".partial") for p in targets]  # renamed when complete
    for path in partial:
        layout = {key: torch.empty(shape, dtype=torch.bfloat16) for key, shape in shapes.items()}  # never touched
        with torch.serialization.skip_data():
            torch.save(layout, path)
        del layout
    try:
        with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
            shards = [torch.load(p, map_location="cpu", mmap=True, weights_only=True) for p in partial]
        for key in shapes:  # in order, each once: a lazy source makes each tensor only when asked
            if key not in source_shapes:  # tied source: the output matrix is the embedding, rank by rank
                for shard in shards:
                    shard[key].copy_(shard["tok_embeddings.weight"])
                continue
            full = weights[key]
            if isinstance(
                full, StoredWeight
            ):  # a layout's weight, e.g. Hugging Face's rows: Meta's rows, one at a time
                full = weight_rows(full)
            if tuple(full.shape) != source_shapes[key] or full.dtype != torch.bfloat16:
                raise CheckpointError(
                    f"{key} is {full.dtype} {list(full.shape)}, but params.json implies bfloat16 "
                    f"{list(source_shapes[key])}. Check that the weights and params.json belong together."
                )
            for rank, shard in enumerate(shards):
                shard[key].copy_(rank_slice(key, full, rank, n_shards, kv_repeat, config.head_dim))
            del full
        del shards
    except BaseException:
        for path in partial:
            path.unlink(missing_ok=True)
        raise
    for src, dst in zip(partial, targets):
        src.rename(dst)
    (out_dir / "params.json").write_text(json.dumps(written))
    copy_tokenizer(Path(tokenizer_model), out_dir)
    return written


def copy_tokenizer(tokenizer_file: Path, out_dir: Path) -> None:
    """The tokenizer beside the weights under its own name: Llama 3's tokenizer.model, or the tokenizer.json
    of a model whose tokenizer is not Llama 3's, with the tokenizer_config.json beside it (its stop token)."""
    files = [tokenizer_file]
    if tokenizer_file.suffix == ".json" and tokenizer_file.with_name("tokenizer_config.json").exists():
        files.append(tokenizer_file.with_name("tokenizer_config.json"))
    for f in files:
        if f.resolve() != (out_dir / f.name).resolve():
            shutil.copyfile(f, out_dir / f.name)
