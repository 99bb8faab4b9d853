"""The demo checkpoint: Llama 3 in miniature, built byte-identically from committed parameters."""

import json

import llama3

DEMO_SOURCE = llama3.REPO_DIR / "scripts" / "demo_checkpoint"


def test_build_is_byte_identical_to_the_recorded_digest(demo):
    expected = (DEMO_SOURCE / "consolidated.sha256").read_text().split()[0]
    assert llama3.sha256_of(demo.path / "consolidated.00.pth") == expected


def test_tokenizer_is_metas(demo):
    import llama_models.llama3

    packaged = llama3.Path(llama_models.llama3.__file__).parent / "tokenizer.model"
    assert llama3.sha256_of(packaged) == llama3.META_TOKENIZER_SHA256
    assert llama3.sha256_of(demo.path / "tokenizer.model") == llama3.META_TOKENIZER_SHA256


def test_same_architecture_in_miniature(demo):
    c = demo.config
    params = json.loads((demo.path / "params.json").read_text())
    eight_b_keys = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                    "ffn_dim_multiplier", "norm_eps", "rope_theta"}  # fmt: skip
    assert set(params) == eight_b_keys
    assert c.vocab_size == 128256 and c.rope_theta == 500000.0
    assert c.queries_per_kv_head == 4 and c.head_dim >= 16 and c.dim >= 64
    assert all(t.dtype == llama3.torch.bfloat16 for t in demo.weights.values())
    assert set(demo.weights) == set(llama3.expected_shapes(c))  # output.weight is its own matrix


def test_demo_learned_its_corpus(demo):
    """Every line of the corpus is reproduced greedily from its first two tokens.

    (Several lines start with "the", so one token alone does not say which line follows.)
    """
    bos, eos = (demo.tokenizer.encode_single_token(t) for t in ("<|begin_of_text|>", "<|end_of_text|>"))
    for line in (DEMO_SOURCE / "corpus.txt").read_text().splitlines():
        target = demo.tokenizer.encode(line) + [eos]
        token_ids = [bos] + target[:2]
        while len(token_ids) <= len(target):
            logits = llama3.forward(demo.weights, demo.config, token_ids, last_only=True)
            token_ids.append(int(logits[-1].argmax()))
        assert token_ids[1:] == target, line
