"""Write a Llama 3 checkpoint in Hugging Face's layout, as the meta-llama/* repositories ship it.

The folder holds what Hugging Face's Llama converter (transformers' convert_llama_weights_to_hf, as run
for Llama 3, 3.1 and 3.2) made of Meta's original files:

- model.safetensors, or model-0000N-of-0000M.safetensors with model.safetensors.index.json: bfloat16
  tensors under Hugging Face's names (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight,
  ...); lm_head.weight is left out when the output matrix is the embedding table (Llama 3.2 1B/3B);
- wq and wk with each head's rows reordered: Meta's RoPE rotates interleaved pairs of dimensions (0, 1),
  (2, 3), ...; Hugging Face's rotate_half pairs dimension i with i + head_dim/2, so the converter moves
  each head's even rows to its first half and its odd rows to its second half (notebook 05);
- config.json (LlamaConfig's fields), generation_config.json, tokenizer.json (made from tokenizer.model
  by transformers' TikTokenConverter) and tokenizer_config.json.

    python scripts/make_checkpoint.py OUT --preset gqa2 --layout hf [--hf-shard-bytes N]
    python scripts/make_checkpoint.py OUT --from build/llama3-demo --layout hf
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "notebooks"))
import llama3  # noqa: E402

BOS_TOKEN_ID = 128000
# eos_token_id of the pretrained (base) models' config.json: <|end_of_text|> in every release.
EOS_TOKEN_ID = 128001
# max_position_embeddings: Llama 3 was trained on 8192 positions; 3.1 and 3.2 reach 131072 with scaled RoPE.
CONTEXT_LENGTH = {"3": 8192, "3.1": 131072, "3.2": 131072}

# Per layer: Hugging Face's name <- Meta's name (the names the reader, llama3.layouts, maps back).
LAYER_KEYS = {f"{hf}.weight": f"{meta}.weight" for hf, meta in llama3.layouts.HF_LAYER_NAMES.items()}


def interleaved_to_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n_heads * head_dim, dim] rows of wq or wk reordered per head from Meta's interleaved RoPE pairs
    (rows 2i, 2i+1 form pair i) to Hugging Face's halves (rows i and i + head_dim/2 form pair i)."""
    head_dim = w.shape[0] // n_heads
    per_pair = w.reshape(n_heads, head_dim // 2, 2, w.shape[1])  # [heads, pair, (even, odd), dim]
    return per_pair.transpose(1, 2).reshape(w.shape).contiguous()  # [heads, (evens, odds), dim]


def half_split_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleaved_to_half_split."""
    head_dim = w.shape[0] // n_heads
    halves = w.reshape(n_heads, 2, head_dim // 2, w.shape[1])
    return halves.transpose(1, 2).reshape(w.shape).contiguous()


def output_is_tied(meta_weights: dict[str, torch.Tensor]) -> bool:
    """No output.weight, or the embedding table itself under that name."""
    output, embeddings = meta_weights.get("output.weight"), meta_weights["tok_embeddings.weight"]
    if output is None or output.data_ptr() == embeddings.data_ptr():
        return True
    return output.shape == embeddings.shape and torch.equal(output, embeddings)


def hf_state_dict(
    meta_weights: dict[str, torch.Tensor], config: llama3.ModelConfig, permute: bool = True
) -> dict[str, torch.Tensor]:
    """Meta's tensors under Hugging Face's names, in the order of LlamaForCausalLM's modules.

    `permute=False` leaves wq and wk in Meta's row order: a wrong file, for tests that must tell it apart."""
    shapes = llama3.expected_shapes(config, tied_output=True)
    missing = [k for k in shapes if k not in meta_weights]
    wrong = [k for k in shapes if k in meta_weights and tuple(meta_weights[k].shape) != tuple(shapes[k])]
    if missing or wrong:
        raise llama3.CheckpointError(
            f"The weights do not fit params.json: missing {missing[:3]}, other shapes {wrong[:3]}. "
            "Pass a Meta state dict (consolidated.00.pth) and the params.json it came with."
        )
    reorder = interleaved_to_half_split if permute else (lambda w, n: w)
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
    if not output_is_tied(meta_weights):
        state["lm_head.weight"] = meta_weights["output.weight"]
    return {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}


def hf_config(config: llama3.ModelConfig, release: str, tied: bool, special_ids: tuple[int, int] | None = None) -> dict:
    """config.json: LlamaConfig's fields with the values the converter gives each release. special_ids: the
    (begin, end) token ids of a model whose tokenizer is not Llama 3's."""
    bos_id, eos_id = special_ids or (BOS_TOKEN_ID, EOS_TOKEN_ID)
    import transformers

    rope_scaling = None
    if release != "3":
        rope_scaling = {
            "factor": llama3.ROPE_SCALE_FACTORS[release],  # 8 for 3.1, 32 for 3.2
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
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
        "max_position_embeddings": CONTEXT_LENGTH[release],
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
    names = llama3.hf_special_token_names(release)
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the file itself, never a copy cached under its path
    try:
        tokenizer = TikTokenConverter(
            vocab_file=str(tokenizer_model), pattern=llama3.SPLIT_PATTERN, extra_special_tokens=names
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


def write_tokenizer_files(out_dir: Path, tokenizer_model: Path, release: str) -> None:
    """tokenizer.json from tokenizer.model by transformers' TikTokenConverter with Llama 3's split pattern and
    the release's special tokens, <|begin_of_text|> prepended by the post-processor (as Hugging Face's files
    do); tokenizer_config.json naming the special tokens."""
    names = llama3.hf_special_token_names(release)
    text, first_id = converted_tokenizer_json(tokenizer_model, release)
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
        "model_max_length": CONTEXT_LENGTH[release],
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
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    config = llama3.ModelConfig.from_params(params, release)
    if config.use_scaled_rope != (config.release != "3"):
        raise llama3.CheckpointError(
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
        write_tokenizer_files(out_dir, Path(tokenizer_model), config.release)
    write_json(out_dir / "config.json", hf_config(config, config.release, tied, special_ids))
    write_json(out_dir / "generation_config.json", hf_generation_config(config.release, special_ids))
    return out_dir


def copy_tokenizer_json(tokenizer_json: Path, out_dir: Path) -> tuple[int, int]:
    """tokenizer.json and the tokenizer_config.json beside it into out_dir; returns the ids of the begin and
    end tokens tokenizer_config.json names (for config.json)."""
    from write_shards import copy_tokenizer

    config_file = tokenizer_json.with_name("tokenizer_config.json")
    if not config_file.exists():
        raise llama3.CheckpointError(f"{config_file} is missing: it names the begin and end tokens of {tokenizer_json}.")
    copy_tokenizer(tokenizer_json, out_dir)
    tokenizer = llama3.load_tokenizer_file(out_dir / "tokenizer.json")
    names = json.loads(config_file.read_text())
    return tokenizer.encode_single_token(names["bos_token"]), tokenizer.encode_single_token(names["eos_token"])


def read_meta_checkpoint(meta_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """params.json and consolidated.00.pth (memory-mapped, weights_only) of a Meta checkpoint folder."""
    meta_dir = Path(meta_dir)
    for name in ("params.json", "consolidated.00.pth", "tokenizer.model"):
        if not (meta_dir / name).is_file():
            raise llama3.CheckpointError(
                f"{meta_dir / name} is missing: --from needs a folder in Meta's layout (params.json, "
                "consolidated.00.pth, tokenizer.model), such as build/llama3-demo (make demo)."
            )
    params = json.loads((meta_dir / "params.json").read_text())
    weights = torch.load(meta_dir / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    return weights, params


def random_meta_weights(
    params: dict, seed: int, embedding_scale: float, tied: bool, weight_std: float | None = None
) -> dict[str, torch.Tensor]:
    """The tensors make_checkpoint.write_checkpoint writes for these arguments, in memory: the same keys in
    the same order, filled from the same generator, so both layouts of one seed hold the same model."""
    import make_checkpoint

    config = llama3.ModelConfig.from_params(params)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in llama3.expected_shapes(config, tied_output=tied).items():
        weights[key] = torch.empty(shape, dtype=torch.bfloat16)
        make_checkpoint.fill_random(weights[key], key, gen, embedding_scale, weight_std)
    return weights


def write_from_args(args, presets: dict, tied_presets: set) -> Path:
    """make_checkpoint.py --layout hf: the preset's random weights, or a Meta folder's (--from), in
    Hugging Face's layout. The release is told from params.json, or $LLAMA3_RELEASE.

    The random weights are made in memory (16 GB at 8B); --from reads a Meta checkpoint memory-mapped, so
    for 8B write it with make_checkpoint.py first and convert it with --from and --hf-shard-bytes."""
    from train_demo import reference_tokenizer_path

    release_override = os.environ.get("LLAMA3_RELEASE") or None
    try:
        if args.from_dir is not None:
            weights, params = read_meta_checkpoint(args.from_dir)
            tokenizer_model = args.from_dir / "tokenizer.model"
        else:
            params = presets[args.preset] if args.preset else json.loads(args.params)
            tied = args.tied or args.preset in tied_presets
            weights = random_meta_weights(params, args.seed, args.embedding_scale, tied, args.weight_std)
            tokenizer_model = reference_tokenizer_path()
        release = llama3.release_from_params(params, release_override)
        return write_hf_checkpoint(weights, params, release, args.out, tokenizer_model, args.hf_shard_bytes)
    except llama3.CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
