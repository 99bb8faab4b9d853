"""Hugging Face's layout (notebook 05 and its appendix), read and written, as the meta-llama/* repositories ship it.

The folder holds what Hugging Face's Llama converter (transformers' convert_llama_weights_to_hf, as run
for Llama 3, 3.1 and 3.2) made of Meta's original files:

- model.safetensors, or model-0000N-of-0000M.safetensors with model.safetensors.index.json: bfloat16
  tensors under Hugging Face's names (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight,
  ...); lm_head.weight is left out when the output matrix is the embedding table (Llama 3.2 1B/3B);
- wq and wk with each head's rows reordered: Meta's RoPE rotates interleaved pairs of dimensions (0, 1),
  (2, 3), ...; Hugging Face's rotate_half pairs dimension i with i + head_dim/2, so the converter moves
  each head's even rows to its first half and its odd rows to its second half (rope_row_permutation);
- config.json (LlamaConfig's fields), generation_config.json, tokenizer.json (made from tokenizer.model
  by transformers' TikTokenConverter) and tokenizer_config.json.

Reading maps the safetensors in place, under Meta's names, wq and wk as RowPermutedWeights (no copy).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..byte_level_bpe import ByteLevelBPE, load_tokenizer_json
from ..config import (
    ROPE_HIGH_FREQ_FACTOR,
    ROPE_LOW_FREQ_FACTOR,
    ROPE_ORIGINAL_CONTEXT,
    ROPE_SCALE_FACTORS,
    CheckpointError,
    ModelConfig,
)
from ..shapes import expected_shapes
from ..tokens import SPLIT_PATTERN, Tokenizer, hf_special_token_names, load_tokenizer, tokenizer_from_json
from ..weights import RowPermutedWeight, StoredWeight, output_is_tied, rope_row_permutation, weight_rows
from .meta import copy_tokenizer, meta_name_of, read_json

# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

HF_INDEX = "model.safetensors.index.json"
# Hugging Face's names for Meta's (transformers' LlamaForCausalLM), per layer and for the rest.
HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
HF_OTHER_NAMES = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}


def meta_key(hf_key: str) -> str | None:
    """model.layers.3.self_attn.q_proj.weight -> layers.3.attention.wq.weight (None if not a Llama weight)."""
    return meta_name_of(hf_key, "model.layers", HF_LAYER_NAMES, HF_OTHER_NAMES)


def read_hf_config(ckpt_dir: Path, release: str | None = None) -> tuple[ModelConfig, bool]:
    """config.json of a Hugging Face Llama 3 folder as the walkthrough's ModelConfig, and its
    tie_word_embeddings (Llama 3.2 1B and 3B: the output matrix is the embedding table).

    The release is `release` if given, else told from rope_scaling's factor (none: Llama 3; 8: 3.1; 32: 3.2)."""
    path = ckpt_dir / "config.json"
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("model_type") != "llama":
        raise CheckpointError(
            f"{path} does not describe a Llama model (model_type {cfg.get('model_type') if isinstance(cfg, dict) else None!r}). "
            "Point LLAMA3_DIR at a meta-llama Llama 3 repository."
        )
    needed = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "intermediate_size",
        "rms_norm_eps",
    )
    missing = [k for k in needed if k not in cfg]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}. Download config.json again.")
    if cfg["vocab_size"] == 32000 or "rope_theta" not in cfg and "rope_parameters" not in cfg:
        raise CheckpointError(
            f"{path} describes a Llama 2 model (vocab_size {cfg['vocab_size']}). This walkthrough needs Llama 3."
        )
    dim, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if cfg.get("head_dim") not in (None, dim // n_heads) or dim % n_heads:
        raise CheckpointError(
            f"{path}: head_dim {cfg.get('head_dim')} is not hidden_size / num_attention_heads; not a Llama 3 shape."
        )
    if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{path}: biases or an activation other than SiLU: not Llama 3's architecture.")
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("llama3", "default"):
        raise CheckpointError(f"{path}: rope_scaling type {kind!r} is not Llama 3's.")
    if kind == "llama3":
        fixed = {
            "low_freq_factor": ROPE_LOW_FREQ_FACTOR,
            "high_freq_factor": ROPE_HIGH_FREQ_FACTOR,
            "original_max_position_embeddings": ROPE_ORIGINAL_CONTEXT,
        }
        odd = {k: scaling.get(k) for k, v in fixed.items() if float(scaling.get(k, v)) != v}
        factor = float(scaling.get("factor", 0))
        if odd or factor not in (ROPE_SCALE_FACTORS["3.1"], ROPE_SCALE_FACTORS["3.2"]):
            raise CheckpointError(
                f"{path}: rope_scaling {scaling} is not Llama 3.1's (factor 8) or 3.2's (factor 32) with {fixed}."
            )
        release = release or {f: r for r, f in ROPE_SCALE_FACTORS.items()}[factor]
    else:
        release = release or "3"
    params = {
        "dim": dim, "n_layers": int(cfg["num_hidden_layers"]), "n_heads": n_heads,
        "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads), "vocab_size": int(cfg["vocab_size"]),
        **ffn_params(dim, int(cfg["intermediate_size"])), "norm_eps": float(cfg["rms_norm_eps"]),
        "rope_theta": float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 500000.0)),
        "use_scaled_rope": kind == "llama3",
    }  # fmt: skip
    return ModelConfig.from_params(params, release), bool(cfg.get("tie_word_embeddings", False))


def ffn_params(dim: int, ffn_hidden: int) -> dict:
    """multiple_of and ffn_dim_multiplier for which Meta's formula gives Hugging Face's intermediate_size:
    the first of the pairs Meta's releases use that does, else multiple_of = intermediate_size itself."""
    base = int(2 * 4 * dim / 3)
    for multiplier in (1.3, 1.5, 1.0, 1.2, None):
        for multiple_of in (1024, 256, 4096, 32, 64, 128):
            hidden = base if multiplier is None else int(multiplier * base)
            if multiple_of * ((hidden + multiple_of - 1) // multiple_of) == ffn_hidden:
                return {"multiple_of": multiple_of, "ffn_dim_multiplier": multiplier}
    if base <= ffn_hidden:  # rounding up to a multiple of ffn_hidden gives ffn_hidden
        return {"multiple_of": ffn_hidden, "ffn_dim_multiplier": None}
    return {"multiple_of": 1, "ffn_dim_multiplier": (ffn_hidden + 0.5) / base}


def hf_weight_files(ckpt_dir: Path) -> dict[str, Path]:
    """Each Hugging Face tensor name -> the .safetensors file holding it (from the index when sharded)."""
    index = ckpt_dir / HF_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a readable safetensors index ({e}). Download it again.") from None
        files = {name: ckpt_dir / f for name, f in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.exists():
                raise CheckpointError(
                    f"{f} is missing: {index.name} lists it. Download every model-*.safetensors file of the repository."
                )
        return files
    single = ckpt_dir / "model.safetensors"
    if not single.exists():
        raise CheckpointError(
            f"{index} is missing: it says which model-*.safetensors file holds each tensor. "
            "Download it from the same Hugging Face repository."
        )
    return {name: single for name in _safetensors_names(single)}


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """One .safetensors file memory-mapped: its tensors by their names in it."""
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _safetensors_names(path: Path) -> list[str]:
    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be read as safetensors ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "It is probably truncated: download it again."
        ) from None


def load_hf_weights(
    ckpt_dir: Path, config: ModelConfig, tie_word_embeddings: bool
) -> dict[str, StoredWeight | torch.Tensor]:
    """Hugging Face safetensors memory-mapped under Meta's names; wq and wk as RowPermutedWeights."""
    files = hf_weight_files(ckpt_dir)
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    weights = {}
    for f, names in by_file.items():
        try:
            with safe_open(f, framework="pt") as opened:  # tensors stay mapped from the file after closing
                for name in names:
                    key = meta_key(name)
                    if key is not None:
                        weights[key] = opened.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"{f} could not be read as safetensors ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
                "It is probably truncated: download it again."
            ) from None
    tied = "output.weight" not in weights
    if tied and not tie_word_embeddings:
        raise CheckpointError(
            f"{ckpt_dir}: lm_head.weight is missing and config.json does not set tie_word_embeddings. Download every safetensors file."
        )
    want = expected_shapes(config, tied_output=tied)
    for key, shape in want.items():
        if key not in weights:
            raise CheckpointError(
                f"{ckpt_dir}: the safetensors files lack the tensor Meta calls {key}, which config.json implies. "
                "Download every safetensors file of the repository."
            )
        t = weights[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{files_for(files, key)}: {key} has shape {list(t.shape)} but config.json implies {list(shape)}."
            )
        if t.dtype != torch.bfloat16:
            raise CheckpointError(
                f"{files_for(files, key)}: {key} is {t.dtype}; Llama 3's safetensors are bfloat16. Use the repository's own files."
            )
    for i in range(config.n_layers):
        p = f"layers.{i}.attention."
        weights[p + "wq.weight"] = RowPermutedWeight(weights[p + "wq.weight"], config.n_heads)
        weights[p + "wk.weight"] = RowPermutedWeight(weights[p + "wk.weight"], config.n_kv_heads)
    if tied:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return {k: weights[k] for k in [*want, "output.weight"] if k in weights}


def files_for(files: dict[str, Path], meta: str) -> Path:
    return next((f for name, f in files.items() if meta_key(name) == meta), Path("?"))


def load_tokenizer_file(path: Path, release: str = "3") -> Tokenizer | ByteLevelBPE:
    """The tokenizer a checkpoint carries: Llama 3's from tokenizer.model, or from tokenizer.json either Llama 3's
    (its 256 special tokens, <|begin_of_text|> first: tokenizer_from_json) or another model's byte-level BPE
    (byte_level_bpe.load_tokenizer_json: SmolLM2's)."""
    path = Path(path)
    if path.suffix != ".json":
        return load_tokenizer(path, release)
    try:
        added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])
        names = {t.get("content") for t in added}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        names = {"<|begin_of_text|>"}  # let tokenizer_from_json say what is wrong with the file
    if "<|begin_of_text|>" in names:
        return tokenizer_from_json(path, release)
    return load_tokenizer_json(path)


def load_hf_tokenizer(ckpt_dir: Path, release: str) -> tuple[Tokenizer | ByteLevelBPE, Path]:
    """The tokenizer of a Hugging Face folder: Meta's tokenizer.model from original/ when it is there,
    else the same tokenizer built from tokenizer.json. Returns it and the file it came from."""
    model_file = ckpt_dir / "original" / "tokenizer.model"
    if model_file.exists():
        return load_tokenizer(model_file, release), model_file
    json_file = ckpt_dir / "tokenizer.json"
    return load_tokenizer_file(json_file, release), json_file  # Llama 3's, or another model's (SmolLM2's)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

BOS_TOKEN_ID = 128000
# eos_token_id of the pretrained (base) models' config.json: <|end_of_text|> in every release.
EOS_TOKEN_ID = 128001

# Per layer: Hugging Face's name <- Meta's name (the names the reader maps back).
LAYER_KEYS = {f"{hf}.weight": f"{meta}.weight" for hf, meta in HF_LAYER_NAMES.items()}


def to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n_heads * head_dim, dim] rows of wq or wk in Meta's order -> Hugging Face's (rope_row_permutation per
    head: each head's even rows, then its odd rows). A new tensor."""
    heads = w.reshape(n_heads, -1, w.shape[1])
    return heads[:, rope_row_permutation(heads.shape[1])].reshape(w.shape).contiguous()


def to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of to_hf_rows: Hugging Face's rows of wq or wk back in Meta's order."""
    heads = w.reshape(n_heads, -1, w.shape[1])
    return heads[:, torch.argsort(rope_row_permutation(heads.shape[1]))].reshape(w.shape).contiguous()


def hf_state_dict(
    meta_weights: dict[str, torch.Tensor], config: ModelConfig, permute: bool = True
) -> dict[str, torch.Tensor]:
    """Meta's tensors under Hugging Face's names, in the order of LlamaForCausalLM's modules.

    `permute=False` leaves wq and wk in Meta's row order: a wrong file, for tests that must tell it apart."""
    shapes = expected_shapes(config, tied_output=True)
    missing = [k for k in shapes if k not in meta_weights]
    wrong = [k for k in shapes if k in meta_weights and tuple(meta_weights[k].shape) != tuple(shapes[k])]
    if missing or wrong:
        raise CheckpointError(
            f"The weights do not fit params.json: missing {missing[:3]}, other shapes {wrong[:3]}. "
            "Pass a Meta state dict (consolidated.00.pth) and the params.json it came with."
        )
    reorder = to_hf_rows if permute else (lambda w, n: w)
    tied = output_is_tied(meta_weights)  # on the weights as given: a tied output is the embedding itself
    meta_weights = {  # Meta's rows (a layout's weight joined), each once: a tied output is not written
        k: weight_rows(w) for k, w in meta_weights.items() if not (tied and k == "output.weight")
    }
    state = {"model.embed_tokens.weight": meta_weights["tok_embeddings.weight"]}
    for i in range(config.n_layers):
        for hf_name, meta_name in LAYER_KEYS.items():
            w = meta_weights[f"layers.{i}.{meta_name}"]
            if meta_name == "attention.wq.weight":
                w = reorder(w, config.n_heads)
            elif meta_name == "attention.wk.weight":
                w = reorder(w, config.n_kv_heads)
            state[f"model.layers.{i}.{hf_name}"] = w
    state["model.norm.weight"] = meta_weights["norm.weight"]
    if not tied:
        state["lm_head.weight"] = meta_weights["output.weight"]
    return {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}


def hf_config(config: ModelConfig, tied: bool, special_ids: tuple[int, int] | None = None) -> dict:
    """config.json: LlamaConfig's fields with the values the converter gives each release. special_ids: the
    (begin, end) token ids of a model whose tokenizer is not Llama 3's."""
    import transformers

    bos_id, eos_id = special_ids or (BOS_TOKEN_ID, EOS_TOKEN_ID)

    rope_scaling = None
    if config.use_scaled_rope:
        rope_scaling = {
            "factor": config.rope_scale_factor,  # 8 for 3.1, 32 for 3.2
            "high_freq_factor": float(ROPE_HIGH_FREQ_FACTOR),
            "low_freq_factor": float(ROPE_LOW_FREQ_FACTOR),
            "original_max_position_embeddings": ROPE_ORIGINAL_CONTEXT,
            "rope_type": "llama3",
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "hidden_size": config.dim,
        "initializer_range": 0.02,
        "intermediate_size": config.ffn_hidden_dim,  # Meta's formula
        "max_position_embeddings": config.context_length,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": config.n_heads,
        "num_hidden_layers": config.n_layers,
        "num_key_value_heads": config.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": config.norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


def hf_generation_config(release: str, special_ids: tuple[int, int] | None = None) -> dict:
    """generation_config.json of the base models: 3.1 and 3.2 add sampling defaults."""
    import transformers

    bos_id, eos_id = special_ids or (BOS_TOKEN_ID, EOS_TOKEN_ID)
    generation = {"_from_model_config": True, "bos_token_id": bos_id, "eos_token_id": eos_id}
    if release != "3":
        generation |= {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    return generation | {"transformers_version": transformers.__version__}


_CONVERTED: dict[tuple[str, str], tuple[str, int]] = {}  # (sha256 of tokenizer.model, release) -> result


def converted_tokenizer_json(tokenizer_model: Path, release: str) -> tuple[str, int]:
    """tokenizer.json's text and <|begin_of_text|>'s id, kept per file content and release (converting takes
    seconds)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    key = (hashlib.sha256(Path(tokenizer_model).read_bytes()).hexdigest(), release)
    if key in _CONVERTED:
        return _CONVERTED[key]
    names = hf_special_token_names(release)
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the file itself, never a copy cached under its path
    try:
        tokenizer = TikTokenConverter(
            vocab_file=str(tokenizer_model), pattern=SPLIT_PATTERN, extra_special_tokens=names
        ).converted()
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous
    bos = names[0]
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, tokenizer.token_to_id(bos))],
            ),
        ]
    )
    _CONVERTED[key] = tokenizer.to_str(pretty=True), tokenizer.token_to_id(bos)
    return _CONVERTED[key]


def write_tokenizer_files(out_dir: Path, tokenizer_model: Path, config: ModelConfig) -> None:
    """tokenizer.json from tokenizer.model by transformers' TikTokenConverter with Llama 3's split pattern and
    the release's special tokens, <|begin_of_text|> prepended by the post-processor (as Hugging Face's files
    do); tokenizer_config.json naming the special tokens."""
    names = hf_special_token_names(config.release)
    text, first_id = converted_tokenizer_json(tokenizer_model, config.release)
    (out_dir / "tokenizer.json").write_text(text)
    bos = names[0]
    added = {
        str(first_id + i): {
            "content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True,
        }
        for i, name in enumerate(names)
    }  # fmt: skip
    tokenizer_config = {
        "added_tokens_decoder": added,
        "bos_token": bos,
        "clean_up_tokenization_spaces": True,
        "eos_token": names[1],  # <|end_of_text|>
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": config.context_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    write_json(out_dir / "tokenizer_config.json", tokenizer_config)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def shard(state: dict[str, torch.Tensor], shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order into shards of at most shard_bytes each (a larger tensor gets a shard of its own)."""
    shards, size = [{}], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def write_hf_checkpoint(
    meta_weights: dict[str, torch.Tensor],
    params: dict,
    release: str,
    out_dir: Path,
    tokenizer_model: Path,
    shard_bytes: int | None = None,
    permute: bool = True,
) -> Path:
    """Write Meta's state dict (Meta's names, full tensors; output.weight absent or equal to the embeddings
    for a tied model) as a Hugging Face Llama folder. `shard_bytes` splits the weights into
    model-0000N-of-0000M.safetensors files of at most that many bytes with model.safetensors.index.json;
    without it they go into one model.safetensors. `permute=False` only for tests: see hf_state_dict.
    Memory-mapped source tensors stay on disk until written; each file is assembled in memory, so memory
    peaks at one file plus the reordered wq and wk (1.3 GB at 8B): pass shard_bytes for large models."""
    out_dir = Path(out_dir)
    config = ModelConfig.from_params(params, release)
    if config.use_scaled_rope != (config.release != "3"):
        raise CheckpointError(
            f"Llama {config.release} with use_scaled_rope={config.use_scaled_rope}: Llama 3 has no RoPE scaling, "
            "3.1 and 3.2 have it. Pass the release that matches params.json (or unset LLAMA3_RELEASE)."
        )
    tied = output_is_tied(meta_weights)
    state = hf_state_dict(meta_weights, config, permute=permute)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("model*.safetensors"), *out_dir.glob("model.safetensors.index.json")]:
        old.unlink()  # a previous write with another number of shards
    metadata = {"format": "pt"}
    if shard_bytes is None:
        save_file(state, str(out_dir / "model.safetensors"), metadata=metadata)
    else:
        shards = shard(state, shard_bytes)
        weight_map = {}
        for n, part in enumerate(shards, start=1):
            filename = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(part, str(out_dir / filename), metadata=metadata)
            weight_map |= {name: filename for name in part}
        total_size = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        write_json(out_dir / "model.safetensors.index.json", index)
    special_ids = None
    if Path(tokenizer_model).suffix == ".json":  # a tokenizer that is not Llama 3's (SmolLM2's): kept as it is
        special_ids = copy_tokenizer_json(Path(tokenizer_model), out_dir)
    else:
        write_tokenizer_files(out_dir, Path(tokenizer_model), config)
    write_json(out_dir / "config.json", hf_config(config, tied, special_ids))
    write_json(out_dir / "generation_config.json", hf_generation_config(config.release, special_ids))
    return out_dir


def copy_tokenizer_json(tokenizer_json: Path, out_dir: Path) -> tuple[int, int]:
    """tokenizer.json and the tokenizer_config.json beside it into out_dir; returns the ids of the begin and
    end tokens tokenizer_config.json names (for config.json)."""
    config_file = tokenizer_json.with_name("tokenizer_config.json")
    if not config_file.exists():
        raise CheckpointError(f"{config_file} is missing: it names the begin and end tokens of {tokenizer_json}.")
    copy_tokenizer(tokenizer_json, out_dir)
    tokenizer = load_tokenizer_file(out_dir / "tokenizer.json")
    names = json.loads(config_file.read_text())
    return tokenizer.encode_single_token(names["bos_token"]), tokenizer.encode_single_token(names["eos_token"])
