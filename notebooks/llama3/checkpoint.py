"""The checkpoint (notebook 01): which layout a folder holds, read by its format module, checked, and held
together with its config and tokenizer; one line that names it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEMO_DIR, REPO_DIR, SMOLLM2_DIR, SMOLLM2_HF_DIR, CheckpointError, ModelConfig, checkpoint_dir
from .formats import huggingface, meta
from .pages import map_weights
from .tokens import (
    Tokenizer,
    is_llama3_tokenizer,
    meta_tokenizer_model,
    release_of_special_tokens,
    special_token_names,
    special_tokens_in_order,
    tokenizer_count_text,
)


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


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # by Meta's names; in other layouts some are weights.StoredWeight
    tokenizer: Tokenizer
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
    `device` defaults to pick_device().

    The release ("3", "3.1" or "3.2") is decided here, once: `release`, else $LLAMA3_RELEASE, else what
    params.json (release_from_params) or config.json (its rope_scaling) says. Everything that differs
    between releases follows it: the RoPE scale factor, the context length, and through the tokenizer
    (Tokenizer.release) the special tokens, stop tokens and chat rules. Where the tokenizer file names its
    special tokens as another release does (a tokenizer.json with Llama 3's names beside a 3.1
    config.json), the names are only names: the ids are the same in every release, and the
    checkpoint's release decides what they mean (describe says so).
    """
    ckpt_dir = checkpoint_dir(path)
    layout = checkpoint_layout(ckpt_dir)
    release = release or os.environ.get("LLAMA3_RELEASE") or None
    if layout == "huggingface":
        config, tied = huggingface.read_hf_config(ckpt_dir, release)
        tokenizer, tokenizer_path = huggingface.load_hf_tokenizer(ckpt_dir, config.release)
    else:
        config = meta.read_params(ckpt_dir, release)
        tokenizer_path = ckpt_dir / "tokenizer.model"
        if not tokenizer_path.exists():  # a model whose tokenizer is not Llama 3's (checkpoint_layout)
            tokenizer_path = ckpt_dir / "tokenizer.json"
        tokenizer = huggingface.load_tokenizer_file(tokenizer_path, config.release)
    if tokenizer.n_vocab != config.vocab_size:
        raise CheckpointError(
            f"{tokenizer_count_text(tokenizer, tokenizer_path)}, but the model's vocab_size is "
            f"{config.vocab_size}. Use the tokenizer that came with this checkpoint."
        )
    if layout == "meta":
        weights, files = meta.load_weights(ckpt_dir, config), (ckpt_dir / "consolidated.00.pth",)
    elif layout == "meta-sharded":
        weights, files = meta.load_sharded_weights(ckpt_dir, config), tuple(meta.shard_files(ckpt_dir))
    else:
        weights = huggingface.load_hf_weights(ckpt_dir, config, tied)
        files = tuple(sorted(set(huggingface.hf_weight_files(ckpt_dir).values())))
    device, dtype = pick_device() if device is None else (torch.device(device), torch.bfloat16)
    if device.type != "cpu" or dtype != torch.bfloat16:
        on_device = {}  # keep a tied output matrix shared
        weights = {k: on_device.setdefault(v.data_ptr(), v.to(device, dtype)) for k, v in weights.items()}
    else:
        map_weights(weights)
    return Checkpoint(ckpt_dir, config, weights, tokenizer, layout, files, tokenizer_path)


def layout_text(ck: "Checkpoint") -> str:
    """ "Meta, one file" / "Meta, 8 shards (consolidated.00-07.pth)" / "Hugging Face safetensors, 4 files"."""
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
    text = (
        f"{where}\n"
        f"layout: {layout_text(ck)}\n"
        f"device: {ck.device.type}, weights {str(ck.weights['norm.weight'].dtype).removeprefix('torch.')}\n"
        f"dim={c.dim}, n_layers={c.n_layers}, n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads}, "
        f"head_dim={c.head_dim}, vocab_size={c.vocab_size}"
    )
    if not is_llama3_tokenizer(ck.tokenizer):
        return text + f"\ntokenizer: {ck.tokenizer_file.name}, not Llama 3's ({ck.tokenizer.n_vocab} tokens)"
    named_as = release_of_special_tokens(special_tokens_in_order(ck.tokenizer))
    if named_as != release_of_special_tokens(special_token_names(ck.release)):
        text += (
            f"\nrelease: Llama {ck.release} ({'params.json' if ck.layout != 'huggingface' else 'config.json'}); "
            f"{ck.tokenizer_file.name} names its special tokens as Llama {named_as} does, but the ids are the same "
            f"and Llama {ck.release}'s rules apply"
        )
    return text


def params_of(ck: Checkpoint) -> dict:
    """Meta's params.json of this checkpoint; for a Hugging Face folder the same numbers from config.json."""
    if ck.layout != "huggingface":
        return meta.read_json(ck.path / "params.json")
    c = ck.config
    return {
        "dim": c.dim, "n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
        "vocab_size": c.vocab_size, "multiple_of": c.multiple_of, "ffn_dim_multiplier": c.ffn_dim_multiplier,
        "norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "use_scaled_rope": c.use_scaled_rope,
    }  # fmt: skip


def tokenizer_model_file(ck: Checkpoint) -> Path:
    """The checkpoint's tokenizer.model, or for a folder with only Hugging Face's tokenizer.json (from which
    the same tokenizer is built: tests/test_huggingface_writer.py) Meta's file as llama-models ships it.
    A model whose tokenizer is not Llama 3's has no such file: see tokenizer_file_to_copy."""
    return ck.tokenizer_file if ck.tokenizer_file.suffix == ".model" else meta_tokenizer_model()


def tokenizer_file_to_copy(ck: Checkpoint) -> Path:
    """The file that gives this checkpoint's tokenizer when written beside its weights in another layout:
    tokenizer_model_file for Llama 3's tokenizer, else its own tokenizer.json (the writers keep the name)."""
    return tokenizer_model_file(ck) if is_llama3_tokenizer(ck.tokenizer) else ck.tokenizer_file


def other_tokenizer_note(ck: Checkpoint) -> str | None:
    """None for a checkpoint with Llama 3's tokenizer; for a Llama-architecture model with another one (SmolLM2,
    notebook 16) the line the notebooks about Llama 3's own tokenizer, chat format and family print."""
    if is_llama3_tokenizer(ck.tokenizer):
        return None
    return (
        f"{ck.path.name} has the Llama architecture, but its tokenizer ({ck.tokenizer_file.name}), chat format "
        "and family are not Llama 3's: this notebook goes on with Llama 3's"
    )


def with_llama3_tokenizer(ck: Checkpoint) -> tuple[Checkpoint, str | None]:
    """(ck, None) when its tokenizer is Llama 3's; else the demo checkpoint, which has Llama 3's tokenizer (Meta's
    tokenizer.model from llama-models) and a model that reads its ids, and other_tokenizer_note saying so."""
    note = other_tokenizer_note(ck)
    if note is None:
        return ck, None
    return load_checkpoint(DEMO_DIR, device=ck.device), f"{note}, on the demo checkpoint ({DEMO_DIR.name})"


def map_file(path: Path) -> dict[str, torch.Tensor]:
    """One weight file memory-mapped, a consolidated.NN.pth or a .safetensors: its tensors by their names in it."""
    if path.suffix == ".safetensors":
        return huggingface.map_safetensors(path)
    return meta.read_pth(path)


# ---------------------------------------------------------------------------------------
# A checkpoint written again in another layout
# ---------------------------------------------------------------------------------------


def _loaded(source: Checkpoint | str | os.PathLike, out_dir: Path) -> Checkpoint:
    ck = source if isinstance(source, Checkpoint) else load_checkpoint(source, device="cpu")
    if Path(out_dir).resolve() == ck.path.resolve():
        raise CheckpointError(f"{out_dir} is the source folder itself: write into another folder.")
    return ck


def reshard(source: Checkpoint | str | os.PathLike, out_dir: Path, n_shards: int) -> dict:
    """A checkpoint of any layout (a folder, or one already loaded) written as Meta's n_shards model-parallel
    files (formats.meta.write_meta_shards); a weight held in shards or rows of another order is put in
    Meta's order one at a time. Returns the params written."""
    ck = _loaded(source, out_dir)
    return meta.write_meta_shards(ck.weights, params_of(ck), Path(out_dir), n_shards, tokenizer_file_to_copy(ck))


def to_hugging_face(source: Checkpoint | str | os.PathLike, out_dir: Path, shard_bytes: int | None = None) -> Path:
    """A checkpoint of any layout written as Hugging Face's converter writes it (formats.huggingface)."""
    ck = _loaded(source, out_dir)
    return huggingface.write_hf_checkpoint(
        ck.weights, params_of(ck), ck.release, Path(out_dir), tokenizer_file_to_copy(ck), shard_bytes
    )
