"""Every assumption the walkthrough makes about Meta's files, checked against what Meta publishes.

Our own writer (scripts/checkpoints/make_checkpoint.py) produces the checkpoints most tests use, so a test that only
reads its files can never see a difference between our writer and Meta's. The facts below come from Meta,
not from our writer:
- the key order of Meta-Llama-3-8B's `consolidated.00.pth`, as `torch.load` lists it (naklecha's
  llama3-from-scratch prints the real file's first 20 keys; shared/llama3-facts.md has the whole table);
- the tensor shapes of the 8B file (the same table);
- each release's `params.json`, as Meta's own `llama_models.sku_list` gives it (Llama 3's files carry no
  `use_scaled_rope` key; 3.1 and 3.2 carry `"use_scaled_rope": true`);
- parameter counts as Meta reports them (8B: 8,030,261,248; 70B: 70,553,706,496).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import llama3
from llama3.tools import synthetic

# torch.load(Meta-Llama-3-8B/original/consolidated.00.pth).keys(), the first 20: w3 comes before w2.
META_8B_FIRST_20_KEYS = [
    "tok_embeddings.weight",
    "layers.0.attention.wq.weight", "layers.0.attention.wk.weight", "layers.0.attention.wv.weight",
    "layers.0.attention.wo.weight", "layers.0.feed_forward.w1.weight", "layers.0.feed_forward.w3.weight",
    "layers.0.feed_forward.w2.weight", "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight",
    "layers.1.attention.wq.weight", "layers.1.attention.wk.weight", "layers.1.attention.wv.weight",
    "layers.1.attention.wo.weight", "layers.1.feed_forward.w1.weight", "layers.1.feed_forward.w3.weight",
    "layers.1.feed_forward.w2.weight", "layers.1.attention_norm.weight", "layers.1.ffn_norm.weight",
    "layers.2.attention.wq.weight",
]  # fmt: skip
META_8B_TENSOR_COUNT = 291  # 1 + 32 * 9 + 2

# The shapes of Meta-Llama-3-8B's tensors, by key suffix.
META_8B_SHAPES = {
    "tok_embeddings.weight": (128256, 4096),
    "attention.wq.weight": (4096, 4096),
    "attention.wk.weight": (1024, 4096),
    "attention.wv.weight": (1024, 4096),
    "attention.wo.weight": (4096, 4096),
    "feed_forward.w1.weight": (14336, 4096),
    "feed_forward.w3.weight": (14336, 4096),
    "feed_forward.w2.weight": (4096, 14336),
    "attention_norm.weight": (4096,),
    "ffn_norm.weight": (4096,),
    "norm.weight": (4096,),
    "output.weight": (128256, 4096),
}

# params.json of each text release Meta ships in this format, and what follows from it.
# (name in llama_models.sku_list, head_dim, FFN hidden size, shards Meta ships)
RELEASES = {
    "Llama 3 8B": ("Llama-3-8B", 128, 14336, 1),
    "Llama 3 70B": ("Llama-3-70B", 128, 28672, 8),
    "Llama 3.1 8B": ("Llama3.1-8B", 128, 14336, 1),
    "Llama 3.1 70B": ("Llama3.1-70B", 128, 28672, 8),
    "Llama 3.1 405B": ("Llama3.1-405B", 128, 53248, 8),
    "Llama 3.2 1B": ("Llama3.2-1B", 64, 8192, 1),
    "Llama 3.2 3B": ("Llama3.2-3B", 128, 8192, 1),
}
PARAMS_KEYS_LLAMA3 = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                      "ffn_dim_multiplier", "norm_eps", "rope_theta"}  # fmt: skip


def published_params(name: str) -> dict:
    """The release's params.json: Meta's arch_args, where Llama 3 files simply lack use_scaled_rope."""
    from llama_models.sku_list import resolve_model

    params = dict(resolve_model(RELEASES[name][0]).arch_args)
    if not params["use_scaled_rope"]:
        del params["use_scaled_rope"]
    return params


def test_expected_shapes_list_keys_in_metas_order():
    keys = list(llama3.expected_shapes(llama3.LLAMA3_8B))
    assert keys[:20] == META_8B_FIRST_20_KEYS
    assert keys[-2:] == ["norm.weight", "output.weight"] and len(keys) == META_8B_TENSOR_COUNT


def test_expected_shapes_are_metas_8b_shapes():
    for key, shape in llama3.expected_shapes(llama3.LLAMA3_8B).items():
        suffix = key.split(".", 2)[-1] if key.startswith("layers.") else key
        assert shape == META_8B_SHAPES[suffix], key


def test_our_writer_writes_metas_order(tmp_path):
    path = synthetic.write_checkpoint(tmp_path / "ck", synthetic.PRESETS["gqa4"])
    keys = list(torch.load(path / "consolidated.00.pth", mmap=True, weights_only=True))
    per_layer = [k.removeprefix("layers.1.") for k in keys if k.startswith("layers.1.")]
    assert per_layer == [k.removeprefix("layers.1.") for k in META_8B_FIRST_20_KEYS[10:19]]


@pytest.mark.parametrize("name", RELEASES)
def test_release_params(name):
    params = published_params(name)
    expected_keys = PARAMS_KEYS_LLAMA3 | ({"use_scaled_rope"} if not name.startswith("Llama 3 ") else set())
    assert set(params) == expected_keys
    config = llama3.ModelConfig.from_params(params)
    _, head_dim, ffn_hidden, shards = RELEASES[name]
    assert config.vocab_size == 128256 and config.rope_theta == 500000.0
    assert (config.head_dim, config.ffn_hidden_dim) == (head_dim, ffn_hidden)
    assert config.use_scaled_rope == (not name.startswith("Llama 3 "))
    assert config.n_heads % shards == 0 and config.n_kv_heads % shards == 0


def test_read_params_accepts_every_release(tmp_path):
    for name in RELEASES:
        (tmp_path / "params.json").write_text(json.dumps(published_params(name)))
        assert llama3.read_params(tmp_path) == llama3.ModelConfig.from_params(published_params(name))


def test_the_module_knows_8b_as_meta_ships_it():
    assert llama3.LLAMA3_8B_PARAMS == published_params("Llama 3 8B")
    assert llama3.parameter_count(llama3.LLAMA3_8B) == 8_030_261_248
    assert llama3.parameter_count(llama3.ModelConfig.from_params(published_params("Llama 3 70B"))) == 70_553_706_496


def resave(src, dst, order):
    """The same tensors written in another key order, as other code might save them."""
    weights = torch.load(src / "consolidated.00.pth", mmap=True, weights_only=True)
    dst.mkdir()
    torch.save({k: weights[k].clone() for k in order(list(weights))}, dst / "consolidated.00.pth")
    for name in ("params.json", "tokenizer.model"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def model_class_order(keys):
    """Meta's model class declares w1, w2, w3 (its state_dict order), unlike its files: swap w3 and w2."""
    keys = list(keys)
    for i, key in enumerate(keys[:-1]):
        if key.endswith("feed_forward.w3.weight") and keys[i + 1].endswith("feed_forward.w2.weight"):
            keys[i], keys[i + 1] = keys[i + 1], keys[i]
    return keys


@pytest.fixture(scope="module")
def reordered(tmp_path_factory, demo):
    root = tmp_path_factory.mktemp("orders")
    return {
        "reversed": resave(demo.path, root / "reversed", lambda keys: keys[::-1]),
        "w1-w2-w3": resave(demo.path, root / "w1-w2-w3", model_class_order),
    }


@pytest.mark.parametrize("order", ["reversed", "w1-w2-w3"])
def test_any_key_order_loads_and_gives_the_same_logits(demo, reordered, order):
    ck = llama3.load_checkpoint(reordered[order])
    keys = list(torch.load(ck.path / "consolidated.00.pth", mmap=True, weights_only=True))
    assert keys != list(llama3.expected_shapes(ck.config))  # the order really differs
    token_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    assert torch.equal(
        llama3.forward(ck.weights, ck.config, token_ids), llama3.forward(demo.weights, demo.config, token_ids)
    )


def test_notebook_01_runs_on_a_file_in_another_order(reordered, tmp_path):
    """The failure that reached users: notebook 01 asserted our writer's order."""
    env = dict(os.environ, LLAMA3_DIR=str(reordered["reversed"]))
    env.pop("LLAMA3_PROMPT", None)
    result = subprocess.run(
        [sys.executable, str(llama3.REPO_DIR / "scripts" / "run" / "run_notebooks.py"),
         str(llama3.REPO_DIR / "notebooks" / "01_checkpoint.ipynb")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_weights_are_bfloat16_as_meta_ships_them(demo, tmp_path):
    """Meta's files hold bfloat16 only; a file converted to another dtype is refused with the fix."""
    weights = torch.load(demo.path / "consolidated.00.pth", mmap=True, weights_only=True)
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    converted = tmp_path / "float32"
    converted.mkdir()
    torch.save({k: v.float() for k, v in weights.items()}, converted / "consolidated.00.pth")
    for name in ("params.json", "tokenizer.model"):
        (converted / name).write_bytes((demo.path / name).read_bytes())
    with pytest.raises(llama3.CheckpointError) as info:
        llama3.load_checkpoint(converted)
    assert str(converted / "consolidated.00.pth") in str(info.value) and "bfloat16" in str(info.value)
