"""The model's steps, notebooks 03 to 09: embeddings and RMSNorm (03), the projections of one head (04),
RoPE (05), scores, mask and softmax (06), every head and the cache they fill (07), the feed-forward
network and a whole layer (08), all layers and the logits (09)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import (
    ROPE_HIGH_FREQ_FACTOR,
    ROPE_LOW_FREQ_FACTOR,
    ROPE_ORIGINAL_CONTEXT,
    ROPE_SCALE_FACTOR,
    ModelConfig,
    progress_bar,
)
from .weights import linear

# ---------------------------------------------------------------------------------------
# 03 Embeddings and RMSNorm
# ---------------------------------------------------------------------------------------


def embed(tok_embeddings: torch.Tensor, token_ids) -> torch.Tensor:
    """[T] ids -> [T, D]: indexing reads only these rows of the memory-mapped table (or its shards)."""
    return tok_embeddings[torch.as_tensor(token_ids, dtype=torch.long, device=tok_embeddings.device)]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (in float32), then by the learned weight."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


# ---------------------------------------------------------------------------------------
# 04 Layer 0, head 0
# ---------------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    wq: torch.Tensor  # [H*d, D]
    wk: torch.Tensor  # [K*d, D]
    wv: torch.Tensor  # [K*d, D]
    wo: torch.Tensor  # [D, H*d]
    w1: torch.Tensor  # [F, D] gate
    w2: torch.Tensor  # [D, F] down
    w3: torch.Tensor  # [F, D] up
    attention_norm: torch.Tensor  # [D]
    ffn_norm: torch.Tensor  # [D]


def layer_weights(weights: dict[str, torch.Tensor], layer: int) -> LayerWeights:
    p = f"layers.{layer}."
    return LayerWeights(
        wq=weights[p + "attention.wq.weight"],
        wk=weights[p + "attention.wk.weight"],
        wv=weights[p + "attention.wv.weight"],
        wo=weights[p + "attention.wo.weight"],
        w1=weights[p + "feed_forward.w1.weight"],
        w2=weights[p + "feed_forward.w2.weight"],
        w3=weights[p + "feed_forward.w3.weight"],
        attention_norm=weights[p + "attention_norm.weight"],
        ffn_norm=weights[p + "ffn_norm.weight"],
    )


def project_heads(x: torch.Tensor, w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[T, D] @ [n*d, D]^T -> [n, T, d]: one projection for all heads, split by head."""
    projected = linear(x, w)
    return projected.view(x.shape[0], n_heads, -1).transpose(0, 1)


def head_qkv(x_normed: torch.Tensor, lw: LayerWeights, config: ModelConfig, head: int):
    """Query head `head`'s queries [T, d], and the keys and values [T, d] of the key/value head it reads."""
    kv_head = head // config.queries_per_kv_head
    q = project_heads(x_normed, lw.wq, config.n_heads)[head]
    k = project_heads(x_normed, lw.wk, config.n_kv_heads)[kv_head]
    v = project_heads(x_normed, lw.wv, config.n_kv_heads)[kv_head]
    return q, k, v


# ---------------------------------------------------------------------------------------
# 05 RoPE via complex numbers
# ---------------------------------------------------------------------------------------


def scale_rope_frequencies(freqs: torch.Tensor, scale_factor: float = ROPE_SCALE_FACTOR) -> torch.Tensor:
    """Slow (long-wavelength) frequencies divided by scale_factor, fast ones kept, a blend between."""
    wavelen = 2 * math.pi / freqs
    low_freq_wavelen = ROPE_ORIGINAL_CONTEXT / ROPE_LOW_FREQ_FACTOR
    high_freq_wavelen = ROPE_ORIGINAL_CONTEXT / ROPE_HIGH_FREQ_FACTOR
    smooth = (ROPE_ORIGINAL_CONTEXT / wavelen - ROPE_LOW_FREQ_FACTOR) / (ROPE_HIGH_FREQ_FACTOR - ROPE_LOW_FREQ_FACTOR)
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, freqs)
    blended = (1 - smooth) * scaled / scale_factor + smooth * scaled
    in_between = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_between, blended, scaled)


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """[d/2] angles per position: theta_i = rope_theta ** (-2i/d), one per pair of dims,
    scaled by config.rope_scale_factor when config.use_scaled_rope."""
    pair_index = torch.arange(0, config.head_dim, 2)[: config.head_dim // 2].float()
    freqs = 1.0 / (config.rope_theta ** (pair_index / config.head_dim))
    if not config.use_scaled_rope:
        return freqs
    if config.rope_scale_factor is None:
        raise ValueError("use_scaled_rope is set but rope_scale_factor is not: 8 for Llama 3.1, 32 for Llama 3.2")
    return scale_rope_frequencies(freqs, config.rope_scale_factor)


def rope_freqs_cis(config: ModelConfig, n_positions: int, start: int = 0) -> torch.Tensor:
    """[positions, d/2] complex64 unit vectors e^(i * m * theta_i) for m = start .. start+n-1."""
    positions = torch.arange(start, start + n_positions, dtype=torch.float32)
    angles = torch.outer(positions, rope_frequencies(config))
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (0,1), (2,3), ... of [..., T, d] by [T, d/2] (in float32)."""
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(x_complex * freqs_cis.to(x.device)).flatten(-2)
    return rotated.type_as(x)


# ---------------------------------------------------------------------------------------
# 06 Scores, the causal mask and softmax
# ---------------------------------------------------------------------------------------


def causal_mask(n_queries: int, n_keys: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """[Tq, Tk]: 0 where a query may look, -inf at keys after it. Queries are the last Tq positions."""
    n_keys = n_queries if n_keys is None else n_keys
    mask = torch.full((n_queries, n_keys), float("-inf"))
    return torch.triu(mask, diagonal=n_keys - n_queries + 1).to(dtype)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """float32 softmax(q k^T / sqrt(d) + mask): [..., Tq, Tk] from [..., Tq, d] queries and [..., Tk, d] keys."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask.to(scores)  # the scores' dtype and device
    return torch.softmax(scores.float(), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for [..., Tq, d] queries and [..., Tk, d] keys/values."""
    return attention_probs(q, k, mask).type_as(q) @ v


# ---------------------------------------------------------------------------------------
# 07 Every head of layer 0
# ---------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of the positions already seen, per layer, each [K, T_seen, d].

    A layer reaches its own part only, through `cache.layer(i)`, so no call can fill another layer's."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def layer(self, i: int) -> "LayerCache":
        if not 0 <= i < len(self.keys):
            raise IndexError(f"layer {i} of a cache for {len(self.keys)} layers")
        return LayerCache(self, i)

    def truncate(self, n_positions: int) -> None:
        """Forget every position from n_positions on (to continue from a shared prefix)."""
        self.keys = [None if k is None else k[:, :n_positions] for k in self.keys]
        self.values = [None if v is None else v[:, :n_positions] for v in self.values]


@dataclass(frozen=True)
class LayerCache:
    """One layer's keys and values in a KVCache (KVCache.layer)."""

    cache: KVCache
    index: int

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's [K, T, d] keys and values; return all of this layer's, [K, T_seen + T, d]."""
        keys, values, i = self.cache.keys, self.cache.values, self.index
        if keys[i] is not None:
            k = torch.cat([keys[i], k], dim=1)
            v = torch.cat([values[i], v], dim=1)
        keys[i], values[i] = k, v
        return k, v


def attention(
    x_normed: torch.Tensor,
    lw: LayerWeights,
    config: ModelConfig,
    freqs_cis: torch.Tensor,
    cache: LayerCache | None = None,
) -> torch.Tensor:
    """All heads at once: [T, D] -> [T, D], before the residual add. With `cache` (this layer's part of a
    KVCache) the new keys and values are appended to it and the queries read all of them."""
    q = apply_rope(project_heads(x_normed, lw.wq, config.n_heads), freqs_cis)  # [H, T, d]
    k = apply_rope(project_heads(x_normed, lw.wk, config.n_kv_heads), freqs_cis)  # [K, T, d]
    v = project_heads(x_normed, lw.wv, config.n_kv_heads)  # [K, T, d]
    if cache is not None:
        k, v = cache.extend(k, v)  # [K, T_seen + T, d]
    # Grouped-query attention: each key/value head serves queries_per_kv_head query heads.
    k = k.repeat_interleave(config.queries_per_kv_head, dim=0)  # [H, Tk, d]
    v = v.repeat_interleave(config.queries_per_kv_head, dim=0)
    mask = causal_mask(q.shape[1], k.shape[1]) if q.shape[1] > 1 else None
    out = attend(q, k, v, mask)  # [H, T, d]
    out = out.transpose(0, 1).reshape(x_normed.shape[0], -1)  # [T, H*d], heads side by side
    return linear(out, lw.wo)


# ---------------------------------------------------------------------------------------
# 08 The feed-forward network, and a whole layer
# ---------------------------------------------------------------------------------------


def feed_forward(x_normed: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
    """SwiGLU: w2( silu(w1 x) * (w3 x) ), [T, D] -> [T, F] -> [T, D]."""
    return linear(torch.nn.functional.silu(linear(x_normed, lw.w1)) * linear(x_normed, lw.w3), lw.w2)


def transformer_layer(
    x: torch.Tensor,
    lw: LayerWeights,
    config: ModelConfig,
    freqs_cis: torch.Tensor,
    cache: LayerCache | None = None,
) -> torch.Tensor:
    """One block: x + attention(norm x), then + feed_forward(norm x)."""
    h = x + attention(rms_norm(x, lw.attention_norm, config.norm_eps), lw, config, freqs_cis, cache)
    return h + feed_forward(rms_norm(h, lw.ffn_norm, config.norm_eps), lw)


# ---------------------------------------------------------------------------------------
# 09 All layers and the answer
# ---------------------------------------------------------------------------------------


def forward(
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    token_ids,
    cache: KVCache | None = None,
    progress: bool = False,
    last_only: bool = False,
) -> torch.Tensor:
    """Token ids -> float32 logits [T, V] (or [1, V] with last_only).

    With a cache, token_ids are the new tokens only; their positions follow the cached ones.
    """
    start = len(cache) if cache is not None else 0
    x = embed(weights["tok_embeddings.weight"], token_ids)
    freqs_cis = rope_freqs_cis(config, x.shape[0], start=start)
    layers = range(config.n_layers)
    if progress:
        layers = progress_bar(layers, total=config.n_layers, desc="layers")
    for i in layers:
        x = transformer_layer(
            x, layer_weights(weights, i), config, freqs_cis, None if cache is None else cache.layer(i)
        )
    return output_logits(x[-1:] if last_only else x, weights, config)


def output_logits(x: torch.Tensor, weights: dict[str, torch.Tensor], config: ModelConfig) -> torch.Tensor:
    """The final norm, then one score per vocabulary token: [T, D] -> float32 [T, V]."""
    x = rms_norm(x, weights["norm.weight"], config.norm_eps)
    return linear(x, weights["output.weight"]).float()


def top_k_tokens(logits: torch.Tensor, tokenizer, k: int = 5) -> list[tuple[int, str, float]]:
    """[V] logits -> the k most likely (id, text, probability)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k)
    return [(int(i), tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]
