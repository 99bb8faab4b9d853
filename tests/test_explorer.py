"""Notebooks 10 and 11: the attention explorer's weights and the logit lens agree with `forward`.

Both run the same operations in the same order as `forward` and `attention`, so every check is exact.
"""

import math

import torch

import llama3


def test_trace_and_logit_lens_reproduce_forward(checkpoint, prompt_ids):
    c = checkpoint.config
    trace = llama3.trace_layers(checkpoint.weights, c, prompt_ids)
    assert len(trace.residuals) == c.n_layers + 1 and len(trace.attention) == c.n_layers
    assert torch.equal(trace.residuals[0], llama3.embed(checkpoint.weights["tok_embeddings.weight"], prompt_ids))
    logits = llama3.forward(checkpoint.weights, c, prompt_ids)
    assert torch.equal(llama3.logit_lens(trace.residuals[-1], checkpoint.weights, c), logits)
    freqs_cis = llama3.rope_freqs_cis(c, len(prompt_ids))
    lw = llama3.layer_weights(checkpoint.weights, 0)
    assert torch.equal(trace.residuals[1], llama3.transformer_layer(trace.residuals[0], lw, c, freqs_cis))


def test_attention_weights_are_the_ones_attention_uses(checkpoint, prompt_ids):
    c, n = checkpoint.config, len(prompt_ids)
    freqs_cis = llama3.rope_freqs_cis(c, n)
    x = llama3.embed(checkpoint.weights["tok_embeddings.weight"], prompt_ids)
    for layer in (0, c.n_layers - 1):
        lw = llama3.layer_weights(checkpoint.weights, layer)
        x_normed = llama3.rms_norm(x, lw.attention_norm, c.norm_eps)
        probs = llama3.attention_weights(x_normed, lw, c, freqs_cis)
        assert probs.shape == (c.n_heads, n, n) and probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(-1), torch.ones(c.n_heads, n))  # float32 sums round
        assert torch.all(probs.triu(diagonal=1) == 0), "a query attended to a later token"
        # Weighted values, heads side by side, through wo: exactly `attention`'s output.
        v = llama3.project_heads(x_normed, lw.wv, c.n_kv_heads).repeat_interleave(c.queries_per_kv_head, dim=0)
        out = (probs.type_as(v) @ v).transpose(0, 1).reshape(n, -1) @ lw.wo.T
        assert torch.equal(out, llama3.attention(x_normed, lw, c, freqs_cis))


def test_attention_weights_of_the_last_head_by_hand(checkpoint, prompt_ids):
    c, n = checkpoint.config, len(prompt_ids)
    lw = llama3.layer_weights(checkpoint.weights, 0)
    x_normed = llama3.rms_norm(llama3.embed(checkpoint.weights["tok_embeddings.weight"], prompt_ids),
                               lw.attention_norm, c.norm_eps)  # fmt: skip
    freqs_cis = llama3.rope_freqs_cis(c, n)
    head = c.n_heads - 1
    kv_head = head // c.queries_per_kv_head
    q = llama3.apply_rope(x_normed @ llama3.split_heads(lw.wq, c.n_heads)[head].T, freqs_cis)
    k = llama3.apply_rope(x_normed @ llama3.split_heads(lw.wk, c.n_kv_heads)[kv_head].T, freqs_cis)
    scores = q @ k.T / math.sqrt(c.head_dim) + llama3.causal_mask(n).to(q.dtype)
    by_hand = torch.softmax(scores.float(), dim=-1)
    assert torch.equal(by_hand, llama3.attention_weights(x_normed, lw, c, freqs_cis)[head])


def test_token_rank(demo):
    logits = torch.tensor([[0.5, 2.0, -1.0, 2.0], [3.0, 1.0, 0.0, -2.0]])
    assert llama3.token_rank(logits, 0).tolist() == [3, 1]
    assert llama3.token_rank(logits[1], 3).item() == 4
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    trace = llama3.trace_layers(demo.weights, demo.config, token_ids)
    last = llama3.logit_lens(trace.residuals[-1], demo.weights, demo.config)[-1]
    assert int(last.argmax()) == 2983 and llama3.token_rank(last, 2983).item() == 1
