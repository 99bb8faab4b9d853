"""Tensor parallelism across processes (notebook 18 and scripts/run_tp.py): Meta's shards
run the way Meta's model-parallel code runs them, one process per shard, over torch.distributed.

`torchrun` starts one process per shard (a *rank*), on one machine or several; rank r memory-maps only
consolidated.0r.pth and holds n_heads/N query heads, n_kv_heads/N key/value heads, 1/N of the FFN's hidden
units and 1/N of the vocabulary. The forward pass is the walkthrough's own (model.py's functions on the
rank's slices); the ranks meet 2 + 2 * n_layers times per forward pass: at the embedding (an all_reduce),
after `wo` and after `w2` in every layer (an all_reduce of the partial sums each), and at the logits (an
all_gather of the vocabulary slices).
torch.distributed moves the numbers: gloo between CPU processes, NCCL between GPUs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import checkpoint_layout
from .config import CheckpointError, ModelConfig
from .formats.meta import SHARD_FILE, check_shard, read_pth
from .generation import Generation, generate
from .model import KVCache, LayerCache, attention, embed, feed_forward, layer_weights, rms_norm, rope_freqs_cis
from .shapes import expected_shapes
from .weights import linear

# How long a rank waits for the others in one collective before it gives up (seconds; $LLAMA3_TP_TIMEOUT).
# Short, so that a rank left waiting by a lost peer fails within seconds instead of torch's default 30 minutes.
DEFAULT_TP_TIMEOUT = 30.0
# Test hook: "r:k" makes rank r exit abruptly (os._exit(1)) after layer k, as a crashed machine would;
# "r:k:hang" makes it stop answering instead, as a stuck one would.
FAIL_AT_ENV = "LLAMA3_TP_FAIL_AT"
# Debug hook: a folder where each rank writes the memory maps of its process (/proc/self/maps) as
# rank-R.maps once its forward passes are done (run_tp.py): which files a rank has mapped, e.g. its own shard only.
DUMP_MAPS_ENV = "LLAMA3_TP_DUMP_MAPS"

_collective_seconds: list[float] | None = None  # see time_collectives


def time_collectives(seconds: list[float] | None) -> None:
    """Benchmark hook (scripts/bench_tp.py): from now on every all_reduce and all_gather of the forward pass
    appends its wall seconds to `seconds`; None turns timing off, the default. Off, a collective costs one
    `is None` test more; on, it costs two clock readings. Timing changes no result."""
    global _collective_seconds
    _collective_seconds = seconds


def _all_reduce(tensor: torch.Tensor) -> None:
    if _collective_seconds is None:
        dist.all_reduce(tensor)
    else:
        _timed(lambda: dist.all_reduce(tensor), tensor)


def _all_gather(slices: list[torch.Tensor], tensor: torch.Tensor) -> None:
    if _collective_seconds is None:
        dist.all_gather(slices, tensor)
    else:
        _timed(lambda: dist.all_gather(slices, tensor), tensor)


def _timed(collective, tensor: torch.Tensor) -> None:
    """Wall seconds of one collective into the list time_collectives was given. gloo's call returns when it is
    done; NCCL's returns before the GPU has done it, so the GPU is waited for on both sides."""
    wait = torch.cuda.synchronize if tensor.is_cuda else (lambda: None)
    wait()
    started = time.perf_counter()
    collective()
    wait()
    _collective_seconds.append(time.perf_counter() - started)


def dump_maps(rank: int) -> None:
    """With $LLAMA3_TP_DUMP_MAPS set to a folder: this process's /proc/self/maps to rank-R.maps there."""
    folder = os.environ.get(DUMP_MAPS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank-{rank}.maps").write_text(Path("/proc/self/maps").read_text())


def tp_timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("LLAMA3_TP_TIMEOUT", DEFAULT_TP_TIMEOUT)))


def init_tensor_parallel() -> tuple[int, int, torch.device]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR, ... in the environment):
    NCCL and this process's GPU where there is one, else gloo on the CPU. Returns rank, world size, device."""
    if "RANK" not in os.environ:
        raise RuntimeError("not started by torchrun: run `torchrun --nproc-per-node N scripts/run_tp.py`")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=tp_timeout())
    return dist.get_rank(), dist.get_world_size(), device


# ---------------------------------------------------------------------------------------
# One rank's shard
# ---------------------------------------------------------------------------------------


@dataclass
class RankShard:
    """What rank `rank` of `world_size` holds: its own file's slices, memory-mapped (or on its GPU)."""

    rank: int
    world_size: int
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # by Meta's names; split weights are this rank's slice
    heads_config: ModelConfig  # the config as attention sees this rank's heads (see local_heads_config)
    vocab_start: int  # this rank's rows of the embedding table and of output: ids vocab_start .. vocab_end-1
    vocab_end: int

    @property
    def device(self) -> torch.device:
        return self.weights["norm.weight"].device


def shard_path(ckpt_dir: Path, rank: int) -> Path:
    return ckpt_dir / f"consolidated.{rank:02d}.pth"


def local_heads_config(config: ModelConfig, world_size: int) -> ModelConfig:
    """The config of one rank's slice of attention: n_heads/N query heads and n_kv_heads/N key/value heads of
    the same head_dim (so dim/N). model.attention run with it on the rank's wq, wk, wv, wo slices computes
    exactly this rank's heads, and its last matmul, with wo's columns for these heads, a partial sum."""
    return dataclasses.replace(
        config,
        dim=config.dim // world_size,
        n_heads=config.n_heads // world_size,
        n_kv_heads=config.n_kv_heads // world_size,
    )


def shard_count_of(shard: dict, config: ModelConfig) -> int | None:
    """How many shards the checkpoint this file belongs to was cut into, told from its query projection's rows."""
    wq = shard.get("layers.0.attention.wq.weight")
    if not isinstance(wq, torch.Tensor) or wq.dim() != 2 or wq.shape[0] == 0 or config.dim % wq.shape[0]:
        return None
    return config.dim // wq.shape[0]


def load_rank_shard(ckpt_dir: Path, config: ModelConfig, rank: int, world_size: int, device=None) -> RankShard:
    """consolidated.0r.pth for rank r, memory-mapped (weights_only), checked against params.json: every split
    weight 1/world_size of the whole along Meta's split dimension, and the world size the file's shard count."""
    path = shard_path(ckpt_dir, rank)
    if ckpt_dir.is_dir() and not path.exists():
        found = sorted(p.name for p in ckpt_dir.iterdir() if SHARD_FILE.fullmatch(p.name))
        raise CheckpointError(
            f"{path} is missing: rank {rank} of {world_size} reads it. Every machine needs params.json, "
            "tokenizer.model and the shard files of the ranks it runs (rank r reads consolidated.0r.pth); "
            f"this folder holds {', '.join(found) or 'no shard'}. Copy the missing shard there, and start as many "
            "processes as the checkpoint has shards. On several machines, torchrun's static rendezvous (--node-rank, "
            "--master-addr, --master-port) gives machine k the ranks k*nproc-per-node onwards; its c10d rendezvous "
            "gives out ranks in its own order, so there every machine needs every shard."
        )
    layout = checkpoint_layout(ckpt_dir)  # params.json and tokenizer.model beside the shards
    if layout == "huggingface":
        raise CheckpointError(
            f"{ckpt_dir} is a Hugging Face folder; tensor parallelism runs on Meta's consolidated.*.pth shards."
        )
    shard = read_pth(path)
    n_cut = shard_count_of(shard, config)
    if n_cut is not None and n_cut != world_size:
        what = (
            "holds the whole model"
            if n_cut == 1
            else f"is one of {n_cut} shards (its wq holds {config.dim // n_cut} of {config.dim} rows)"
        )
        raise CheckpointError(
            f"{path} {what}, but torchrun started {world_size} processes. Start exactly {n_cut}, one per shard "
            f"file: `--nproc-per-node {n_cut}` on one machine (or --nnodes times --nproc-per-node = {n_cut})."
        )
    if config.n_heads % world_size or config.n_kv_heads % world_size:
        raise CheckpointError(
            f"{world_size} processes do not divide params.json's {config.n_heads} query heads and {config.n_kv_heads} "
            f"key/value heads ({ckpt_dir / 'params.json'}): Meta's code gives every rank whole heads. Run as many "
            "processes as the checkpoint has shards."
        )
    tied = "output.weight" not in shard
    want = expected_shapes(config, tied_output=tied)
    check_shard(path, shard, want, world_size, ckpt_dir / "params.json")
    if world_size > 1 and shard["tok_embeddings.weight"].shape[0] != config.vocab_size // world_size:
        raise CheckpointError(
            f"{path}: the embedding table is split over dim (Llama 2's convention); Llama 3's is split over the "
            "vocabulary, which is what this tensor-parallel code runs."
        )
    weights = {key: shard[key] for key in want}
    if device is not None and torch.device(device).type != "cpu":
        weights = {key: w.to(device) for key, w in weights.items()}
    weights["output.weight"] = weights["tok_embeddings.weight"] if tied else weights["output.weight"]
    rows = config.vocab_size // world_size
    return RankShard(
        rank, world_size, path, config, weights, local_heads_config(config, world_size), rank * rows, (rank + 1) * rows
    )


def exchange_errors(error: str | None) -> list[str | None]:
    """Every rank's error message (or None), on every rank: a collective, so it is also a barrier. A rank that
    failed to load tells the others, and all of them stop together instead of waiting for it forever."""
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return errors


def first_error(errors: list[str | None]) -> str | None:
    """The message rank 0 prints: its own error, else the first rank's that has one, naming that rank."""
    if errors[0] is not None:
        return errors[0]
    return next((f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None), None)


# ---------------------------------------------------------------------------------------
# The forward pass, one rank's share of it
# ---------------------------------------------------------------------------------------


def vocab_parallel_embed(shard: RankShard, token_ids) -> torch.Tensor:
    """[T] ids -> [T, D] on every rank (Meta's VocabParallelEmbedding): each rank looks up the ids in its own
    vocabulary range and leaves zeros for the others; the all_reduce adds them. Exact in bfloat16: for every
    element one rank adds its row and the others add 0."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=shard.device)
    here = (ids >= shard.vocab_start) & (ids < shard.vocab_end)
    local_ids = torch.where(here, ids - shard.vocab_start, 0)
    rows = embed(shard.weights["tok_embeddings.weight"], local_ids)
    rows = rows.masked_fill(~here[:, None], 0)
    _all_reduce(rows)
    return rows


def all_reduce_partial_sums(partial: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's [T, D] partial sum of a row-parallel matmul (wo, w2): one all_reduce.

    Added in float32 and rounded to bfloat16 once, as the one-process ShardedWeight.linear adds them, so the
    two agree (for 2 ranks to the bit; with more, gloo may add in another order, which float32 absorbs before
    the one rounding nearly always). Meta's fairscale RowParallelLinear all-reduces the bfloat16 partials
    themselves (half the bytes, a rounding per addition): the same numbers within llama3.logits_tolerance.
    """
    summed = partial.float()
    _all_reduce(summed)
    return summed.to(partial.dtype)


def tp_transformer_layer(
    x: torch.Tensor, shard: RankShard, layer: int, freqs_cis: torch.Tensor, cache: LayerCache | None = None
) -> torch.Tensor:
    """One block on this rank's heads and hidden units: x + sum over ranks of attention(norm x), then
    + sum over ranks of feed_forward(norm h). x [T, D] is whole and the same on every rank. `cache` is this
    layer's part of the rank's KVCache (its own key/value heads)."""
    c = shard.config
    lw = layer_weights(shard.weights, layer)  # this rank's slices: wq [H/N*d, D], wo [D, H/N*d], w2 [D, F/N]
    attention_partial = attention(rms_norm(x, lw.attention_norm, c.norm_eps), lw, shard.heads_config, freqs_cis, cache)
    h = x + all_reduce_partial_sums(attention_partial)
    ffn_partial = feed_forward(rms_norm(h, lw.ffn_norm, c.norm_eps), lw)
    return h + all_reduce_partial_sums(ffn_partial)


def _fail_here(shard: RankShard, layer: int) -> None:
    spec = os.environ.get(FAIL_AT_ENV, "").split(":")
    if spec[:2] == [str(shard.rank), str(layer)]:
        if spec[2:] == ["hang"]:
            while True:  # the others wait for it until the process group's timeout
                time.sleep(1)
        os._exit(1)  # no cleanup, no message: as a machine that loses power


def vocab_parallel_logits(x: torch.Tensor, shard: RankShard) -> torch.Tensor:
    """The final norm and this rank's vocabulary slice of the logits, then an all_gather: float32 [T, V] on every
    rank. Every rank gets them all (not only rank 0), so that every rank picks the same next token itself."""
    x = rms_norm(x, shard.weights["norm.weight"], shard.config.norm_eps)
    local_logits = linear(x, shard.weights["output.weight"])  # [T, V/N], bfloat16
    slices = [torch.empty_like(local_logits) for _ in range(shard.world_size)]
    _all_gather(slices, local_logits.contiguous())  # bfloat16, as the one-process forward joins them
    return torch.cat(slices, dim=-1).float()


def tp_forward(shard: RankShard, token_ids, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
    """Token ids -> float32 logits [T, V] (or [1, V] with last_only), the same on every rank. Every rank must call
    it with the same ids. With a cache (holding this rank's key/value heads only), token_ids are the new tokens."""
    start = len(cache) if cache is not None else 0
    x = vocab_parallel_embed(shard, token_ids)
    freqs_cis = rope_freqs_cis(shard.config, x.shape[0], start=start)
    for layer in range(shard.config.n_layers):
        x = tp_transformer_layer(x, shard, layer, freqs_cis, None if cache is None else cache.layer(layer))
        _fail_here(shard, layer)
    return vocab_parallel_logits(x[-1:] if last_only else x, shard)


def tp_generate(shard: RankShard, prompt_ids, max_new_tokens: int, stop_ids=()) -> Generation:
    """Greedy generation (generation.generate) with tp_forward and a KVCache per rank, holding this rank's
    key/value heads only. Every rank holds the same logits, so every rank's argmax picks the same token and
    no rank needs to be told it."""
    return generate(
        None, shard.config, prompt_ids, max_new_tokens, stop_ids,
        run=lambda ids, cache, last_only: tp_forward(shard, ids, cache, last_only),
    )  # fmt: skip


def cache_bytes(cache: KVCache) -> int:
    """Bytes of keys and values a rank's cache holds."""
    return sum(t.numel() * t.element_size() for t in cache.keys + cache.values if t is not None)
