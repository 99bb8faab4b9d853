"""Generation and chat (notebooks 12 and 13): sampling, the key/value cache loop, the rounding tolerance,
Llama 3's chat format."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig, PromptError
from .model import KVCache, forward
from .tokens import is_llama3_tokenizer, tokenizer_release

# ---------------------------------------------------------------------------------------
# 12 Generation with a KV cache
# ---------------------------------------------------------------------------------------

# The tokens that end a generation, per tokenizer release, as Meta's Tokenizer.stop_tokens lists them:
# Llama 3 (meta-llama/llama3) has two; Llama 3.1 (llama-models) adds <|eom_id|>, the end of a
# message that waits for a tool's answer.
STOP_TOKENS = {
    "3": ("<|end_of_text|>", "<|eot_id|>"),
    "3.1": ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
}
STOP_TOKENS["3.2"] = STOP_TOKENS["3.1"]


def stop_token_ids(tokenizer) -> list[int]:
    """The ids of the stop tokens of the tokenizer's release (3.2 has 3.1's); for another model's tokenizer,
    the ones it names itself (SmolLM2's tokenizer_config.json: its eos_token, <|im_end|>)."""
    if not is_llama3_tokenizer(tokenizer):
        return [tokenizer.encode_single_token(name) for name in tokenizer.stop_tokens]
    return [tokenizer.special_id(name) for name in STOP_TOKENS[tokenizer.release]]


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[V] probabilities -> the same, zero outside the smallest set (most likely first) whose mass
    reaches top_p, renormalised. Meta keeps one more token when the mass before it equals top_p exactly."""
    if top_p >= 1.0:
        return probs
    # Sorting all of the vocabulary is slow; the nucleus is nearly always among the few most likely.
    k = min(64, probs.shape[-1])
    while True:
        probs_sorted, order = torch.topk(probs, k)  # the k most likely, most likely first
        if probs_sorted.sum() >= top_p or k == probs.shape[-1]:
            break
        k = min(8 * k, probs.shape[-1])
    mass_before = torch.cumsum(probs_sorted, dim=-1) - probs_sorted
    probs_sorted = probs_sorted.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, probs_sorted)
    return kept / kept.sum(-1, keepdim=True)


def same_nucleus(probs: torch.Tensor, kept_a: torch.Tensor, kept_b: torch.Tensor) -> bool:
    """Two top-p filters of the same [V] probabilities agree on which tokens may be drawn (kept_a, kept_b: [V]
    bool), up to a tie at the cutoff. Both keep every token more likely than the least likely one kept (the
    cutoff), neither keeps a less likely one, and both keep equally many of the tokens whose probability equals
    the cutoff: those are interchangeable, and a sort may put any of them first (real bfloat16 logits tie often:
    hundreds of tokens can share one value)."""
    if not kept_a.any() or not kept_b.any():
        return bool(kept_a.any() == kept_b.any())
    cutoff = probs[kept_a].min()
    if probs[kept_b].min() != cutoff:
        return False
    above, below, tied = probs > cutoff, probs < cutoff, probs == cutoff
    both_above = bool(kept_a[above].all() and kept_b[above].all())
    none_below = not bool(kept_a[below].any() or kept_b[below].any())
    return both_above and none_below and int(kept_a[tied].sum()) == int(kept_b[tied].sum())


def sample_next_token(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> int:
    """[V] logits -> one token id: the argmax at temperature 0, else a draw from the top-p nucleus
    of softmax(logits / temperature) (in float32)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = top_p_filter(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Generation:
    token_ids: list[int]  # the new tokens, a stop token included
    stop_reason: str  # "stop token", "max_new_tokens" or "context length"
    step_logits: list[torch.Tensor]  # [V] float32 logits that chose each new token


# How far two correct computations of the same logits may differ. See logits_tolerance.
ROUNDING_MARGIN = 2


def logits_tolerance(config: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> float:
    """How far apart, relative to the largest |logit|, two computations of the same forward pass may
    be when they differ only in the order in which they add numbers: ours against Meta's reference
    (another matmul kernel may be picked), cached against uncached (one row against many rows).

    The argument. A floating-point number keeps a fixed number of significant bits: 8 for bfloat16,
    24 for float32, so neighbouring numbers are at most eps = 2^-7 (bfloat16) or 2^-23 (float32) of the
    value apart (torch.finfo(dtype).eps). Adding in another order changes a sum's last bits:
    - with bfloat16 weights the matmul adds in float32 and rounds once, to bfloat16, so another order
      moves an output by at most one step, eps of its value (most of the time not at all);
    - in float32 every addition rounds, and n additions in another order drift apart like a random
      walk of n steps: about sqrt(n) * eps, n the longest sum (the FFN's hidden size, or dim).
    The logits are rounded last, which alone allows one such step of the largest logit. Every layer
    adds its own rounding differences to the residual stream, and RMSNorm rescales the stream, so
    the relative difference neither vanishes nor (in a trained model) explodes; independent
    differences from n_layers layers add up like a random walk, sqrt(n_layers) steps. So
    (1 + sqrt(n_layers)) steps, times ROUNDING_MARGIN = 2 for what the random walk leaves out (random
    weights amplify differences). How much of this bound real computations use is measured on random
    weights of several shapes, scales and seeds by scripts/bench/rounding_trials.py and, at 8B's full
    shape, by scripts/bench/tolerance_trials.py (`make tolerance-8b`); the README gives the results.
    A logit differing by more is a real difference (a wrong position, a missing key), not rounding.
    """
    eps = torch.finfo(dtype).eps
    steps_per_matmul = (
        1.0 if dtype in (torch.bfloat16, torch.float16) else math.sqrt(max(config.dim, config.ffn_hidden_dim))
    )
    return ROUNDING_MARGIN * (1 + math.sqrt(config.n_layers)) * steps_per_matmul * eps


def same_prediction(logits: torch.Tensor, reference: torch.Tensor, rel_tolerance: float) -> bool:
    """[V] logits agree with reference's up to rounding: every logit within rel_tolerance of the largest
    |logit| (logits_tolerance), and the top token is reference's top, or a token the reference scores
    within that much of its top (a tie that rounding may break either way)."""
    tolerance = rel_tolerance * reference.abs().max()
    close = (logits - reference).abs().max() <= tolerance
    return bool(close) and bool(reference[int(logits.argmax())] >= reference.max() - tolerance)


def generate(
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    prompt_ids,
    max_new_tokens: int,
    stop_ids=(),
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    run=None,
) -> Generation:
    """Continue prompt_ids one token at a time until a stop token, max_new_tokens or the context length.

    use_cache=False runs the whole sequence again at every step; use_cache=True runs the prompt
    once and then only the newest token, reading earlier keys and values from a KVCache.
    `run(token_ids, cache, last_only)` is the forward pass, by default forward(weights, config, ...);
    tensor parallelism (parallel.py) passes its own.
    """
    if run is None:
        run = lambda ids, cache, last_only: forward(weights, config, ids, cache=cache, last_only=last_only)  # noqa: E731
    cache = KVCache(config.n_layers) if use_cache else None
    sequence, new, step_logits = list(prompt_ids), [], []
    pending = list(prompt_ids)  # what the next forward pass must read
    while True:
        if len(new) >= max_new_tokens:
            return Generation(new, "max_new_tokens", step_logits)
        if len(sequence) >= config.context_length:
            return Generation(new, "context length", step_logits)
        logits = run(pending if use_cache else sequence, cache, True)[-1]
        token = sample_next_token(logits, temperature, top_p, generator)
        sequence.append(token)
        new.append(token)
        step_logits.append(logits)
        pending = [token]
        if token in stop_ids:
            return Generation(new, "stop token", step_logits)


# ---------------------------------------------------------------------------------------
# 13 Chat
# ---------------------------------------------------------------------------------------


CHAT_ROLES = {"3": ("system", "user", "assistant"), "3.1": ("system", "user", "assistant", "tool", "ipython")}
CHAT_ROLES["3.2"] = CHAT_ROLES["3.1"]


def encode_header(tokenizer, role: str) -> list[int]:
    """<|start_header_id|>role<|end_header_id|> and a blank line. Llama 3 knows three roles; Llama 3.1
    added tool output, which Meta's llama-models writes as the role ipython."""
    release = tokenizer_release(tokenizer)  # another model's tokenizer (SmolLM2's) has no chat format of Llama's
    if role not in CHAT_ROLES[release]:
        raise PromptError(
            f"The role {role!r} is not in Llama {release}'s chat format, whose roles are "
            f"{', '.join(CHAT_ROLES[release])} (tool output came with Llama 3.1)."
        )
    return (
        [tokenizer.special_id("<|start_header_id|>")]
        + tokenizer.encode("ipython" if role == "tool" else role, disallowed_special=())
        + [tokenizer.special_id("<|end_header_id|>")]
        + tokenizer.encode("\n\n", disallowed_special=())
    )


def message_text(tokenizer, content: str) -> str:
    """The text of a turn as its release writes it: Llama 3's ChatFormat strips the content's leading and
    trailing whitespace (meta-llama/llama3, llama/tokenizer.py); Llama 3.1's (llama-models) keeps it."""
    return content.strip() if tokenizer.release == "3" else content


def encode_message(tokenizer, message: dict) -> list[int]:
    """One turn: header, the content as plain text (special-token names in it are not special), <|eot_id|>."""
    return (
        encode_header(tokenizer, message["role"])
        + tokenizer.encode(message_text(tokenizer, message["content"]), disallowed_special=())
        + [tokenizer.special_id("<|eot_id|>")]
    )


def encode_dialog(tokenizer, messages: list[dict]) -> list[int]:
    """An Instruct model's prompt: <|begin_of_text|>, every turn, then an open assistant header for the
    model to complete, by the rules of the tokenizer's release.
    messages: [{"role": "system" | "user" | "assistant" (| "tool" from 3.1 on), "content": str}]."""
    tokenizer_release(tokenizer)  # another model's tokenizer (SmolLM2's) has other special tokens: says so
    token_ids = [tokenizer.special_id("<|begin_of_text|>")]
    for message in messages:
        token_ids += encode_message(tokenizer, message)
    return token_ids + encode_header(tokenizer, "assistant")
