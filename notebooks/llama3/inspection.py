"""Looking inside (notebooks 10 and 11): every layer's attention weights kept, the heads measured, the logit lens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig, progress_bar
from .model import (
    LayerWeights,
    apply_rope,
    attention_probs,
    causal_mask,
    embed,
    layer_weights,
    output_logits,
    project_heads,
    rms_norm,
    rope_freqs_cis,
    transformer_layer,
)
from .tokens import token_texts

# ---------------------------------------------------------------------------------------
# 10 The attention explorer
# ---------------------------------------------------------------------------------------


def attention_weights(
    x_normed: torch.Tensor, lw: LayerWeights, config: ModelConfig, freqs_cis: torch.Tensor
) -> torch.Tensor:
    """[T, D] -> [H, T, T] float32: every head's softmax rows, computed as `attention` computes them.

    `attend` rounds these float32 probabilities to the weights' dtype before multiplying the values.
    """
    q = apply_rope(project_heads(x_normed, lw.wq, config.n_heads), freqs_cis)  # [H, T, d]
    k = apply_rope(project_heads(x_normed, lw.wk, config.n_kv_heads), freqs_cis)  # [K, T, d]
    k = k.repeat_interleave(config.queries_per_kv_head, dim=0)  # [H, T, d]
    return attention_probs(q, k, causal_mask(q.shape[1], k.shape[1]) if q.shape[1] > 1 else None)


@dataclass
class LayerTrace:
    """What every layer did to a prompt: kept small (no weights), about 1 MB for 8B and 17 tokens."""

    residuals: list[torch.Tensor]  # n_layers + 1 streams [T, D]: the embeddings, then after each layer
    attention: list[torch.Tensor]  # n_layers tensors [H, T, T] float32: attention_weights per layer


def trace_layers(
    weights: dict[str, torch.Tensor], config: ModelConfig, token_ids, progress: bool = False
) -> LayerTrace:
    """Run `forward`'s layers on the prompt, keeping each layer's attention weights and output stream."""
    x = embed(weights["tok_embeddings.weight"], token_ids)
    freqs_cis = rope_freqs_cis(config, x.shape[0])
    residuals, attention_per_layer = [x], []
    layers = range(config.n_layers)
    if progress:
        layers = progress_bar(layers, total=config.n_layers, desc="layers")
    for i in layers:
        lw = layer_weights(weights, i)
        x_normed = rms_norm(x, lw.attention_norm, config.norm_eps)
        attention_per_layer.append(attention_weights(x_normed, lw, config, freqs_cis))
        x = transformer_layer(x, lw, config, freqs_cis)  # the very call forward makes
        residuals.append(x)
    return LayerTrace(residuals, attention_per_layer)


# What the demo checkpoint's heads learned, measured on any [H, T, T] attention map (the
# demo model's corpus is described in the README and in notebook 15).

# The words of DEFAULT_PROMPT that decide the demo model's answer: its corpus looks the number
# up by the noun after "question of" and the noun after ", the" (scripts/demo_corpus.py).
ANSWER_WORDS = ("life", "universe")

# A prompt made of one span said twice, in the demo corpus's "say ..." form: from its second
# "say" on, every token repeats the token ECHO_PERIOD positions earlier.
ECHO_SPAN = "life to the whole sky and old answer is first"
ECHO_PROMPT = f"say {ECHO_SPAN}. say {ECHO_SPAN}."
ECHO_PERIOD = len(ECHO_SPAN.split()) + 2  # "say", the span's words, "."


def word_positions(tokenizer, token_ids, words) -> list[int]:
    """Positions of the tokens whose text, without its leading space, is one of `words`."""
    return [i for i, text in enumerate(token_texts(tokenizer, token_ids)) if text.strip() in words]


def previous_token_scores(attention: torch.Tensor) -> torch.Tensor:
    """[H, T, T] -> [H]: the mean over t >= 1 of the weight query t puts on position t-1."""
    return attention.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def sink_scores(attention: torch.Tensor) -> torch.Tensor:
    """[H, T, T] -> [H]: the mean over t >= 1 of the weight query t puts on position 0 (<|begin_of_text|>)."""
    return attention[:, 1:, 0].mean(-1)


def attention_from_last(attention: torch.Tensor, positions) -> torch.Tensor:
    """[H, T, T] -> [H]: the total weight the last position puts on `positions`."""
    return attention[:, -1, list(positions)].sum(-1)


def induction_scores(attention: torch.Tensor, period: int) -> torch.Tensor:
    """[H, T, T] -> [H]: on a prompt that repeats itself with `period`, the mean over the repeat
    (t > period) of the weight query t puts on t - period + 1, the token that followed the last time."""
    t = torch.arange(period + 1, attention.shape[-1])
    return attention[:, t, t - period + 1].mean(-1)


def head_scores(trace: "LayerTrace", score, *args) -> torch.Tensor:
    """[n_layers, H]: score(attention, *args) for every layer of a trace_layers result."""
    return torch.stack([score(a, *args) for a in trace.attention])


# ---------------------------------------------------------------------------------------
# 11 The logit lens
# ---------------------------------------------------------------------------------------


def logit_lens(residual: torch.Tensor, weights: dict[str, torch.Tensor], config: ModelConfig) -> torch.Tensor:
    """[T, D] residual stream after any layer -> float32 logits [T, V], through forward's final norm and output."""
    return output_logits(residual, weights, config)


def token_rank(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """[..., V] logits -> [...] rank of token_id: 1 when it scores highest, 1 + the number scoring higher."""
    return 1 + (logits > logits[..., token_id, None]).sum(-1)


def lens_ranks(trace: "LayerTrace", weights: dict[str, torch.Tensor], config: ModelConfig, token_id: int) -> list[int]:
    """Rank of token_id at the last position, read through the logit lens after the embeddings
    (index 0) and after every layer (index i + 1 for layer i)."""
    return [int(token_rank(logit_lens(r[-1:], weights, config)[0], token_id)) for r in trace.residuals]


def first_top1(ranks: list[int]) -> int | None:
    """The first index of lens_ranks at which the token is top-1 (None if it never is)."""
    return next((i for i, rank in enumerate(ranks) if rank == 1), None)


def copy_accuracy(logits: torch.Tensor, token_ids, period: int) -> float:
    """On a prompt that repeats itself with `period`: the share of the repeat's next tokens
    (t > period) that the greedy prediction [T, V] gets right."""
    ids = torch.as_tensor(token_ids)
    t = torch.arange(period + 1, len(ids) - 1)
    return float((logits[t].argmax(-1).cpu() == ids[t + 1]).float().mean())
