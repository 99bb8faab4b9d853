"""The model's numbers (notebook 01): params.json as a ModelConfig, the releases of Llama 3 and what each
decides (RoPE scaling, context length), the family's params, the errors for bad input, and where the
walkthrough finds its checkpoint and prompt. The bottom layer of the package: it imports nothing of it."""

from __future__ import annotations

import hashlib
import os
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
        """Llama 3 was trained on 8192 positions; Llama 3.1's and 3.2's scaled RoPE reaches 131072."""
        return SCALED_CONTEXT if self.use_scaled_rope else ROPE_ORIGINAL_CONTEXT

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
# Llama 3.1's and 3.2's frequency scaling (Meta's apply_scaling): wavelengths longer than the original
# context divided by the factor, shorter than a quarter of it kept, a blend between.
ROPE_SCALE_FACTOR = ROPE_SCALE_FACTORS["3.1"]  # the constant in Meta's apply_scaling
ROPE_LOW_FREQ_FACTOR = 1
ROPE_HIGH_FREQ_FACTOR = 4
ROPE_ORIGINAL_CONTEXT = 8192  # the positions Llama 3 was trained on
SCALED_CONTEXT = 131072  # what scaled RoPE reaches (3.1 and 3.2)
# (dim, n_layers) of Llama 3.2 1B and 3B, the only text models of 3.2 (Meta's llama_models.sku_list).
LLAMA3_2_SHAPES = {(2048, 16), (3072, 28)}


def same_model(a: ModelConfig, b: ModelConfig) -> bool:
    """Configs that give the same model: equal but for the pair (multiple_of, ffn_dim_multiplier), which
    Hugging Face's config.json does not keep, as long as both give the same FFN width."""
    formula = ("multiple_of", "ffn_dim_multiplier")
    return a.ffn_hidden_dim == b.ffn_hidden_dim and all(
        getattr(a, f) == getattr(b, f) for f in a.__dataclass_fields__ if f not in formula
    )


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
    return check_release(release)


def check_release(release: str) -> str:
    """The release itself, or one message naming the ones there are."""
    if release not in RELEASES:
        raise CheckpointError(f"Unknown Llama release {release!r}: use one of {', '.join(RELEASES)}.")
    return release


# params.json of Meta-Llama-3-8B, as Meta ships it.
LLAMA3_8B_PARAMS = {
    "dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
    "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
}  # fmt: skip

LLAMA3_8B = ModelConfig.from_params(LLAMA3_8B_PARAMS)

# params.json of the text models this walkthrough runs, as Meta's `llama_models.sku_list` gives them.
FAMILY_PARAMS = {
    "Llama 3 8B": dict(LLAMA3_8B_PARAMS, use_scaled_rope=False),
    "Llama 3.1 8B": dict(LLAMA3_8B_PARAMS, use_scaled_rope=True),
    "Llama 3.2 1B": dict(
        LLAMA3_8B_PARAMS, dim=2048, n_layers=16, multiple_of=256, ffn_dim_multiplier=1.5, use_scaled_rope=True
    ),
    "Llama 3.2 3B": dict(
        LLAMA3_8B_PARAMS,
        dim=3072,
        n_layers=28,
        n_heads=24,
        multiple_of=256,
        ffn_dim_multiplier=1.0,
        use_scaled_rope=True,
    ),
}

# params.json of the sharded releases, as Meta's llama_models.sku_list gives them (with their file counts).
SHARDED_PARAMS = {
    "Llama 3 70B": dict(LLAMA3_8B_PARAMS, dim=8192, n_layers=80, n_heads=64, multiple_of=4096, use_scaled_rope=False),
    "Llama 3.1 405B": dict(
        LLAMA3_8B_PARAMS,
        dim=16384,
        n_layers=126,
        n_heads=128,
        ffn_dim_multiplier=1.2,
        multiple_of=4096,
        use_scaled_rope=True,
    ),
}
SHARDED_PARAMS["Llama 3.1 405B mp16"] = dict(SHARDED_PARAMS["Llama 3.1 405B"], n_kv_heads=16)
SHARD_COUNTS = {"Llama 3 70B": 8, "Llama 3.1 405B": 8, "Llama 3.1 405B mp16": 16}


# ---------------------------------------------------------------------------------------
# What a run reads: the checkpoint, the prompt, how many tokens to generate
# ---------------------------------------------------------------------------------------


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


def new_token_limit(default: int) -> int:
    """How many tokens a generation loop may make: `default`, capped by $LLAMA3_MAX_NEW_TOKENS (each token is a
    forward pass, seconds at 8B on a CPU)."""
    return min(default, int(os.environ.get("LLAMA3_MAX_NEW_TOKENS", default)))


def progress_bar(iterable, total: int, desc: str):
    """A tqdm bar on stderr (the tests strip its timings), or the plain iterable without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, ncols=80)


def sha256_of(path: Path) -> str:
    """A file's sha256, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
