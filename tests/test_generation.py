"""Generation (notebook 12): the KV cache changes the cost, never the tokens; sampling is seeded.

Cached and uncached logits are compared with llama3.logits_tolerance: a one-row matmul may
add in another order than the same row inside a [T, D] matmul. In float32 that tolerance is
about 10^-5 of the largest logit, tight enough to catch a cache that is off by one position.
"""

import dataclasses

import pytest
import torch

import llama3
from test_parity import assert_logits_match


def assert_generations_agree(naive, cached, config, dtype=torch.bfloat16):
    """Step by step: the same logits up to rounding; the same token, or a tie after which the sequences
    part (and their logits are no longer comparable)."""
    rel_tolerance = llama3.logits_tolerance(config, dtype)
    for step, (a, b) in enumerate(zip(naive.step_logits, cached.step_logits)):
        assert_logits_match(b[None], a[None], config, dtype)
        if naive.token_ids[step] != cached.token_ids[step]:
            tie = a[naive.token_ids[step]] - a[cached.token_ids[step]]
            assert tie.abs() <= rel_tolerance * a.abs().max()
            return
    assert naive.token_ids == cached.token_ids


def test_cached_and_uncached_agree_at_every_step(checkpoint, prompt_ids):
    c = checkpoint.config
    naive = llama3.generate(checkpoint.weights, c, prompt_ids, max_new_tokens=6, use_cache=False)
    cached = llama3.generate(checkpoint.weights, c, prompt_ids, max_new_tokens=6, use_cache=True)
    assert len(naive.step_logits) == len(cached.step_logits) == 6
    assert_generations_agree(naive, cached, c)


def float32_weights(ck):
    return {k: v.float() for k, v in ck.weights.items()}


@pytest.mark.parametrize("name", ["demo", "smollm2", "gqa2", "llama3.1"])
def test_in_float32_the_cache_agrees_within_float32_rounding(demo, random_checkpoints, name, request):
    if name == "smollm2":
        ck = request.getfixturevalue("real_model")
    else:
        ck = demo if name == "demo" else llama3.load_checkpoint(random_checkpoints[name])
    weights, c = float32_weights(ck), ck.config
    prompt_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, c)
    naive = llama3.generate(weights, c, prompt_ids, max_new_tokens=6, use_cache=False)
    cached = llama3.generate(weights, c, prompt_ids, max_new_tokens=6, use_cache=True)
    assert_generations_agree(naive, cached, c, torch.float32)


def test_float32_tolerance_catches_a_cache_one_position_off(demo):
    """The comparison can fail: a decode step with RoPE one position early differs far beyond rounding."""
    weights, c = float32_weights(demo), demo.config
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, c)
    full = llama3.forward(weights, c, token_ids)[-1]
    cache = llama3.KVCache(c.n_layers)
    llama3.forward(weights, c, token_ids[:-1], cache=cache)
    x = llama3.embed(weights["tok_embeddings.weight"], token_ids[-1:])
    freqs_cis = llama3.rope_freqs_cis(c, 1, start=len(token_ids) - 2)  # one position early
    for layer in range(c.n_layers):
        x = llama3.transformer_layer(x, llama3.layer_weights(weights, layer), c, freqs_cis, cache.layer(layer))
    off_by_one = llama3.output_logits(x, weights, c)[-1]
    relative = float((off_by_one - full).abs().max() / full.abs().max())
    assert relative > 100 * llama3.logits_tolerance(c, torch.float32)


def test_each_step_is_the_plain_forward_of_the_sequence_so_far(demo):
    c = demo.config
    prompt_ids = llama3.encode_prompt(demo.tokenizer, "a transformer reads", c)
    g = llama3.generate(demo.weights, c, prompt_ids, max_new_tokens=5)
    for step, logits in enumerate(g.step_logits):
        full = llama3.forward(demo.weights, c, prompt_ids + g.token_ids[:step])[-1]
        assert_logits_match(logits[None], full[None], c)
        assert g.token_ids[step] == int(full.argmax())


def test_cache_grows_by_one_position_per_token(demo):
    c = demo.config
    prompt_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, c)
    cache = llama3.KVCache(c.n_layers)
    llama3.forward(demo.weights, c, prompt_ids, cache=cache, last_only=True)
    for extra in range(1, 4):
        llama3.forward(demo.weights, c, [220], cache=cache, last_only=True)
        assert len(cache) == len(prompt_ids) + extra
        for layer in range(c.n_layers):
            assert cache.keys[layer].shape == (c.n_kv_heads, len(prompt_ids) + extra, c.head_dim)
            assert cache.values[layer].shape == cache.keys[layer].shape


def test_demo_answers_42_and_stops_at_a_stop_token(demo):
    """The demo's training text puts a newline after each line, so the newline ends its answer."""
    prompt_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    newline = demo.tokenizer.encode("\n")
    g = llama3.generate(demo.weights, demo.config, prompt_ids, max_new_tokens=20, stop_ids=newline)
    assert demo.tokenizer.decode(g.token_ids) == "42\n"
    assert g.stop_reason == "stop token"


def test_demo_continues_an_alternation(demo):
    """'say a b a b ...' lines: every next word is the word two back (a previous-token head's job)."""
    prompt_ids = llama3.encode_prompt(demo.tokenizer, "say life sea life", demo.config)
    g = llama3.generate(demo.weights, demo.config, prompt_ids, max_new_tokens=7)
    assert demo.tokenizer.decode(g.token_ids) == " sea life sea life sea life sea"


def test_stops_at_the_length_limit(demo):
    prompt_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    g = llama3.generate(demo.weights, demo.config, prompt_ids, max_new_tokens=3)  # no stop tokens
    assert len(g.token_ids) == 3 and g.stop_reason == "max_new_tokens"
    g = llama3.generate(demo.weights, demo.config, prompt_ids, max_new_tokens=0)
    assert g.token_ids == [] and g.stop_reason == "max_new_tokens"


def test_stops_at_the_context_length(demo):
    @dataclasses.dataclass(frozen=True)
    class ShortContext(llama3.ModelConfig):
        context_length = 20  # a class attribute in place of the property

    short = ShortContext(**dataclasses.asdict(demo.config))
    prompt_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    for use_cache in (False, True):
        g = llama3.generate(demo.weights, short, prompt_ids, max_new_tokens=10, use_cache=use_cache)
        assert len(prompt_ids) + len(g.token_ids) == 20 and g.stop_reason == "context length"


def test_stop_token_ids_are_metas():
    from llama_models.llama3.tokenizer import Tokenizer

    meta = Tokenizer.get_instance()  # Llama 3.1's tokenizer, with three stop tokens
    assert llama3.stop_token_ids(llama3.load_tokenizer(llama3.DEMO_DIR / "tokenizer.model", "3.1")) == meta.stop_tokens
    # Llama 3's Tokenizer.stop_tokens (meta-llama/llama3, llama/tokenizer.py): <|end_of_text|> and <|eot_id|>.
    llama3_0 = llama3.load_tokenizer(llama3.DEMO_DIR / "tokenizer.model", "3")
    assert llama3.stop_token_ids(llama3_0) == [128001, 128009]
    assert 128008 not in llama3.stop_token_ids(llama3_0)  # <|eom_id|> in 3.1, reserved in Llama 3


def test_temperature_zero_is_the_argmax():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert llama3.sample_next_token(logits) == 1
    assert llama3.sample_next_token(logits, temperature=0.0, top_p=0.1) == 1


def draws(logits, seed, n=30, temperature=1.0, top_p=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [llama3.sample_next_token(logits, temperature, top_p, gen) for _ in range(n)]


def test_sampling_is_deterministic_with_a_seed():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert draws(logits, seed=7) == draws(logits, seed=7)
    assert draws(logits, seed=7) != draws(logits, seed=8)
    assert len(set(draws(logits, seed=7, temperature=2.0))) > 1


def test_generation_with_a_seed_is_reproducible(demo):
    prompt_ids = llama3.encode_prompt(demo.tokenizer, "hello world", demo.config)

    def run(seed, use_cache):
        gen = torch.Generator().manual_seed(seed)
        return llama3.generate(
            demo.weights, demo.config, prompt_ids, 8, temperature=1.5, top_p=0.95, generator=gen, use_cache=use_cache
        ).token_ids

    assert run(0, True) == run(0, True) == run(0, False)


@pytest.mark.parametrize(
    "top_p, kept",
    [(0.5, {0}), (0.6, {0, 1}), (0.75, {0, 1}), (0.76, {0, 1, 2}), (0.9375, {0, 1, 2}), (0.94, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    # Exact binary fractions, shuffled: tokens 0..3 have 8/16, 4/16, 3/16 and 1/16.
    order = torch.tensor([3, 0, 2, 1])
    probs = torch.tensor([0.5, 0.25, 0.1875, 0.0625])[order]
    filtered = llama3.top_p_filter(probs, top_p)
    assert {int(order[i]) for i in torch.nonzero(filtered).flatten()} == kept
    assert torch.allclose(filtered.sum(), torch.tensor(1.0))
    expected = probs * torch.tensor([float(int(t) in kept) for t in order])
    assert torch.allclose(filtered, expected / expected.sum())


def test_top_p_on_random_distributions():
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        probs = torch.softmax(3 * torch.randn(200, generator=gen), dim=-1)
        top_p = float(torch.rand(1, generator=gen))
        n_kept = int((llama3.top_p_filter(probs, top_p) > 0).sum())
        top = torch.sort(probs, descending=True).values
        assert top[:n_kept].sum() >= top_p  # enough mass
        assert n_kept == 1 or top[: n_kept - 1].sum() < top_p  # and no token more than needed


def test_samples_come_only_from_the_nucleus():
    probs = torch.tensor([0.5, 0.25, 0.1875, 0.0625])
    assert set(draws(probs.log(), seed=3, n=200, top_p=0.6)) == {0, 1}


def test_truncated_cache_continues_like_a_fresh_one(demo):
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    cache = llama3.KVCache(demo.config.n_layers)
    llama3.forward(demo.weights, demo.config, token_ids, cache=cache)
    cache.truncate(10)
    assert len(cache) == 10 and all(k.shape[1] == 10 for k in cache.keys + cache.values)
    continued = llama3.forward(demo.weights, demo.config, token_ids[10:], cache=cache)
    fresh = llama3.forward(demo.weights, demo.config, token_ids)[10:]
    assert_logits_match(continued, fresh, demo.config)
