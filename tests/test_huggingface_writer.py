"""Hugging Face's layout (scripts/huggingface.py) against what Hugging Face ships and runs.

The same weights written in Meta's layout and in Hugging Face's must give the same logits, Meta's reference
implementation (llama_models) on the one and transformers' LlamaForCausalLM on the other. They round at
different places (transformers rotates queries and keys in bfloat16, Meta in float32), so the logits agree
up to llama3.logits_tolerance, the bound for two computations of the same forward pass that differ in
rounding; a misplaced row of wq or wk moves them much further (test_without_the_permutation_...).
The files' names and config.json are checked against transformers' own model and the configs of the
meta-llama repositories; tokenizer.json against tokenizer.model, through tiktoken and through tokenizers.
"""

import json
import random
import sys

import pytest
import torch

import llama3
from conftest import PARITY_PRESETS
from llama3.formats import huggingface
from llama3.tools import synthetic

SHARD_BYTES = 3_000_000  # a few shards at these sizes: the embedding table alone is 16 MB at dim 64


def meta_params(path) -> dict:
    return json.loads((path / "params.json").read_text())


def hf_copy(ck: llama3.Checkpoint, out, shard_bytes=None, release=None, permute=True):
    """The checkpoint's own tensors written in Hugging Face's layout."""
    return huggingface.write_hf_checkpoint(
        ck.weights, meta_params(ck.path), release or ck.release, out, ck.path / "tokenizer.model",
        shard_bytes=shard_bytes, permute=permute,
    )  # fmt: skip


def worst_relative_difference(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """max over positions of max |difference| / max |reference logit|."""
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(logits, reference))


def assert_same_logits(logits: torch.Tensor, reference: torch.Tensor, config) -> None:
    """Position by position within logits_tolerance of the largest |logit|, and the same top-1 (up to a tie
    within the tolerance, which rounding may break either way)."""
    assert logits.shape == reference.shape
    tolerance = llama3.logits_tolerance(config, torch.bfloat16)
    for position, (a, b) in enumerate(zip(logits, reference)):
        diff, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert diff <= tolerance * scale, f"position {position}: max |diff| {diff} > {tolerance} * {scale}"
        assert llama3.same_prediction(a, b, tolerance), f"position {position}: top-1 differs beyond a tie"


@pytest.fixture(scope="module")
def meta_logits(demo, random_checkpoints):
    """Meta's reference logits for the prompt on every Meta-layout original, computed once."""
    cache = {}

    def get(name):
        if name not in cache:
            ck = demo if name == "demo" else llama3.load_checkpoint(random_checkpoints[name], device="cpu")
            ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
            cache[name] = (ck, ids, llama3.meta_reference_logits(ck, ids))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def demo_hf(demo, tmp_path_factory):
    return hf_copy(demo, tmp_path_factory.mktemp("hf") / "demo")


def test_demo_in_hf_layout_answers_42_like_meta(demo_hf, meta_logits):
    ck, ids, reference = meta_logits("demo")
    logits = llama3.transformers_logits(demo_hf, ids)
    assert_same_logits(logits, reference, ck.config)
    assert int(logits[-1].argmax()) == int(reference[-1].argmax()) == 2983  # "42"


@pytest.mark.parametrize("shard_bytes", [None, SHARD_BYTES], ids=["one-file", "sharded"])
@pytest.mark.parametrize("name", PARITY_PRESETS)
def test_presets_in_hf_layout_match_meta(name, shard_bytes, meta_logits, tmp_path):
    ck, ids, reference = meta_logits(name)
    out = hf_copy(ck, tmp_path / name, shard_bytes)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    if shard_bytes is None:
        assert files == ["model.safetensors"] and not (out / "model.safetensors.index.json").exists()
    else:
        assert len(files) >= 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert_same_logits(llama3.transformers_logits(out, ids), reference, ck.config)


def read_safetensors(folder) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Every tensor of a Hugging Face folder, and each file's metadata."""
    from safetensors import safe_open

    tensors, metadata = {}, []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata.append(f.metadata())
            tensors |= {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def test_files_hold_the_names_transformers_expects(meta_logits, tmp_path):
    """The tensor names are those of transformers' own LlamaForCausalLM built from the written config.json
    (with lm_head for an untied model), bfloat16, format pt; the index maps every one to its file."""
    from transformers import AutoConfig, LlamaForCausalLM

    ck, _, _ = meta_logits("gqa2")
    out = hf_copy(ck, tmp_path / "gqa2", SHARD_BYTES)
    tensors, metadata = read_safetensors(out)
    config = AutoConfig.from_pretrained(out, local_files_only=True)
    with torch.device("meta"):
        expected = LlamaForCausalLM(config).state_dict()
    assert set(tensors) == set(expected) and "lm_head.weight" in tensors
    assert all(tensors[k].shape == expected[k].shape and tensors[k].dtype == torch.bfloat16 for k in tensors)
    assert metadata == [{"format": "pt"}] * len(metadata)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values())
    for name, filename in index["weight_map"].items():
        assert name in read_safetensors_file(out / filename)
    # Tensors that need no reordering are Meta's, bit for bit.
    assert torch.equal(tensors["model.layers.1.mlp.up_proj.weight"], ck.weights["layers.1.feed_forward.w3.weight"])
    assert torch.equal(tensors["lm_head.weight"], ck.weights["output.weight"])


def read_safetensors_file(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_tied_llama3_2_mini_has_no_lm_head(meta_logits, tmp_path):
    ck, ids, reference = meta_logits("llama3.2-1b-mini")
    assert llama3.output_is_tied(ck.weights)
    out = hf_copy(ck, tmp_path / "tied", SHARD_BYTES)
    tensors, _ = read_safetensors(out)
    assert "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = llama3.transformers_model(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert_same_logits(llama3.transformers_logits(out, ids), reference, ck.config)


def test_llama3_2_release_writes_factor_32_and_transformers_applies_it(random_checkpoints, tmp_path):
    """Written as Llama 3.2 (RoPE factor 32; Meta's reference code has 8 for every release), against our
    forward pass with 3.2's factor."""
    ck = llama3.load_checkpoint(random_checkpoints["llama3.2-1b-mini"], device="cpu", release="3.2")
    out = hf_copy(ck, tmp_path / "llama3.2", release="3.2")
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["factor"] == 32.0
    assert llama3.transformers_model(out).config.rope_parameters["factor"] == 32.0
    ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    assert_same_logits(llama3.transformers_logits(out, ids), llama3.forward(ck.weights, ck.config, ids), ck.config)


@pytest.mark.parametrize("name", ["demo", "gqa4", "llama3.1"])
def test_without_the_permutation_transformers_disagrees(name, meta_logits, tmp_path):
    """wq and wk left in Meta's row order: transformers then rotates the wrong pairs of dimensions, and its
    logits leave the tolerance (at position 0 the rotation is the identity, so only later positions move)."""
    ck, ids, reference = meta_logits(name)
    out = hf_copy(ck, tmp_path / name, permute=False)
    logits = llama3.transformers_logits(out, ids)
    assert worst_relative_difference(logits, reference) > 1.5 * llama3.logits_tolerance(ck.config)


def test_permutation_turns_metas_rope_into_rotate_half(demo):
    """Queries from the reordered wq, rotated by transformers' own rotate_half RoPE, are Meta's rotated queries
    reordered the same way: the reordering is exactly the change of RoPE layout."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    c, n = demo.config, 9
    x = torch.randn(n, c.dim, generator=torch.Generator().manual_seed(0))
    wq = demo.weights["layers.2.attention.wq.weight"].float()
    q_meta = (x @ wq.T).reshape(n, c.n_heads, c.head_dim).transpose(0, 1)  # [H, T, d]
    rotated_meta = llama3.apply_rope(q_meta, llama3.rope_freqs_cis(c, n))
    wq_hf = huggingface.to_hf_rows(wq, c.n_heads)
    q_hf = (x @ wq_hf.T).reshape(n, c.n_heads, c.head_dim).transpose(0, 1)
    cos, sin = LlamaRotaryEmbedding(LlamaConfig(**huggingface.hf_config(c, tied=False)))(q_hf, torch.arange(n)[None])
    rotated_hf = apply_rotary_pos_emb(q_hf[None], q_hf[None], cos, sin)[0][0]  # [H, T, d], halves layout
    rows_hf = rotated_hf.transpose(1, 2).reshape(c.n_heads * c.head_dim, n)  # [H * d, T], like wq's rows
    rows_meta = huggingface.to_meta_rows(rows_hf, c.n_heads)
    as_meta = rows_meta.reshape(c.n_heads, c.head_dim, n).transpose(1, 2)
    torch.testing.assert_close(as_meta, rotated_meta, rtol=1e-5, atol=1e-5)
    unrotated = huggingface.to_meta_rows(q_hf.transpose(1, 2).reshape(-1, n), c.n_heads)
    assert not torch.allclose(unrotated.reshape(c.n_heads, c.head_dim, n).transpose(1, 2), rotated_meta, atol=1e-2)
    assert torch.equal(huggingface.to_meta_rows(wq_hf, c.n_heads), wq)
    assert not torch.equal(wq_hf, wq)


# config.json of the meta-llama repositories (base models), the fields that follow from params.json.
PUBLISHED_CONFIGS = {
    "Llama 3 8B": ("3", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rope_scaling=None,
        rms_norm_eps=1e-05, vocab_size=128256, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False,
    )),
    "Llama 3.1 8B": ("3.1", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, vocab_size=128256,
        rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        eos_token_id=128001, tie_word_embeddings=False,
    )),
    "Llama 3.2 1B": ("3.2", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        tie_word_embeddings=True,
    )),
    "Llama 3.2 3B": ("3.2", dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
    )),
}  # fmt: skip


@pytest.mark.parametrize("name", PUBLISHED_CONFIGS)
def test_config_json_has_the_published_values(name):
    release, published = PUBLISHED_CONFIGS[name]
    config = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[name])
    assert config.release == release
    written = huggingface.hf_config(config, tied=release == "3.2")
    assert {k: written[k] for k in published} == published
    assert written["architectures"] == ["LlamaForCausalLM"]
    assert (written["model_type"], written["hidden_act"]) == ("llama", "silu")
    assert written["attention_bias"] is written["mlp_bias"] is False and written["torch_dtype"] == "bfloat16"


def test_make_checkpoint_layouts_hold_the_same_random_model(tmp_path, monkeypatch):
    """--layout hf writes the tensors --layout meta writes for the same preset and seed, and --from converts
    a Meta folder to the same files."""

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["make_checkpoint.py", *map(str, argv)])
        synthetic.main()

    run(tmp_path / "meta", "--preset", "mha", "--seed", "3")
    run(tmp_path / "hf", "--preset", "mha", "--seed", "3", "--layout", "hf", "--hf-shard-bytes", SHARD_BYTES)
    run(tmp_path / "from", "--from", tmp_path / "meta", "--layout", "hf")
    direct, _ = read_safetensors(tmp_path / "hf")
    converted, _ = read_safetensors(tmp_path / "from")
    assert direct.keys() == converted.keys()
    assert all(torch.equal(direct[k], converted[k]) for k in direct)
    with pytest.raises(SystemExit):
        run(tmp_path / "x", "--from", tmp_path / "meta", "--layout", "hf", "--shards", "2")  # Meta's cut, HF's layout


# ---------------------------------------------------------------------------------------
# tokenizer.json
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["3", "3.1"])
def tokenizer_pair(request, demo, tmp_path_factory):
    """(from tokenizer.json, from tokenizer.model, the tokenizer.json path) for a release."""
    out = tmp_path_factory.mktemp("tokenizer")
    huggingface.write_tokenizer_files(
        out,
        demo.path / "tokenizer.model",
        llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS["Llama 3 8B" if request.param == "3" else "Llama 3.1 8B"]),
    )
    path = out / "tokenizer.json"
    assert llama3.tokenizer_from_json(path).name == f"llama{request.param}"  # the release told from the names
    return (
        llama3.tokenizer_from_json(path, request.param),
        llama3.load_tokenizer(demo.path / "tokenizer.model", request.param),
        path,
    )


TEXTS = [
    llama3.DEFAULT_PROMPT,
    "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "What is 6 x 7?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "naïve café, 日本語のテキスト, emoji 🦙🦙 and Ελληνικά, Ω≈ç√∫, \u200b zero width",
    "   three spaces, \t\ttabs,\n\n\nnewlines\r\n\r\n and trailing     ",
    "1234567890 12,345.678 don't I'll WE'VE",
]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Random byte strings (decoded, invalid UTF-8 replaced) and random code points, 0 to 40 long."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        if i % 2:
            texts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(41))).decode("utf-8", "replace"))
        else:
            length = rng.randrange(41)
            code_points = [rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]) for _ in range(length)]
            texts.append("".join(map(chr, code_points)))
    return texts


def test_tokenizer_json_encodes_and_decodes_like_tokenizer_model(tokenizer_pair):
    from_json, from_model, _ = tokenizer_pair
    for text in TEXTS + random_texts(3000):
        ids = from_json.encode(text, allowed_special="all")
        assert ids == from_model.encode(text, allowed_special="all"), repr(text)
        assert from_json.decode(ids) == from_model.decode(ids)
    rng = random.Random(1)
    for _ in range(1000):  # random id sequences decode to the same bytes (special names: the next test)
        ids = [rng.randrange(128000) for _ in range(rng.randrange(1, 12))]
        assert from_json.decode_bytes(ids) == from_model.decode_bytes(ids)
    assert from_json.encode(llama3.DEFAULT_PROMPT) == from_model.encode(llama3.DEFAULT_PROMPT)


def test_tokenizer_json_has_every_rank_and_special_id(tokenizer_pair):
    from_json, from_model, _ = tokenizer_pair
    assert from_json.n_vocab == from_model.n_vocab == 128256
    assert all(from_json.decode_single_token_bytes(i) == from_model.decode_single_token_bytes(i) for i in range(128000))
    ids_json = {from_json.encode_single_token(n): n for n in from_json.special_tokens_set}
    ids_model = {from_model.encode_single_token(n): n for n in from_model.special_tokens_set}
    assert set(ids_json) == set(ids_model) == set(range(128000, 128256))
    release = "3.1" if "<|eom_id|>" in from_model.special_tokens_set else "3"
    differ = {i for i in ids_json if ids_json[i] != ids_model[i]}
    if release == "3":
        assert not differ
    else:  # the meta-llama repositories keep 3.1's first names where llama-models renamed (see hf_special_token_names)
        assert ids_json[128005] == "<|reserved_special_token_2|>" and ids_model[128005] == "<|step_id|>"
        assert ids_json[128011] == "<|reserved_special_token_3|>" and ids_model[128011] == "<|image|>"
        assert ids_json[128255] == "<|reserved_special_token_247|>"
        assert differ == {128005} | set(range(128011, 128256))
        for name in ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"):  # fmt: skip
            assert from_json.encode_single_token(name) == from_model.encode_single_token(name)
    # The chat format, built from either tokenizer, is the same tokens.
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 6 x 7? "}]
    assert llama3.encode_dialog(from_json, dialog) == llama3.encode_dialog(from_model, dialog)


def test_tokenizers_library_reads_the_file_as_hugging_face_does(tokenizer_pair):
    """Hugging Face's own tokenizer on the written tokenizer.json: <|begin_of_text|> first, then the same ids."""
    from tokenizers import Tokenizer

    _, from_model, path = tokenizer_pair
    hf = Tokenizer.from_file(str(path))
    for text in TEXTS[:1] + TEXTS[2:] + random_texts(200, seed=2):
        assert hf.encode(text).ids == [128000] + from_model.encode(text, disallowed_special=()), repr(text)


def test_transformers_reads_the_tokenizer_and_generation_config(demo, demo_hf):
    """AutoTokenizer on the folder gives the walkthrough's 17 ids, <|begin_of_text|> first; the base model's
    stop token is <|end_of_text|>."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(demo_hf, local_files_only=True)
    expected = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    assert tokenizer(llama3.DEFAULT_PROMPT).input_ids == expected
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|begin_of_text|>", "<|end_of_text|>")
    generation = GenerationConfig.from_pretrained(demo_hf, local_files_only=True)
    assert (generation.bos_token_id, generation.eos_token_id) == (128000, 128001)


def test_tokenizer_from_json_rejects_other_files(demo, demo_hf, tmp_path):
    with pytest.raises(llama3.CheckpointError, match="tokenizer.model.*cannot be read as JSON"):
        llama3.tokenizer_from_json(demo.path / "tokenizer.model")
    with pytest.raises(llama3.CheckpointError, match="config.json is not a byte-pair"):
        llama3.tokenizer_from_json(demo_hf / "config.json")
    data = json.loads((demo_hf / "tokenizer.json").read_text())
    data["added_tokens"] = data["added_tokens"][:10]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(llama3.CheckpointError, match="256 special tokens"):
        llama3.tokenizer_from_json(tmp_path / "tokenizer.json")
