"""The walkthrough's module against Meta's reference implementation (llama_models.llama3).

Tolerance: both run the same bfloat16 weights with bfloat16 matmuls and float32 norms, RoPE
and softmax at the same places, so they agree to the bit on this torch build. A different
BLAS kernel may sum a dot product in another order, which can flip the last bit of a
bfloat16 activation and carry through the layers: llama3.logits_tolerance(config) bounds
that (its docstring gives the argument), and the top-1 token must agree up to a tie within it.
The single steps (RMSNorm, RoPE, attention, the feed-forward network, a layer) are compared exactly.
"""

import pytest
import torch

import llama3


def assert_logits_match(ours: torch.Tensor, reference: torch.Tensor, config, dtype=torch.bfloat16) -> None:
    """[T, V] logits equal up to rounding (llama3.logits_tolerance), position by position, top-1 included."""
    assert ours.shape == reference.shape
    rel_tolerance = llama3.logits_tolerance(config, dtype)
    for position, (a, b) in enumerate(zip(ours, reference)):
        diff, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert diff <= rel_tolerance * scale, f"position {position}: max |diff| = {diff} > {rel_tolerance} * {scale}"
        assert llama3.same_prediction(a, b, rel_tolerance), f"position {position}: top-1 differs beyond a tie"


def test_final_logits_match_meta_reference(checkpoint, prompt_ids):
    ours = llama3.forward(checkpoint.weights, checkpoint.config, prompt_ids)
    reference = llama3.meta_reference_logits(checkpoint, prompt_ids)
    assert_logits_match(ours, reference, checkpoint.config)


def test_demo_checkpoint_answers_42_like_meta(demo):
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    assert len(token_ids) == 17
    ours = llama3.forward(demo.weights, demo.config, token_ids)[-1]
    reference = llama3.meta_reference_logits(demo, token_ids)[-1]
    assert int(ours.argmax()) == int(reference.argmax()) == 2983
    assert demo.tokenizer.decode([2983]) == "42"


@pytest.fixture
def reference_layer0(checkpoint, prompt_ids):
    """Meta's model, its layer 0, and layer 0's input for the prompt."""
    model = llama3.meta_reference_model(checkpoint, max_seq_len=len(prompt_ids))
    x = llama3.embed(checkpoint.weights["tok_embeddings.weight"], prompt_ids)
    return model, model.layers[0], x


def test_rms_norm_matches_meta(checkpoint, reference_layer0):
    _, layer, x = reference_layer0
    ours = llama3.rms_norm(x, checkpoint.weights["layers.0.attention_norm.weight"], checkpoint.config.norm_eps)
    assert torch.equal(ours, layer.attention_norm(x))


def test_rope_table_matches_meta(checkpoint, reference_layer0, prompt_ids):
    model, _, _ = reference_layer0
    ours = llama3.rope_freqs_cis(checkpoint.config, len(prompt_ids))
    assert torch.equal(ours, model.freqs_cis[: len(prompt_ids)])


def test_apply_rope_matches_meta(checkpoint, prompt_ids):
    from llama_models.llama3.model import apply_rotary_emb

    c = checkpoint.config
    freqs_cis = llama3.rope_freqs_cis(c, len(prompt_ids))
    q = torch.randn(1, len(prompt_ids), c.n_heads, c.head_dim, generator=torch.Generator().manual_seed(0))
    q = q.to(torch.bfloat16)
    k = q[:, :, : c.n_kv_heads]
    ref_q, ref_k = apply_rotary_emb(q, k, freqs_cis)
    # Meta's layout is [batch, T, heads, d]; ours is [heads, T, d].
    assert torch.equal(llama3.apply_rope(q[0].transpose(0, 1), freqs_cis), ref_q[0].transpose(0, 1))
    assert torch.equal(llama3.apply_rope(k[0].transpose(0, 1), freqs_cis), ref_k[0].transpose(0, 1))


def test_attention_feed_forward_and_layer_match_meta(checkpoint, reference_layer0, prompt_ids):
    model, layer, x = reference_layer0
    c, n = checkpoint.config, len(prompt_ids)
    lw = llama3.layer_weights(checkpoint.weights, 0)
    freqs_cis = llama3.rope_freqs_cis(c, n)
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1).to(torch.bfloat16)
    x_normed = llama3.rms_norm(x, lw.attention_norm, c.norm_eps)
    with torch.inference_mode():
        ref_attention = layer.attention(x_normed[None], 0, freqs_cis, mask)[0]
        ref_ffn = layer.feed_forward(x_normed[None])[0]
        ref_layer = layer(x[None], 0, freqs_cis, mask)[0]
    assert torch.equal(llama3.attention(x_normed, lw, c, freqs_cis), ref_attention)
    assert torch.equal(llama3.feed_forward(x_normed, lw), ref_ffn)
    assert torch.equal(llama3.transformer_layer(x, lw, c, freqs_cis), ref_layer)


def test_ffn_hidden_size_is_metas(checkpoint):
    assert checkpoint.weights["layers.0.feed_forward.w1.weight"].shape[0] == checkpoint.config.ffn_hidden_dim
    eight_b = llama3.ModelConfig.from_params(
        {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
         "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
    )  # fmt: skip
    assert (eight_b.ffn_hidden_dim, eight_b.head_dim, eight_b.queries_per_kv_head) == (14336, 128, 4)


def test_kv_cache_gives_the_same_logits(checkpoint, prompt_ids):
    full = llama3.forward(checkpoint.weights, checkpoint.config, prompt_ids)
    cache = llama3.KVCache(checkpoint.config.n_layers)
    split = len(prompt_ids) // 2
    parts = [llama3.forward(checkpoint.weights, checkpoint.config, prompt_ids[:split], cache=cache)]
    for token in prompt_ids[split:]:
        parts.append(llama3.forward(checkpoint.weights, checkpoint.config, [token], cache=cache))
    assert len(cache) == len(prompt_ids)
    assert_logits_match(torch.cat(parts), full, checkpoint.config)


TOKENIZER_SAMPLES = [
    llama3.DEFAULT_PROMPT,
    "Hello, world! It's 2026; numbers like 1234567 split in threes.",
    "  leading spaces, tabs\tand\nnewlines\r\n",
    "naïve café, 日本語のテキスト, emoji 🦙 and Ελληνικά",
    "<|begin_of_text|> is plain text here",
]


@pytest.mark.parametrize("text", TOKENIZER_SAMPLES)
@pytest.mark.parametrize("release", ["3", "3.1"])
def test_tokenizer_matches_meta(demo, text, release):
    from llama_models.llama3.tokenizer import Tokenizer

    meta = Tokenizer.get_instance()  # Llama 3.1's names (llama-models)
    ours = llama3.load_tokenizer(demo.path / "tokenizer.model", release)
    assert llama3.encode_prompt(ours, text, demo.config) == meta.encode(text, bos=True, eos=False)
    assert ours.n_vocab == meta.n_words == 128256


def test_special_token_ids_are_metas_and_names_differ_only_where_releases_do(demo):
    from llama_models.llama3.tokenizer import Tokenizer

    meta_ids = Tokenizer.get_instance().special_tokens  # name -> id, Llama 3.1's names
    llama3_1 = llama3.load_tokenizer(demo.path / "tokenizer.model", "3.1")
    assert {n: llama3_1.encode_single_token(n) for n in meta_ids} == meta_ids
    llama3_0 = llama3.load_tokenizer(demo.path / "tokenizer.model", "3")
    ours = {llama3_0.encode_single_token(n): n for n in llama3_0.special_tokens_set}
    meta_names = {i: n for n, i in meta_ids.items()}
    assert set(ours) == set(meta_names)  # the same 256 ids
    # Where the releases name a token alike (begin/end of text, the headers, <|eot_id|>), the names agree.
    for name in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert llama3_0.encode_single_token(name) == meta_ids[name]
    # Llama 3 (meta-llama/llama3, llama/tokenizer.py) has no tool tokens: 128008 is reserved there.
    assert ours[128008] == "<|reserved_special_token_4|>" and meta_names[128008] == "<|eom_id|>"
    assert ours[128010] == "<|reserved_special_token_5|>" and ours[128255] == "<|reserved_special_token_250|>"
    assert "<|eom_id|>" not in llama3_0.special_tokens_set and "<|python_tag|>" not in llama3_0.special_tokens_set


def test_checkpoint_release_picks_the_tokenizer(demo, random_checkpoints):
    assert demo.release == "3" and demo.tokenizer.release == "3"
    scaled = llama3.load_checkpoint(random_checkpoints["llama3.1"])
    assert scaled.release == "3.1" and scaled.tokenizer.release == "3.1"


@pytest.mark.parametrize("text", TOKENIZER_SAMPLES)
def test_bpe_merge_loop_matches_tiktoken(demo, text):
    import regex

    ranks = llama3.read_bpe_ranks(demo.path / "tokenizer.model")
    pieces = regex.findall(llama3.SPLIT_PATTERN, text)
    ours = [t for piece in pieces for t in llama3.bpe_merge(piece.encode(), ranks)]
    assert ours == demo.tokenizer.encode(text, disallowed_special=())


def test_prompt_decodes_as_the_facts_say(demo):
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    assert token_ids == [128000, 1820, 4320, 311, 279, 17139, 3488, 315, 2324, 11, 279, 15861, 11, 323, 4395, 374, 220]
    assert llama3.token_texts(demo.tokenizer, token_ids)[:3] == ["<|begin_of_text|>", "the", " answer"]
    assert llama3.token_texts(demo.tokenizer, token_ids)[-2:] == [" is", " "]
