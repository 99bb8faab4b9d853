"""Write a checkpoint as Meta's model-parallel shards: consolidated.00.pth .. consolidated.{N-1}.pth.

Meta ships its larger models split for N-way model parallelism (Llama 3 70B in 8 files, Llama 3.1
405B in 8, or in 16 for its "mp16" release). Rank r's file holds exactly the tensors that rank r of
Meta's reference model (llama_models.llama3.model, fairscale model parallel of size N) creates:

- column-parallel layers (ColumnParallelLinear: wq, wk, wv, w1, w3, output) and the embedding
  (VocabParallelEmbedding: split over the vocabulary) hold rows r*n/N .. (r+1)*n/N of the matrix (dim 0);
- row-parallel layers (RowParallelLinear: wo, w2) hold those columns (dim 1);
- the norms are whole in every file.

Meta's model gives each rank n_kv_heads // N key/value heads, so with more ranks than key/value heads
every key/value head is repeated (consecutive copies) until each rank holds whole heads, and
params.json says how many there now are: Llama 3.1 405B's 8 key/value heads become 16 in its mp16
release. Query head h still reads the copy of its own key/value head.

    python scripts/make_checkpoint.py OUT --preset gqa4 --shards 4
    python scripts/make_checkpoint.py OUT --from build/llama3-demo --shards 2
"""

from __future__ import annotations

import json
import math
import mmap
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "notebooks"))
sys.path.insert(0, str(HERE))
import llama3  # noqa: E402
from llama3 import CheckpointError  # noqa: E402

def shard_params(params: dict, n_shards: int) -> dict:
    """params.json for N shards: the same, with n_kv_heads raised when there are more ranks than key/value heads.

    Each rank must hold whole query heads, whole key/value heads and a whole slice of the vocabulary
    and of the FFN. Refuses with the reason when N cannot do that."""
    config = llama3.ModelConfig.from_params(params)
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
    dim = llama3.split_dim_of(key)
    if dim is None:
        return full
    return full.chunk(n_shards, dim=dim)[rank]


def shard_shapes(params: dict, n_shards: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of one rank's file, by key, in Meta's order (all ranks alike)."""
    written = shard_params(params, n_shards)
    shapes = llama3.expected_shapes(llama3.ModelConfig.from_params(written))
    out = {}
    for key, shape in shapes.items():
        dim = llama3.split_dim_of(key)
        out[key] = shape if dim is None else tuple(s // n_shards if i == dim else s for i, s in enumerate(shape))
    return out


def write_meta_shards(
    weights: Mapping[str, torch.Tensor], params: dict, out_dir: Path, n_shards: int, tokenizer_model: Path
) -> dict:
    """Write `weights` (Meta's keys, whole bfloat16 tensors) as N model-parallel shards in out_dir.

    consolidated.{r:02d}.pth holds rank r's slice of every tensor in Meta's key order, each slice a
    contiguous tensor with its own storage; params.json (n_kv_heads raised if key/value heads had to
    be repeated) and tokenizer.model go beside them. A source without output.weight (Llama 3.2's tied
    output) gets one, equal to the embedding: Meta's model always has an output layer and loads strictly.

    Memory stays at one whole tensor: the files' layout is saved first with no data, then filled
    through shared memory maps, one source tensor at a time, in key order (so `weights` may be lazy).
    Returns the params written.
    """
    out_dir = Path(out_dir)
    config = llama3.ModelConfig.from_params(params)
    written = shard_params(params, n_shards)
    kv_repeat = written.get("n_kv_heads", config.n_kv_heads) // config.n_kv_heads
    source_shapes = llama3.expected_shapes(config, tied_output="output.weight" not in weights)
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


class RandomWeights(Mapping):
    """The tensors make_checkpoint.write_checkpoint would write with the same seed, made one at a time.

    Read them in key order, each once (as write_meta_shards does): they come from one random stream."""

    def __init__(self, params: dict, seed=0, embedding_scale=1.0, tied=False, weight_std=None):
        self.shapes = llama3.expected_shapes(llama3.ModelConfig.from_params(params), tied_output=tied)
        self.keys_in_order = list(self.shapes)
        self.next = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.scales = (embedding_scale, weight_std)

    def __getitem__(self, key):
        import make_checkpoint

        if key not in self.shapes:
            raise KeyError(key)
        if self.keys_in_order.index(key) != self.next:
            expected = self.keys_in_order[self.next]
            raise RuntimeError(f"RandomWeights are made in key order, each once: {expected} comes next, not {key}")
        self.next += 1
        t = torch.empty(self.shapes[key], dtype=torch.bfloat16)
        make_checkpoint.fill_random(t, key, self.gen, *self.scales)
        return t

    def __contains__(self, key):  # without making the tensor
        return key in self.shapes

    def __iter__(self):
        return iter(self.keys_in_order)

    def __len__(self):
        return len(self.keys_in_order)


def load_single_file(src_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A one-file Meta checkpoint folder, memory-mapped: (weights, params)."""
    src_dir = Path(src_dir)
    if (src_dir / "consolidated.01.pth").exists():
        raise CheckpointError(
            f"{src_dir} is already sharded (consolidated.01.pth). Resharding reads a single-file checkpoint "
            "(consolidated.00.pth); merge the shards first."
        )
    for name in ("consolidated.00.pth", "params.json", "tokenizer.model"):
        if not (src_dir / name).exists():
            raise CheckpointError(f"{src_dir / name} is missing: --from needs a folder in Meta's layout.")
    weights = torch.load(src_dir / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    params = json.loads((src_dir / "params.json").read_text())
    return weights, params


def reshard(src_dir: Path, out_dir: Path, n_shards: int) -> dict:
    """Split the single-file checkpoint in src_dir into N shards in out_dir; returns the params written."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if out_dir.resolve() == src_dir.resolve():
        raise CheckpointError(f"{out_dir} is the source folder itself: write the shards into another folder.")
    weights, params = load_single_file(src_dir)
    return write_meta_shards(weights, params, out_dir, n_shards, src_dir / "tokenizer.model")


class MergedShards(Mapping):
    """A sharded checkpoint's tensors whole, each joined from its shards' slices only when asked (one at a time)."""

    def __init__(self, src_dir: Path):
        self.config = llama3.read_params(src_dir)
        self.sharded = llama3.load_sharded_weights(src_dir, self.config)
        if self.sharded["output.weight"] is self.sharded["tok_embeddings.weight"]:
            del self.sharded["output.weight"]  # tied: the writer makes it from the embedding

    def __getitem__(self, key):
        w = self.sharded[key]
        return w if isinstance(w, torch.Tensor) else w.merged()

    def __iter__(self):
        return iter(self.sharded)

    def __len__(self):
        return len(self.sharded)


def regroup(src_dir: Path, out_dir: Path, n_shards: int) -> dict:
    """The same weights as the sharded checkpoint in src_dir, cut into N shards in out_dir (memory: one whole
    tensor at a time). Key/value heads the source repeated (more shards than heads) stay repeated.
    Returns the params written."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    params = json.loads((src_dir / "params.json").read_text())
    return write_meta_shards(MergedShards(src_dir), params, out_dir, n_shards, src_dir / "tokenizer.model")


def write_from_cli(args) -> dict:
    """make_checkpoint.py with --shards N or --from DIR: reshard DIR, or write random weights as N shards."""
    if args.source is not None:
        return reshard(args.source, args.out, args.shards)
    import make_checkpoint
    from train_demo import reference_tokenizer_path

    params = make_checkpoint.PRESETS[args.preset] if args.preset else json.loads(args.params)
    tied = args.tied or args.preset in make_checkpoint.TIED_PRESETS
    weights = RandomWeights(params, args.seed, args.embedding_scale, tied, args.weight_std)
    return write_meta_shards(weights, params, args.out, args.shards, reference_tokenizer_path())
