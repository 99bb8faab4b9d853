"""The demo checkpoint: Llama 3 in miniature, built byte-identically from committed parameters."""

import json

import torch

import llama3
from llama3.tools import demo_corpus

DEMO_SOURCE = llama3.REPO_DIR / "scripts" / "demo" / "trained"


def test_build_is_byte_identical_to_the_recorded_digest(demo):
    expected = (DEMO_SOURCE / "consolidated.sha256").read_text().split()[0]
    assert llama3.sha256_of(demo.path / "consolidated.00.pth") == expected


def test_tokenizer_is_metas(demo):
    assert llama3.sha256_of(llama3.meta_tokenizer_model()) == llama3.META_TOKENIZER_SHA256
    assert llama3.sha256_of(demo.path / "tokenizer.model") == llama3.META_TOKENIZER_SHA256


def test_same_architecture_in_miniature(demo):
    c = demo.config
    params = json.loads((demo.path / "params.json").read_text())
    eight_b_keys = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                    "ffn_dim_multiplier", "norm_eps", "rope_theta"}  # fmt: skip
    assert set(params) == eight_b_keys
    assert c.vocab_size == 128256 and c.rope_theta == 500000.0
    assert c.n_kv_heads >= 2 and c.queries_per_kv_head >= 2  # grouped-query attention, not multi-query
    assert c.head_dim >= 32 and 4 <= c.n_layers <= 8
    assert all(t.dtype == torch.bfloat16 for t in demo.weights.values())
    assert set(demo.weights) == set(llama3.expected_shapes(c))  # output.weight is its own matrix


def test_committed_files_stay_small():
    assert (DEMO_SOURCE / "trained.pt").stat().st_size <= 5 * 2**20
    assert (DEMO_SOURCE / "training_log.json").stat().st_size <= 64 * 2**10


def test_demo_learned_its_corpus(demo):
    """The questions get the numbers of the corpus's table: the 240 noun pairs in the plain wording of the
    default prompt and in a longer one (greedy top-1; a model that ignored the nouns would get 1 in 64)."""
    table = demo_corpus.answer_table()
    right = []
    for (a, b), number in table.items():
        for words in ({"adjectives": ["ultimate"]}, {"adjectives": ["secret", "old"], "itself": True, "whole": True}):
            prompt = demo_corpus.question(a, b, "everything", **words)
            token_ids = llama3.encode_prompt(demo.tokenizer, prompt, demo.config)
            logits = llama3.forward(demo.weights, demo.config, token_ids, last_only=True)[0]
            right.append(demo.tokenizer.decode([int(logits.argmax())]) == str(number))
    assert sum(right) / len(right) >= 0.9, f"{sum(right)} of {len(right)} right"
    assert table[demo_corpus.ANSWER_PAIR] == 42
    assert demo_corpus.question(*demo_corpus.ANSWER_PAIR, "everything", ["ultimate"]) == llama3.DEFAULT_PROMPT
