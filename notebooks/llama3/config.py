"""The model's numbers (notebook 01): params.json as a ModelConfig, the releases of Llama 3, the errors for
bad input, and the progress bar the other files share."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path


DEFAULT_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "

REPO_DIR = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_DIR / "build" / "llama3-demo"
DEMO_HF_DIR = REPO_DIR / "build" / "llama3-demo-hf"  # the same weights as Hugging Face's converter writes them
# A real pretrained Llama-architecture model, SmolLM2-135M-Instruct quantized to 4 bits and expanded back
# (`make smollm2`, notebook 16), in Meta's layout and in Hugging Face's.
SMOLLM2_DIR = REPO_DIR / "build" / "smollm2-135m"
SMOLLM2_HF_DIR = REPO_DIR / "build" / "smollm2-135m-hf"
SMOLLM2_GGUF = REPO_DIR / "build" / "smollm2-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file they come from

# sha256 of Meta's Llama 3 tokenizer.model (the same file ships in `llama-models`).
META_TOKENIZER_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"


class Llama3InputError(ValueError):
    """Bad input: the message names the path or prompt and the fix; no traceback needed."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class CheckpointError(Llama3InputError):
    pass


class PromptError(Llama3InputError):
    pass




# ---------------------------------------------------------------------------------------
# 01 The checkpoint
# ---------------------------------------------------------------------------------------

PARAMS_REQUIRED = ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "norm_eps")


@dataclass(frozen=True)
class ModelConfig:
    """params.json, plus every number the walkthrough derives from it."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    multiple_of: int
    ffn_dim_multiplier: float | None
    norm_eps: float
    rope_theta: float
    use_scaled_rope: bool = False
    release: str = "3"  # "3", "3.1" or "3.2": see release_from_params
    rope_scale_factor: float | None = None  # with use_scaled_rope: 8 for Llama 3.1, 32 for Llama 3.2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def queries_per_kv_head(self) -> int:
        """Grouped-query attention: query head h reads key/value head h // this."""
        return self.n_heads // self.n_kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Meta's formula: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def context_length(self) -> int:
        """Llama 3 was trained on 8192 positions; Llama 3.1's scaled RoPE reaches 131072."""
        return 131072 if self.use_scaled_rope else 8192

    @classmethod
    def from_params(cls, params: dict, release: str | None = None) -> "ModelConfig":
        """params.json -> config; the release (and with it the RoPE scale factor) is told from params
        unless given (see release_from_params)."""
        release = release_from_params(params, release)
        return cls(
            dim=int(params["dim"]),
            n_layers=int(params["n_layers"]),
            n_heads=int(params["n_heads"]),
            n_kv_heads=int(params.get("n_kv_heads") or params["n_heads"]),
            vocab_size=int(params["vocab_size"]),
            multiple_of=int(params["multiple_of"]),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=float(params["norm_eps"]),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            use_scaled_rope=bool(params.get("use_scaled_rope", False)),
            release=release,
            rope_scale_factor=ROPE_SCALE_FACTORS.get(release),
        )


RELEASES = ("3", "3.1", "3.2")
# RoPE scale factor per release (section 05). Llama 3.2 1B/3B were trained with 32: their Hugging Face
# config.json has rope_scaling.factor 32; Meta's reference code (llama_models.llama3.model.apply_scaling)
# hard-codes 8 for every release.
ROPE_SCALE_FACTORS = {"3.1": 8.0, "3.2": 32.0}
# (dim, n_layers) of Llama 3.2 1B and 3B, the only text models of 3.2 (Meta's llama_models.sku_list).
LLAMA3_2_SHAPES = {(2048, 16), (3072, 28)}


def release_from_params(params: dict, release: str | None = None) -> str:
    """Which Llama 3 release a params.json belongs to: `release` if given, else told from params.

    params.json names no release. Llama 3.1 added `use_scaled_rope`; Llama 3.2 1B and 3B carry it too,
    with no other key to tell them apart, so they are recognised by their shapes (dim 2048 with 16
    layers, dim 3072 with 28). Any other checkpoint with scaled RoPE is taken for 3.1 (Llama 3.3 70B
    uses 3.1's factor and tokenizer too). Pass `release` (or set $LLAMA3_RELEASE for load_checkpoint)
    to override, e.g. for a fine-tune of 3.2 in another shape.
    """
    if release is None:
        if not params.get("use_scaled_rope", False):
            release = "3"
        elif (params.get("dim"), params.get("n_layers")) in LLAMA3_2_SHAPES:
            release = "3.2"
        else:
            release = "3.1"
    if release not in RELEASES:
        raise CheckpointError(f"Unknown Llama release {release!r}: use one of {', '.join(RELEASES)}.")
    return release


# params.json of Meta-Llama-3-8B, as Meta ships it.
LLAMA3_8B_PARAMS = {
    "dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
    "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
}  # fmt: skip

LLAMA3_8B = ModelConfig.from_params(LLAMA3_8B_PARAMS)


def progress_bar(iterable, total: int, desc: str):
    """A tqdm bar on stderr (the tests strip its timings), or the plain iterable without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, ncols=80)
