"""The checkpoint (notebook 01): Meta's files checked and memory-mapped, shapes with names, beside 8B's."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import *  # noqa: F401,F403
from .tokens import *  # noqa: F401,F403
from .fast import *  # noqa: F401,F403


def pick_device() -> tuple[torch.device, torch.dtype]:
    """$LLAMA3_DEVICE, else CUDA, else Apple's MPS, else the CPU; bfloat16 where it is supported well."""
    name = os.environ.get("LLAMA3_DEVICE")
    if name is None:
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return device, torch.float16  # pre-Ampere GPUs
    return device, torch.bfloat16


def checkpoint_dir(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint to read: `path`, else $LLAMA3_DIR, else the demo checkpoint."""
    if path is None:
        path = os.environ.get("LLAMA3_DIR") or DEMO_DIR
    return Path(path).expanduser()


def prompt_text(prompt: str | None = None) -> str:
    """The prompt to run: `prompt`, else $LLAMA3_PROMPT, else the default question."""
    if prompt is None:
        prompt = os.environ.get("LLAMA3_PROMPT", DEFAULT_PROMPT)
    return prompt


LAYOUTS = ("meta", "meta-sharded", "huggingface")


def checkpoint_layout(ckpt_dir: Path) -> str:
    """Which of the layouts Meta and Hugging Face ship a folder holds, checked enough to fail early with the fix:

    "meta"          Meta's original files: consolidated.00.pth, params.json, tokenizer.model (8B, 3.2 1B/3B);
                    a Llama-architecture model with another tokenizer has tokenizer.json in its place (SmolLM2)
    "meta-sharded"  the same cut into consolidated.00.pth ... consolidated.NN.pth (70B, 405B; notebook 17)
    "huggingface"   a meta-llama repository: config.json, *.safetensors, tokenizer.json (notebook 05)
    """
    if ckpt_dir == DEMO_DIR and not ckpt_dir.exists():
        raise CheckpointError(
            f"The demo checkpoint {ckpt_dir} has not been built yet. "
            "Run `make demo` (or `python scripts/build_demo_checkpoint.py`) first."
        )
    if ckpt_dir in (SMOLLM2_DIR, SMOLLM2_HF_DIR) and not ckpt_dir.exists():
        raise CheckpointError(f"The real model {ckpt_dir} has not been built yet. Run `make smollm2` first.")
    if not ckpt_dir.is_dir():
        raise CheckpointError(
            f"LLAMA3_DIR={ckpt_dir} is not a directory. Point LLAMA3_DIR at a folder holding Meta's "
            "consolidated.*.pth, params.json and tokenizer.model, or a Hugging Face meta-llama repository "
            "(config.json, *.safetensors), or unset it to use the demo checkpoint."
        )
    names = {p.name for p in ckpt_dir.iterdir()}
    shards = sorted(n for n in names if n.startswith("consolidated.") and n.endswith(".pth"))
    if shards:
        # A model whose tokenizer is not Llama 3's carries it as Hugging Face's tokenizer.json instead (make smollm2).
        for name in ("params.json", "tokenizer.model" if "tokenizer.json" not in names else "tokenizer.json"):
            if name not in names:
                raise CheckpointError(
                    f"{ckpt_dir / name} is missing. A Llama 3 checkpoint directory in Meta's layout holds "
                    "consolidated.*.pth, params.json and tokenizer.model; download all of them (see notebook 01)."
                )
        return "meta" if shards == ["consolidated.00.pth"] else "meta-sharded"
    if "config.json" in names and any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        if "tokenizer.json" not in names and not (ckpt_dir / "original" / "tokenizer.model").exists():
            raise CheckpointError(
                f"{ckpt_dir / 'tokenizer.json'} is missing. Download it from the same Hugging Face repository."
            )
        return "huggingface"
    if "pytorch_model.bin" in names or "pytorch_model.bin.index.json" in names:
        raise CheckpointError(
            f"{ckpt_dir} holds Hugging Face's older pytorch_model*.bin files, which are pickles that can run code "
            "when loaded. Download the repository's *.safetensors files, or its original/ folder."
        )
    if "original" in names and (ckpt_dir / "original" / "params.json").exists():
        raise CheckpointError(
            f"{ckpt_dir} has no weights at its top level, only an original/ folder: set "
            f"LLAMA3_DIR={ckpt_dir / 'original'} (Meta's files) or download the repository's *.safetensors."
        )
    raise CheckpointError(
        f"{ckpt_dir / 'consolidated.00.pth'} is missing. A Llama 3 checkpoint directory holds Meta's "
        "consolidated.*.pth, params.json and tokenizer.model, or a Hugging Face repository's config.json, "
        "*.safetensors and tokenizer.json; download one of them (see notebook 01)."
    )


def check_checkpoint_dir(ckpt_dir: Path) -> None:
    """Fail early, with the fix, on a folder that holds none of the layouts checkpoint_layout reads."""
    checkpoint_layout(ckpt_dir)


def read_json(path: Path):
    """A checkpoint's JSON file (params.json, config.json), or one message naming it and the fix."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}). Download {path.name} again.") from None


def read_params(ckpt_dir: Path, release: str | None = None) -> ModelConfig:
    path = ckpt_dir / "params.json"
    params = read_json(path)
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} does not hold a JSON object. Download params.json again.")
    missing = [k for k in PARAMS_REQUIRED if k not in params]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}. Download params.json again from the same release.")
    if params["vocab_size"] in (-1, 32000) or "rope_theta" not in params:
        raise CheckpointError(
            f"{path} describes a Llama 2 model (vocab_size {params['vocab_size']}, no rope_theta). "
            "This walkthrough needs a Llama 3 checkpoint such as Meta-Llama-3-8B."
        )
    try:
        config = ModelConfig.from_params(params, release)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a value of the wrong type ({e}). Download params.json again.") from None
    if config.dim % config.n_heads or config.n_heads % config.n_kv_heads or config.head_dim % 2:
        raise CheckpointError(
            f"{path}: dim {config.dim}, n_heads {config.n_heads} and n_kv_heads {config.n_kv_heads} do not "
            "divide into whole, even-sized heads. Download params.json again from the same release."
        )
    return config


def expected_shapes(config: ModelConfig, tied_output: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Meta-format checkpoint with this config, by key, in the order Meta's files list them.

    Nothing depends on that order: `load_weights` checks a file key by key, and writers
    use this order only so their files look like Meta's.
    """
    D, V, F = config.dim, config.vocab_size, config.ffn_hidden_dim
    kv = config.n_kv_heads * config.head_dim
    shapes = {"tok_embeddings.weight": (V, D)}
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (D, D),
            p + "attention.wk.weight": (kv, D),
            p + "attention.wv.weight": (kv, D),
            p + "attention.wo.weight": (D, D),
            p + "feed_forward.w1.weight": (F, D),
            p + "feed_forward.w3.weight": (F, D),  # w3 before w2, as in Meta's files
            p + "feed_forward.w2.weight": (D, F),
            p + "attention_norm.weight": (D,),
            p + "ffn_norm.weight": (D,),
        }
    shapes["norm.weight"] = (D,)
    if not tied_output:
        shapes["output.weight"] = (V, D)
    return shapes


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A consolidated.NN.pth memory-mapped, with weights_only: a checkpoint is data; never run code from it."""
    try:
        weights = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged zip
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "It is probably truncated or corrupt: compare its size and checksum with the download and fetch it again."
        ) from None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} does not hold a dict of tensors. Download {path.name} again.")
    return weights


def load_weights(ckpt_dir: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """consolidated.00.pth memory-mapped: tensors are read from disk only when touched."""
    path = ckpt_dir / "consolidated.00.pth"
    weights = read_pth(path)
    not_bf16 = [k for k, t in weights.items() if isinstance(t, torch.Tensor) and t.dtype != torch.bfloat16]
    if not_bf16:
        raise CheckpointError(
            f"{path}: {not_bf16[0]} is {weights[not_bf16[0]].dtype}, but Meta's checkpoints hold bfloat16 only. "
            "This file was converted by other code; use Meta's original consolidated.00.pth."
        )
    tied = "output.weight" not in weights  # a file without output.weight reuses the embedding matrix
    from .layouts import check_shard  # the whole model is one shard of one

    check_shard(path, weights, expected_shapes(config, tied_output=tied), 1, ckpt_dir / "params.json")
    if tied:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return weights




@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # by Meta's names; in other layouts some are layouts.StoredWeight
    tokenizer: "tiktoken.Encoding"  # noqa: F821
    layout: str = "meta"  # see checkpoint_layout
    files: tuple[Path, ...] = ()  # the weight files read
    tokenizer_file: Path | None = None  # tokenizer.model, or Hugging Face's tokenizer.json

    @property
    def device(self) -> torch.device:
        return self.weights["tok_embeddings.weight"].device

    @property
    def release(self) -> str:
        return self.config.release


def load_checkpoint(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None, release: str | None = None
) -> Checkpoint:
    """Checked checkpoint: config, weights and tokenizer together.

    On the CPU the weights stay memory-mapped bfloat16; on a GPU they are copied to it once.
    `device` defaults to pick_device(). `release` ("3", "3.1" or "3.2") defaults to $LLAMA3_RELEASE,
    else it is told from params.json (release_from_params); it picks the RoPE scale factor and
    the tokenizer's special-token names, stop tokens and chat rules.
    """
    ckpt_dir = checkpoint_dir(path)
    layout = checkpoint_layout(ckpt_dir)
    release = release or os.environ.get("LLAMA3_RELEASE") or None
    from . import layouts  # the other layouts, notebook 17

    if layout == "huggingface":
        config = layouts.read_hf_config(ckpt_dir, release)
        tokenizer, tokenizer_path = layouts.load_hf_tokenizer(ckpt_dir, config.release)
    else:
        config = read_params(ckpt_dir, release)
        tokenizer_path = ckpt_dir / "tokenizer.model"
        if not tokenizer_path.exists():  # a model whose tokenizer is not Llama 3's (checkpoint_layout)
            tokenizer_path = ckpt_dir / "tokenizer.json"
        tokenizer = load_tokenizer_file(tokenizer_path, config.release)
    if tokenizer.n_vocab != config.vocab_size:
        raise CheckpointError(f"{tokenizer_count_text(tokenizer, tokenizer_path)}, but the model's vocab_size is "
                              f"{config.vocab_size}. Use the tokenizer that came with this checkpoint.")
    if layout == "meta":
        weights, files = load_weights(ckpt_dir, config), (ckpt_dir / "consolidated.00.pth",)
    elif layout == "meta-sharded":
        weights, files = layouts.load_sharded_weights(ckpt_dir, config), tuple(layouts.shard_files(ckpt_dir))
    else:
        tie = layouts.read_hf_tie(ckpt_dir)
        weights = layouts.load_hf_weights(ckpt_dir, config, tie)
        files = tuple(sorted(set(layouts.hf_weight_files(ckpt_dir).values())))
    device, dtype = pick_device() if device is None else (torch.device(device), torch.bfloat16)
    if device.type != "cpu" or dtype != torch.bfloat16:
        on_device = {}  # keep a tied output matrix shared
        weights = {k: on_device.setdefault(v.data_ptr(), v.to(device, dtype)) for k, v in weights.items()}
    else:
        map_weights(weights)
    return Checkpoint(ckpt_dir, config, weights, tokenizer, layout, files, tokenizer_path)


def tokenizer_count_text(tokenizer, path: Path) -> str:
    """What a tokenizer file holds, for a message: tokenizer.model's ranks are the file's tokens, and the loader
    adds Llama 3's 256 special tokens to them; a tokenizer.json holds all of its tokens itself."""
    if Path(path).suffix == ".model":
        held = tokenizer.n_vocab - NUM_SPECIAL_TOKENS
        return (f"{path} holds {held} tokens (with the {NUM_SPECIAL_TOKENS} special tokens Llama 3 adds to them, "
                f"{tokenizer.n_vocab})")
    return f"{path} holds {tokenizer.n_vocab} tokens"


def params_of(ck: "Checkpoint") -> dict:
    """Meta's params.json of this checkpoint; for a Hugging Face folder the same numbers from config.json."""
    if ck.layout != "huggingface":
        return json.loads((ck.path / "params.json").read_text())
    c = ck.config
    return {
        "dim": c.dim, "n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
        "vocab_size": c.vocab_size, "multiple_of": c.multiple_of, "ffn_dim_multiplier": c.ffn_dim_multiplier,
        "norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "use_scaled_rope": c.use_scaled_rope,
    }  # fmt: skip


def tokenizer_model_file(ck: "Checkpoint") -> Path:
    """The checkpoint's tokenizer.model, or for a folder with only Hugging Face's tokenizer.json (from which
    the same tokenizer is built: tests/test_huggingface_writer.py) Meta's file as llama-models ships it.
    A model whose tokenizer is not Llama 3's has no such file: see tokenizer_file_to_copy."""
    return ck.tokenizer_file if ck.tokenizer_file.suffix == ".model" else meta_tokenizer_model()


def tokenizer_file_to_copy(ck: "Checkpoint") -> Path:
    """The file that gives this checkpoint's tokenizer when written beside its weights in Meta's layout:
    tokenizer_model_file for Llama 3's tokenizer, else its own tokenizer.json (the writer keeps the name)."""
    return tokenizer_model_file(ck) if is_llama3_tokenizer(ck.tokenizer) else ck.tokenizer_file


def other_tokenizer_note(ck: "Checkpoint") -> str | None:
    """None for a checkpoint with Llama 3's tokenizer; for a Llama-architecture model with another one (SmolLM2,
    notebook 16) the line the notebooks about Llama 3's own tokenizer, chat format and family (02, 13, 14) print."""
    if is_llama3_tokenizer(ck.tokenizer):
        return None
    return (f"{ck.path.name} has the Llama architecture, but its tokenizer ({ck.tokenizer_file.name}), chat format "
            "and family are not Llama 3's: this notebook goes on with Llama 3's")


def with_llama3_tokenizer(ck: "Checkpoint") -> tuple["Checkpoint", str | None]:
    """(ck, None) when its tokenizer is Llama 3's; else the demo checkpoint, which has Llama 3's tokenizer (Meta's
    tokenizer.model from llama-models) and a model that reads its ids, and other_tokenizer_note saying so."""
    note = other_tokenizer_note(ck)
    if note is None:
        return ck, None
    return load_checkpoint(DEMO_DIR, device=ck.device), f"{note}, on the demo checkpoint ({DEMO_DIR.name})"


def stored_tensors(w) -> list[torch.Tensor]:
    """The tensors a weight is made of: itself, or the shards of a layouts.StoredWeight."""
    return w.tensors() if hasattr(w, "tensors") else [w]


def count_parameters(weights: dict[str, torch.Tensor]) -> int:
    """Parameters stored in the file (a tied output matrix counts once)."""
    seen = {}
    for w in weights.values():
        for t in stored_tensors(w):
            seen[t.data_ptr()] = t.numel()
    return sum(seen.values())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def named_shape(t: torch.Tensor, *names: str) -> str:
    """`[tokens=17, head_dim=128]`: a shape with what each dimension is."""
    if len(names) != t.dim():
        raise ValueError(f"{len(names)} names for a {t.dim()}-d tensor")
    return "[" + ", ".join(f"{n}={s}" for n, s in zip(names, t.shape)) + "]"


def dim_sizes(config: ModelConfig, n_tokens: int) -> dict[str, int]:
    """The size of every named dimension the notebooks print, for this config and prompt length."""
    return {
        "tokens": n_tokens, "dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim, "pairs": config.head_dim // 2,
        "queries_per_kv_head": config.queries_per_kv_head, "ffn_hidden": config.ffn_hidden_dim,
        "vocab_size": config.vocab_size,
    }  # fmt: skip


def shape_from_names(names, config: ModelConfig, n_tokens: int) -> tuple[int, ...]:
    """("n_heads*head_dim", "dim") -> (4096, 4096) at 8B: each name a dimension, or a product of them."""
    sizes = dim_sizes(config, n_tokens)
    return tuple(math.prod(sizes[part] for part in name.split("*")) for name in names)


def shapes_beside_8b(rows, config: ModelConfig, n_tokens: int) -> str:
    """A table of tensors' shapes here and at Llama 3 8B with the same number of tokens.

    rows: (label, tensor, dimension names). The 8B column is computed from Meta's 8B params.json
    with the same names, and each tensor must have the shape its names give at this config,
    so the table cannot name a dimension wrongly.
    """
    lines = []
    for label, tensor, names in rows:
        here = shape_from_names(names, config, n_tokens)
        if tuple(tensor.shape) != here:
            raise ValueError(f"{label} has shape {list(tensor.shape)}, not {list(here)} = {list(names)}")
        lines.append((label, named_shape(tensor, *names), str(list(shape_from_names(names, LLAMA3_8B, n_tokens)))))
    header = ("", "this checkpoint", "Llama 3 8B")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


def layout_text(ck: "Checkpoint") -> str:
    """"Meta, one file" / "Meta, 8 shards (consolidated.00-07.pth)" / "Hugging Face safetensors, 4 files"."""
    n = len(ck.files)
    if ck.layout == "meta":
        return "Meta's original, one file (consolidated.00.pth)"
    if ck.layout == "meta-sharded":
        return f"Meta's original in {n} model-parallel shards (consolidated.00-{n - 1:02d}.pth)"
    return f"Hugging Face safetensors, {'one file' if n == 1 else f'{n} files'}"


def describe(ck: "Checkpoint") -> str:
    """One line naming the checkpoint a notebook runs on."""
    if ck.path == DEMO_DIR:  # a path relative to the repo, so stored outputs match on any machine
        where = f"the demo checkpoint (Llama 3 in miniature): {DEMO_DIR.relative_to(REPO_DIR)}"
    elif ck.path.resolve().is_relative_to(REPO_DIR):  # the demo in other layouts, under build/
        where = f"{ck.path.resolve().relative_to(REPO_DIR)}"
    else:
        where = f"LLAMA3_DIR: {ck.path}"
    c = ck.config
    return (
        f"{where}\n"
        f"layout: {layout_text(ck)}\n"
        f"device: {ck.device.type}, weights {str(ck.weights['norm.weight'].dtype).removeprefix('torch.')}\n"
        f"dim={c.dim}, n_layers={c.n_layers}, n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads}, "
        f"head_dim={c.head_dim}, vocab_size={c.vocab_size}"
    )
