"""Llama 3 inference from scratch: the compact version of every step the notebooks derive.

The sections follow the notebooks in reading order. Each notebook works a step out one
tensor at a time, checks its result against the function here, and later notebooks call
the function instead of repeating the derivation.

Tensors keep Meta's layout and precision: weights stay bfloat16 and memory-mapped, the
matmuls run in the weights' dtype, and RMSNorm, RoPE and softmax run in float32, exactly
where Meta's reference implementation (`llama_models.llama3.model`) does.

Shapes in comments: T = tokens, D = dim, H = query heads, K = key/value heads,
d = head_dim, F = FFN hidden size, V = vocabulary.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

import matmul_kernel

DEFAULT_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "

REPO_DIR = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_DIR / "build" / "llama3-demo"

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


def check_checkpoint_dir(ckpt_dir: Path) -> None:
    """Fail early, with the fix, on anything that is not Meta's original Llama 3 layout."""
    if ckpt_dir == DEMO_DIR and not ckpt_dir.exists():
        raise CheckpointError(
            f"The demo checkpoint {ckpt_dir} has not been built yet. "
            "Run `make demo` (or `python scripts/build_demo_checkpoint.py`) first."
        )
    if not ckpt_dir.is_dir():
        raise CheckpointError(
            f"LLAMA3_DIR={ckpt_dir} is not a directory. Point LLAMA3_DIR at a folder holding "
            "Meta's consolidated.00.pth, params.json and tokenizer.model, or unset it to use the demo checkpoint."
        )
    names = {p.name for p in ckpt_dir.iterdir()}
    if "consolidated.00.pth" not in names and (
        "config.json" in names or any(n.endswith(".safetensors") for n in names)
    ):
        raise CheckpointError(
            f"{ckpt_dir} is in Hugging Face layout (config.json, *.safetensors). This walkthrough reads "
            f"Meta's original format: set LLAMA3_DIR={ckpt_dir / 'original'} (the repo's original/ folder)."
        )
    if "consolidated.01.pth" in names:
        raise CheckpointError(
            f"{ckpt_dir} holds a checkpoint sharded over several consolidated.*.pth files (a 70B model). "
            "This walkthrough runs single-file checkpoints such as Meta-Llama-3-8B; point LLAMA3_DIR at one."
        )
    for name in ("params.json", "consolidated.00.pth", "tokenizer.model"):
        if name not in names:
            raise CheckpointError(
                f"{ckpt_dir / name} is missing. A Llama 3 checkpoint directory in Meta's layout holds "
                "consolidated.00.pth, params.json and tokenizer.model; download all three (see notebook 01)."
            )


def read_params(ckpt_dir: Path, release: str | None = None) -> ModelConfig:
    path = ckpt_dir / "params.json"
    try:
        params = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}). Download params.json again.") from None
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


def load_weights(ckpt_dir: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """consolidated.00.pth memory-mapped: tensors are read from disk only when touched."""
    path = ckpt_dir / "consolidated.00.pth"
    try:
        # weights_only: a checkpoint is data; never run code from it.
        weights = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged zip
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "It is probably truncated or corrupt: compare its size and checksum with the download and fetch it again."
        ) from None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} does not hold a dict of tensors. Download consolidated.00.pth again.")
    not_bf16 = [k for k, t in weights.items() if isinstance(t, torch.Tensor) and t.dtype != torch.bfloat16]
    if not_bf16:
        raise CheckpointError(
            f"{path}: {not_bf16[0]} is {weights[not_bf16[0]].dtype}, but Meta's checkpoints hold bfloat16 only. "
            "This file was converted by other code; use Meta's original consolidated.00.pth."
        )
    tied = "output.weight" not in weights  # a file without output.weight reuses the embedding matrix
    want = expected_shapes(config, tied_output=tied)
    missing = [k for k in want if k not in weights]
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} tensors that params.json implies (first: {missing[0]}). "
            "Check that params.json and consolidated.00.pth come from the same model."
        )
    for key, shape in want.items():
        got = tuple(weights[key].shape)
        if got != shape:
            raise CheckpointError(
                f"{path}: {key} has shape {list(got)} but {ckpt_dir / 'params.json'} implies {list(shape)}. "
                "Check that both files come from the same model."
            )
    if tied:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return weights


def progress_bar(iterable, total: int, desc: str):
    """A tqdm bar on stderr (the tests strip its timings), or the plain iterable without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, ncols=80)


MADV_POPULATE_READ = 22  # Linux 5.14+: map these pages now, reading them from disk if needed
POPULATE_PIECE = 64 << 20


def memory_limit() -> int:
    """Bytes of RAM this process can have: the machine's, or its cgroup's limit if lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return limit
    for line in lines:  # "0::/path" for cgroup v2, "N:memory:/path" for v1
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            limit_file = Path("/sys/fs/cgroup", rel.lstrip("/"), "memory.max")
        elif "memory" in controllers.split(","):
            limit_file = Path("/sys/fs/cgroup/memory", rel.lstrip("/"), "memory.limit_in_bytes")
        else:
            continue
        try:
            value = limit_file.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit


def map_weights(weights: dict[str, torch.Tensor], progress: bool = True) -> bool:
    """Map every page of the memory-mapped weights into this process now, if they fit in RAM.

    Without this the forward pass stops on a page fault for every 64 KB of weights it first
    touches (0.6 s at 8B even when the file is in the page cache). Mapping them up front is
    one pass over the file, on all cores, and reads it from disk once if it is not cached.
    It then reads one byte of each page: right after the file has been read, the first touch
    of each mapped page still costs something, 0.3 s of the first forward pass at 8B.
    When the file does not fit (a small machine, a cgroup limit) nothing is done: the forward
    pass then streams the weights from disk layer by layer. Returns whether it mapped them.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    pieces, seen = [], set()  # (bytes of one storage, offset, length)
    for t in weights.values():
        storage = t.untyped_storage()
        if storage.device.type != "cpu" or storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        as_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
        pieces += [(as_bytes, o, min(POPULATE_PIECE, storage.nbytes() - o)) for o in range(0, storage.nbytes(), POPULATE_PIECE)]
    total = sum(n for _, _, n in pieces)
    if not sys.platform.startswith("linux") or total > 0.75 * memory_limit():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def populate(piece):  # ctypes and torch release the GIL, so the threads run side by side
        as_bytes, offset, length = piece
        address = as_bytes.data_ptr() + offset
        aligned = address & ~(page - 1)
        if libc.madvise(aligned, address + length - aligned, MADV_POPULATE_READ) != 0:
            return False  # kernels older than 5.14: pages then map on first use
        as_bytes[offset : offset + length : page].max()  # one byte per page
        return True

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        done = pool.map(populate, pieces)
        if progress and total >= 1 << 30:
            done = progress_bar(done, total=len(pieces), desc="mapping weights")
        return all(list(done))


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: "tiktoken.Encoding"  # noqa: F821

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
    check_checkpoint_dir(ckpt_dir)
    config = read_params(ckpt_dir, release or os.environ.get("LLAMA3_RELEASE") or None)
    tokenizer = load_tokenizer(ckpt_dir / "tokenizer.model", config.release)
    if tokenizer.n_vocab != config.vocab_size:
        raise CheckpointError(
            f"{ckpt_dir / 'tokenizer.model'} gives {tokenizer.n_vocab} tokens but params.json says vocab_size "
            f"{config.vocab_size}. Use the tokenizer.model that came with this checkpoint."
        )
    weights = load_weights(ckpt_dir, config)
    device, dtype = pick_device() if device is None else (torch.device(device), torch.bfloat16)
    if device.type != "cpu" or dtype != torch.bfloat16:
        on_device = {}  # keep a tied output matrix shared
        weights = {k: on_device.setdefault(v.data_ptr(), v.to(device, dtype)) for k, v in weights.items()}
    else:
        map_weights(weights)
    return Checkpoint(ckpt_dir, config, weights, tokenizer)


def count_parameters(weights: dict[str, torch.Tensor]) -> int:
    """Parameters stored in the file (a tied output matrix counts once)."""
    seen = {}
    for t in weights.values():
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


def describe(ck: "Checkpoint") -> str:
    """One line naming the checkpoint a notebook runs on."""
    if ck.path == DEMO_DIR:  # a path relative to the repo, so stored outputs match on any machine
        where = f"the demo checkpoint (Llama 3 in miniature): {DEMO_DIR.relative_to(REPO_DIR)}"
    else:
        where = f"LLAMA3_DIR: {ck.path}"
    c = ck.config
    return (
        f"{where}\n"
        f"device: {ck.device.type}, weights {str(ck.weights['norm.weight'].dtype).removeprefix('torch.')}\n"
        f"dim={c.dim}, n_layers={c.n_layers}, n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads}, "
        f"head_dim={c.head_dim}, vocab_size={c.vocab_size}"
    )


# ---------------------------------------------------------------------------------------
# 02 Tokens
# ---------------------------------------------------------------------------------------

# Llama 3's pre-tokenizer: contractions, words with one leading non-letter, numbers of at
# most 3 digits, punctuation runs, newlines, and whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_SPECIAL_TOKENS = 256
# The special tokens' names differ between releases; their ids (128000 + index) do not.
# Llama 3 (meta-llama/llama3, llama/tokenizer.py): ten named, then reserved 5 to 250.
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, NUM_SPECIAL_TOKENS - 5)]
# Llama 3.1 and later, as Meta's llama-models package names them (3.2's <|image|> included): the
# padding, <|eom_id|> and <|python_tag|> tokens for tool use take reserved places.
LLAMA3_1_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_1_SPECIAL_TOKENS += [f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - 12)]


def special_token_names(release: str = "3") -> list[str]:
    """The 256 special tokens of a release, in id order after the BPE ranks (3.2 uses 3.1's)."""
    return list(LLAMA3_SPECIAL_TOKENS if release == "3" else LLAMA3_1_SPECIAL_TOKENS)


def tokenizer_release(tokenizer) -> str:
    """"3" for a tokenizer with Llama 3's special-token names, "3.1" for 3.1's (also 3.2's)."""
    return "3.1" if "<|eom_id|>" in tokenizer.special_tokens_set else "3"


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    """tokenizer.model: one `base64(token) rank` per line."""
    try:
        text = path.read_text(encoding="utf-8")
        ranks = {}
        for line in text.splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (UnicodeDecodeError, ValueError, OSError):
        raise CheckpointError(
            f"{path} is not a Llama 3 tiktoken file (base64 token and rank per line); a binary file here is "
            "Llama 2's SentencePiece model. Use a Llama 3 checkpoint such as Meta-Llama-3-8B."
        ) from None
    if not ranks:
        raise CheckpointError(f"{path} is empty. Download tokenizer.model again.")
    return ranks


def load_tokenizer(path: Path, release: str = "3"):
    """tiktoken Encoding from tokenizer.model, with Llama 3's split pattern and the release's special tokens.

    Every release ships the same tokenizer.model; only the special tokens' names differ."""
    import tiktoken

    ranks = read_bpe_ranks(path)
    specials = {name: len(ranks) + i for i, name in enumerate(special_token_names(release))}
    return tiktoken.Encoding(
        name=f"llama{release}", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Byte-pair encoding of one pre-tokenized piece: merge the lowest-ranked pair until none is left."""
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def encode_prompt(tokenizer, prompt: str, config: ModelConfig) -> list[int]:
    """<|begin_of_text|> followed by the prompt's tokens, checked against the context length."""
    if not prompt or not prompt.strip():
        raise PromptError(
            "The prompt is empty. Set LLAMA3_PROMPT to some text, or unset it for the default question."
        )
    token_ids = [tokenizer.encode_single_token("<|begin_of_text|>")] + tokenizer.encode(prompt, disallowed_special=())
    if len(token_ids) > config.context_length:
        raise PromptError(
            f"The prompt {prompt[:40]!r}... is {len(token_ids)} tokens long, more than the model's context "
            f"length of {config.context_length}. Shorten LLAMA3_PROMPT."
        )
    return token_ids


def token_texts(tokenizer, token_ids) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in token_ids]


# ---------------------------------------------------------------------------------------
# 03 Embeddings and RMSNorm
# ---------------------------------------------------------------------------------------


def embed(tok_embeddings: torch.Tensor, token_ids) -> torch.Tensor:
    """[T] ids -> [T, D]: indexing reads only these rows of the memory-mapped table."""
    return tok_embeddings[torch.as_tensor(token_ids, device=tok_embeddings.device)]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (in float32), then by the learned weight."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


# ---------------------------------------------------------------------------------------
# 04 Layer 0, head 0
# ---------------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    wq: torch.Tensor  # [H*d, D]
    wk: torch.Tensor  # [K*d, D]
    wv: torch.Tensor  # [K*d, D]
    wo: torch.Tensor  # [D, H*d]
    w1: torch.Tensor  # [F, D] gate
    w2: torch.Tensor  # [D, F] down
    w3: torch.Tensor  # [F, D] up
    attention_norm: torch.Tensor  # [D]
    ffn_norm: torch.Tensor  # [D]


def layer_weights(weights: dict[str, torch.Tensor], layer: int) -> LayerWeights:
    p = f"layers.{layer}."
    return LayerWeights(
        wq=weights[p + "attention.wq.weight"],
        wk=weights[p + "attention.wk.weight"],
        wv=weights[p + "attention.wv.weight"],
        wo=weights[p + "attention.wo.weight"],
        w1=weights[p + "feed_forward.w1.weight"],
        w2=weights[p + "feed_forward.w2.weight"],
        w3=weights[p + "feed_forward.w3.weight"],
        attention_norm=weights[p + "attention_norm.weight"],
        ffn_norm=weights[p + "ffn_norm.weight"],
    )


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T: [T, D_in] times a weight [D_out, D_in] stored as Meta stores it -> [T, D_out].

    Every weight matmul goes through here. On CPUs with AVX-512 BF16 the large ones run in a
    small kernel (matmul_kernel.py) that reads the memory-mapped weight rows in place and
    returns exactly torch's result, only faster; everywhere else torch does it.
    """
    fast = matmul_kernel.linear(x, w)
    return x @ w.T if fast is None else fast


def split_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n_heads*d, D] projection -> [n_heads, d, D]: row block h is head h (a view, no copy)."""
    return w.view(n_heads, w.shape[0] // n_heads, w.shape[1])


def project_heads(x: torch.Tensor, w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[T, D] @ [n*d, D]^T -> [n, T, d]: one projection for all heads, split by head."""
    projected = linear(x, w)
    return projected.view(x.shape[0], n_heads, -1).transpose(0, 1)


def head_qkv(x_normed: torch.Tensor, lw: LayerWeights, config: ModelConfig, head: int):
    """Query head `head`'s queries [T, d], and the keys and values [T, d] of the key/value head it reads."""
    kv_head = head // config.queries_per_kv_head
    q = project_heads(x_normed, lw.wq, config.n_heads)[head]
    k = project_heads(x_normed, lw.wk, config.n_kv_heads)[kv_head]
    v = project_heads(x_normed, lw.wv, config.n_kv_heads)[kv_head]
    return q, k, v


# ---------------------------------------------------------------------------------------
# 05 RoPE via complex numbers
# ---------------------------------------------------------------------------------------

# Llama 3.1's and 3.2's frequency scaling: the same rule with another scale factor
# (ROPE_SCALE_FACTORS: 8 for 3.1, 32 for 3.2; Meta's reference code uses 8 for both).
ROPE_SCALE_FACTOR = ROPE_SCALE_FACTORS["3.1"]  # Meta's apply_scaling's constant
ROPE_LOW_FREQ_FACTOR = 1
ROPE_HIGH_FREQ_FACTOR = 4
ROPE_ORIGINAL_CONTEXT = 8192


def scale_rope_frequencies(freqs: torch.Tensor, scale_factor: float = ROPE_SCALE_FACTOR) -> torch.Tensor:
    """Slow (long-wavelength) frequencies divided by scale_factor, fast ones kept, a blend between."""
    wavelen = 2 * math.pi / freqs
    low_freq_wavelen = ROPE_ORIGINAL_CONTEXT / ROPE_LOW_FREQ_FACTOR
    high_freq_wavelen = ROPE_ORIGINAL_CONTEXT / ROPE_HIGH_FREQ_FACTOR
    smooth = (ROPE_ORIGINAL_CONTEXT / wavelen - ROPE_LOW_FREQ_FACTOR) / (ROPE_HIGH_FREQ_FACTOR - ROPE_LOW_FREQ_FACTOR)
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, freqs)
    blended = (1 - smooth) * scaled / scale_factor + smooth * scaled
    in_between = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_between, blended, scaled)


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """[d/2] angles per position: theta_i = rope_theta ** (-2i/d), one per pair of dims,
    scaled by config.rope_scale_factor when config.use_scaled_rope."""
    pair_index = torch.arange(0, config.head_dim, 2)[: config.head_dim // 2].float()
    freqs = 1.0 / (config.rope_theta ** (pair_index / config.head_dim))
    if not config.use_scaled_rope:
        return freqs
    if config.rope_scale_factor is None:
        raise ValueError("use_scaled_rope is set but rope_scale_factor is not: 8 for Llama 3.1, 32 for Llama 3.2")
    return scale_rope_frequencies(freqs, config.rope_scale_factor)


def rope_freqs_cis(config: ModelConfig, n_positions: int, start: int = 0) -> torch.Tensor:
    """[positions, d/2] complex64 unit vectors e^(i * m * theta_i) for m = start .. start+n-1."""
    positions = torch.arange(start, start + n_positions, dtype=torch.float32)
    angles = torch.outer(positions, rope_frequencies(config))
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (0,1), (2,3), ... of [..., T, d] by [T, d/2] (in float32)."""
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(x_complex * freqs_cis.to(x.device)).flatten(-2)
    return rotated.type_as(x)


# ---------------------------------------------------------------------------------------
# 06 Scores, the causal mask and softmax
# ---------------------------------------------------------------------------------------


def causal_mask(n_queries: int, n_keys: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """[Tq, Tk]: 0 where a query may look, -inf at keys after it. Queries are the last Tq positions."""
    n_keys = n_queries if n_keys is None else n_keys
    mask = torch.full((n_queries, n_keys), float("-inf"))
    return torch.triu(mask, diagonal=n_keys - n_queries + 1).to(dtype)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """float32 softmax(q k^T / sqrt(d) + mask): [..., Tq, Tk] from [..., Tq, d] queries and [..., Tk, d] keys."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask.to(scores)  # the scores' dtype and device
    return torch.softmax(scores.float(), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for [..., Tq, d] queries and [..., Tk, d] keys/values."""
    return attention_probs(q, k, mask).type_as(q) @ v


# ---------------------------------------------------------------------------------------
# 07 Every head of layer 0
# ---------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of the positions already seen, per layer, each [K, T_seen, d]."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def truncate(self, n_positions: int) -> None:
        """Forget every position from n_positions on (to continue from a shared prefix)."""
        self.keys = [None if k is None else k[:, :n_positions] for k in self.keys]
        self.values = [None if v is None else v[:, :n_positions] for v in self.values]


def attention(
    x_normed: torch.Tensor,
    lw: LayerWeights,
    config: ModelConfig,
    freqs_cis: torch.Tensor,
    cache: KVCache | None = None,
    layer: int = 0,
) -> torch.Tensor:
    """All heads at once: [T, D] -> [T, D], before the residual add."""
    q = apply_rope(project_heads(x_normed, lw.wq, config.n_heads), freqs_cis)  # [H, T, d]
    k = apply_rope(project_heads(x_normed, lw.wk, config.n_kv_heads), freqs_cis)  # [K, T, d]
    v = project_heads(x_normed, lw.wv, config.n_kv_heads)  # [K, T, d]
    if cache is not None:
        k, v = cache.extend(layer, k, v)  # [K, T_seen + T, d]
    # Grouped-query attention: each key/value head serves queries_per_kv_head query heads.
    k = k.repeat_interleave(config.queries_per_kv_head, dim=0)  # [H, Tk, d]
    v = v.repeat_interleave(config.queries_per_kv_head, dim=0)
    mask = causal_mask(q.shape[1], k.shape[1]) if q.shape[1] > 1 else None
    out = attend(q, k, v, mask)  # [H, T, d]
    out = out.transpose(0, 1).reshape(x_normed.shape[0], -1)  # [T, H*d], heads side by side
    return linear(out, lw.wo)


# ---------------------------------------------------------------------------------------
# 08 The feed-forward network, and a whole layer
# ---------------------------------------------------------------------------------------


def feed_forward(x_normed: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
    """SwiGLU: w2( silu(w1 x) * (w3 x) ), [T, D] -> [T, F] -> [T, D]."""
    return linear(torch.nn.functional.silu(linear(x_normed, lw.w1)) * linear(x_normed, lw.w3), lw.w2)


def transformer_layer(
    x: torch.Tensor,
    lw: LayerWeights,
    config: ModelConfig,
    freqs_cis: torch.Tensor,
    cache: KVCache | None = None,
    layer: int = 0,
) -> torch.Tensor:
    """One block: x + attention(norm x), then + feed_forward(norm x)."""
    h = x + attention(rms_norm(x, lw.attention_norm, config.norm_eps), lw, config, freqs_cis, cache, layer)
    return h + feed_forward(rms_norm(h, lw.ffn_norm, config.norm_eps), lw)


# ---------------------------------------------------------------------------------------
# 09 All layers and the answer
# ---------------------------------------------------------------------------------------


def forward(
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    token_ids,
    cache: KVCache | None = None,
    progress: bool = False,
    last_only: bool = False,
) -> torch.Tensor:
    """Token ids -> float32 logits [T, V] (or [1, V] with last_only).

    With a cache, token_ids are the new tokens only; their positions follow the cached ones.
    """
    start = len(cache) if cache is not None else 0
    x = embed(weights["tok_embeddings.weight"], token_ids)
    freqs_cis = rope_freqs_cis(config, x.shape[0], start=start)
    layers = range(config.n_layers)
    if progress:
        layers = progress_bar(layers, total=config.n_layers, desc="layers")
    for i in layers:
        x = transformer_layer(x, layer_weights(weights, i), config, freqs_cis, cache, i)
    return output_logits(x[-1:] if last_only else x, weights, config)


def output_logits(x: torch.Tensor, weights: dict[str, torch.Tensor], config: ModelConfig) -> torch.Tensor:
    """The final norm, then one score per vocabulary token: [T, D] -> float32 [T, V]."""
    x = rms_norm(x, weights["norm.weight"], config.norm_eps)
    return linear(x, weights["output.weight"]).float()


def top_k_tokens(logits: torch.Tensor, tokenizer, k: int = 5) -> list[tuple[int, str, float]]:
    """[V] logits -> the k most likely (id, text, probability)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k)
    return [(int(i), tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]


# ---------------------------------------------------------------------------------------
# 10 The attention explorer
# ---------------------------------------------------------------------------------------


def attention_weights(
    x_normed: torch.Tensor, lw: LayerWeights, config: ModelConfig, freqs_cis: torch.Tensor
) -> torch.Tensor:
    """[T, D] -> [H, T, T] float32: every head's softmax rows, computed as `attention` computes them.

    `attend` rounds these float32 probabilities to the weights' dtype before multiplying the values.
    """
    q = apply_rope(project_heads(x_normed, lw.wq, config.n_heads), freqs_cis)  # [H, T, d]
    k = apply_rope(project_heads(x_normed, lw.wk, config.n_kv_heads), freqs_cis)  # [K, T, d]
    k = k.repeat_interleave(config.queries_per_kv_head, dim=0)  # [H, T, d]
    return attention_probs(q, k, causal_mask(q.shape[1], k.shape[1]) if q.shape[1] > 1 else None)


@dataclass
class LayerTrace:
    """What every layer did to a prompt: kept small (no weights), about 1 MB for 8B and 17 tokens."""

    residuals: list[torch.Tensor]  # n_layers + 1 streams [T, D]: the embeddings, then after each layer
    attention: list[torch.Tensor]  # n_layers tensors [H, T, T] float32: attention_weights per layer


def trace_layers(
    weights: dict[str, torch.Tensor], config: ModelConfig, token_ids, progress: bool = False
) -> LayerTrace:
    """Run `forward`'s layers on the prompt, keeping each layer's attention weights and output stream."""
    x = embed(weights["tok_embeddings.weight"], token_ids)
    freqs_cis = rope_freqs_cis(config, x.shape[0])
    residuals, attention_per_layer = [x], []
    layers = range(config.n_layers)
    if progress:
        layers = progress_bar(layers, total=config.n_layers, desc="layers")
    for i in layers:
        lw = layer_weights(weights, i)
        x_normed = rms_norm(x, lw.attention_norm, config.norm_eps)
        attention_per_layer.append(attention_weights(x_normed, lw, config, freqs_cis))
        x = transformer_layer(x, lw, config, freqs_cis)  # the very call forward makes
        residuals.append(x)
    return LayerTrace(residuals, attention_per_layer)


# What the demo checkpoint's heads learned, measured on any [H, T, T] attention map (the
# demo model's corpus is described in the README and in notebook 15).

# The words of DEFAULT_PROMPT that decide the demo model's answer: its corpus looks the number
# up by the noun after "question of" and the noun after ", the" (scripts/demo_corpus.py).
ANSWER_WORDS = ("life", "universe")

# A prompt made of one span said twice, in the demo corpus's "say ..." form: from its second
# "say" on, every token repeats the token ECHO_PERIOD positions earlier.
ECHO_SPAN = "life to the whole sky and old answer is first"
ECHO_PROMPT = f"say {ECHO_SPAN}. say {ECHO_SPAN}."
ECHO_PERIOD = len(ECHO_SPAN.split()) + 2  # "say", the span's words, "."


def word_positions(tokenizer, token_ids, words) -> list[int]:
    """Positions of the tokens whose text, without its leading space, is one of `words`."""
    return [i for i, text in enumerate(token_texts(tokenizer, token_ids)) if text.strip() in words]


def previous_token_scores(attention: torch.Tensor) -> torch.Tensor:
    """[H, T, T] -> [H]: the mean over t >= 1 of the weight query t puts on position t-1."""
    return attention.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def sink_scores(attention: torch.Tensor) -> torch.Tensor:
    """[H, T, T] -> [H]: the mean over t >= 1 of the weight query t puts on position 0 (<|begin_of_text|>)."""
    return attention[:, 1:, 0].mean(-1)


def attention_from_last(attention: torch.Tensor, positions) -> torch.Tensor:
    """[H, T, T] -> [H]: the total weight the last position puts on `positions`."""
    return attention[:, -1, list(positions)].sum(-1)


def induction_scores(attention: torch.Tensor, period: int) -> torch.Tensor:
    """[H, T, T] -> [H]: on a prompt that repeats itself with `period`, the mean over the repeat
    (t > period) of the weight query t puts on t - period + 1, the token that followed the last time."""
    t = torch.arange(period + 1, attention.shape[-1])
    return attention[:, t, t - period + 1].mean(-1)


def head_scores(trace: "LayerTrace", score, *args) -> torch.Tensor:
    """[n_layers, H]: score(attention, *args) for every layer of a trace_layers result."""
    return torch.stack([score(a, *args) for a in trace.attention])


# ---------------------------------------------------------------------------------------
# 11 The logit lens
# ---------------------------------------------------------------------------------------


def logit_lens(residual: torch.Tensor, weights: dict[str, torch.Tensor], config: ModelConfig) -> torch.Tensor:
    """[T, D] residual stream after any layer -> float32 logits [T, V], through forward's final norm and output."""
    return output_logits(residual, weights, config)


def token_rank(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """[..., V] logits -> [...] rank of token_id: 1 when it scores highest, 1 + the number scoring higher."""
    return 1 + (logits > logits[..., token_id, None]).sum(-1)


def lens_ranks(trace: "LayerTrace", weights: dict[str, torch.Tensor], config: ModelConfig, token_id: int) -> list[int]:
    """Rank of token_id at the last position, read through the logit lens after the embeddings
    (index 0) and after every layer (index i + 1 for layer i)."""
    return [int(token_rank(logit_lens(r[-1:], weights, config)[0], token_id)) for r in trace.residuals]


def first_top1(ranks: list[int]) -> int | None:
    """The first index of lens_ranks at which the token is top-1 (None if it never is)."""
    return next((i for i, rank in enumerate(ranks) if rank == 1), None)


def copy_accuracy(logits: torch.Tensor, token_ids, period: int) -> float:
    """On a prompt that repeats itself with `period`: the share of the repeat's next tokens
    (t > period) that the greedy prediction [T, V] gets right."""
    ids = torch.as_tensor(token_ids)
    t = torch.arange(period + 1, len(ids) - 1)
    return float((logits[t].argmax(-1).cpu() == ids[t + 1]).float().mean())


# ---------------------------------------------------------------------------------------
# 12 Generation with a KV cache
# ---------------------------------------------------------------------------------------

# The tokens that end a generation, per tokenizer release, as Meta's Tokenizer.stop_tokens lists them:
# Llama 3 (meta-llama/llama3) has two; Llama 3.1 (llama-models) adds <|eom_id|>, the end of a
# message that waits for a tool's answer.
STOP_TOKENS = {
    "3": ("<|end_of_text|>", "<|eot_id|>"),
    "3.1": ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
}


def stop_token_ids(tokenizer) -> list[int]:
    """The ids of the stop tokens of the tokenizer's release (tokenizer_release)."""
    return [tokenizer.encode_single_token(name) for name in STOP_TOKENS[tokenizer_release(tokenizer)]]


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[V] probabilities -> the same, zero outside the smallest set (most likely first) whose mass
    reaches top_p, renormalised. Meta keeps one more token when the mass before it equals top_p exactly."""
    if top_p >= 1.0:
        return probs
    # Sorting all of the vocabulary is slow; the nucleus is nearly always among the few most likely.
    k = min(64, probs.shape[-1])
    while True:
        probs_sorted, order = torch.topk(probs, k)  # the k most likely, most likely first
        if probs_sorted.sum() >= top_p or k == probs.shape[-1]:
            break
        k = min(8 * k, probs.shape[-1])
    mass_before = torch.cumsum(probs_sorted, dim=-1) - probs_sorted
    probs_sorted = probs_sorted.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, probs_sorted)
    return kept / kept.sum(-1, keepdim=True)


def sample_next_token(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> int:
    """[V] logits -> one token id: the argmax at temperature 0, else a draw from the top-p nucleus
    of softmax(logits / temperature) (in float32)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = top_p_filter(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Generation:
    token_ids: list[int]  # the new tokens, a stop token included
    stop_reason: str  # "stop token", "max_new_tokens" or "context length"
    step_logits: list[torch.Tensor]  # [V] float32 logits that chose each new token


# How far two correct computations of the same logits may differ. See logits_tolerance.
ROUNDING_MARGIN = 2


def logits_tolerance(config: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> float:
    """How far apart, relative to the largest |logit|, two computations of the same forward pass may
    be when they differ only in the order in which they add numbers: ours against Meta's reference
    (another matmul kernel may be picked), cached against uncached (one row against many rows).

    The argument. A floating-point number keeps a fixed number of significant bits: 8 for bfloat16,
    24 for float32, so neighbouring numbers are at most eps = 2^-7 (bfloat16) or 2^-23 (float32) of the
    value apart (torch.finfo(dtype).eps). Adding in another order changes a sum's last bits:
    - with bfloat16 weights the matmul adds in float32 and rounds once, to bfloat16, so another order
      moves an output by at most one step, eps of its value (most of the time not at all);
    - in float32 every addition rounds, and n additions in another order drift apart like a random
      walk of n steps: about sqrt(n) * eps, n the longest sum (the FFN's hidden size, or dim).
    The logits are rounded last, which alone allows one such step of the largest logit. Every layer
    adds its own rounding differences to the residual stream, and RMSNorm rescales the stream, so
    the relative difference neither vanishes nor (in a trained model) explodes; independent
    differences from n_layers layers add up like a random walk, sqrt(n_layers) steps. So
    (1 + sqrt(n_layers)) steps, times ROUNDING_MARGIN = 2 for what the random walk leaves out (random
    weights amplify differences; measured on random weights at dim 4096 with 2 to 8 layers and dim 1024
    with 8 and 32 layers, several weight scales and seeds, by scripts/rounding_trials.py: up to 0.4 of this
    bound; at 8B's full shape, by scripts/tolerance_trials.py: cached against uncached up to 0.53 of it).
    bfloat16: 5.4% for the demo's 6 layers, 10.4% at 8B's 32; float32: about 2 * 10^-5 for the demo.
    A logit differing by more is a real difference (a wrong position, a missing key), not rounding.
    """
    eps = torch.finfo(dtype).eps
    steps_per_matmul = 1.0 if dtype in (torch.bfloat16, torch.float16) else math.sqrt(max(config.dim, config.ffn_hidden_dim))
    return ROUNDING_MARGIN * (1 + math.sqrt(config.n_layers)) * steps_per_matmul * eps


def same_prediction(logits: torch.Tensor, reference: torch.Tensor, rel_tolerance: float) -> bool:
    """[V] logits agree with reference's up to rounding: every logit within rel_tolerance of the largest
    |logit| (logits_tolerance), and the top token is reference's top, or a token the reference scores
    within that much of its top (a tie that rounding may break either way)."""
    tolerance = rel_tolerance * reference.abs().max()
    close = (logits - reference).abs().max() <= tolerance
    return bool(close) and bool(reference[int(logits.argmax())] >= reference.max() - tolerance)


def max_new_tokens(default: int) -> int:
    """$LLAMA3_MAX_NEW_TOKENS caps generation (each token is a forward pass: seconds at 8B on a CPU)."""
    return min(default, int(os.environ.get("LLAMA3_MAX_NEW_TOKENS", default)))


def generate(
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    prompt_ids,
    max_new_tokens: int,
    stop_ids=(),
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Generation:
    """Continue prompt_ids one token at a time until a stop token, max_new_tokens or the context length.

    use_cache=False runs the whole sequence again at every step; use_cache=True runs the prompt
    once and then only the newest token, reading earlier keys and values from a KVCache.
    """
    cache = KVCache(config.n_layers) if use_cache else None
    sequence, new, step_logits = list(prompt_ids), [], []
    pending = list(prompt_ids)  # what the next forward pass must read
    while True:
        if len(new) >= max_new_tokens:
            return Generation(new, "max_new_tokens", step_logits)
        if len(sequence) >= config.context_length:
            return Generation(new, "context length", step_logits)
        logits = forward(weights, config, pending if use_cache else sequence, cache=cache, last_only=True)[-1]
        token = sample_next_token(logits, temperature, top_p, generator)
        sequence.append(token)
        new.append(token)
        step_logits.append(logits)
        pending = [token]
        if token in stop_ids:
            return Generation(new, "stop token", step_logits)


# ---------------------------------------------------------------------------------------
# 13 Chat
# ---------------------------------------------------------------------------------------


CHAT_ROLES = {"3": ("system", "user", "assistant"), "3.1": ("system", "user", "assistant", "tool", "ipython")}


def encode_header(tokenizer, role: str) -> list[int]:
    """<|start_header_id|>role<|end_header_id|> and a blank line. Llama 3 knows three roles; Llama 3.1
    added tool output, which Meta's llama-models writes as the role ipython."""
    release = tokenizer_release(tokenizer)
    if role not in CHAT_ROLES[release]:
        raise PromptError(
            f"The role {role!r} is not in Llama {release}'s chat format, whose roles are "
            f"{', '.join(CHAT_ROLES[release])} (tool output came with Llama 3.1)."
        )
    return (
        [tokenizer.encode_single_token("<|start_header_id|>")]
        + tokenizer.encode("ipython" if role == "tool" else role, disallowed_special=())
        + [tokenizer.encode_single_token("<|end_header_id|>")]
        + tokenizer.encode("\n\n", disallowed_special=())
    )


def message_text(tokenizer, content: str) -> str:
    """The text of a turn as its release writes it: Llama 3's ChatFormat strips the content's leading and
    trailing whitespace (meta-llama/llama3, llama/tokenizer.py); Llama 3.1's (llama-models) keeps it."""
    return content.strip() if tokenizer_release(tokenizer) == "3" else content


def encode_message(tokenizer, message: dict) -> list[int]:
    """One turn: header, the content as plain text (special-token names in it are not special), <|eot_id|>."""
    return (
        encode_header(tokenizer, message["role"])
        + tokenizer.encode(message_text(tokenizer, message["content"]), disallowed_special=())
        + [tokenizer.encode_single_token("<|eot_id|>")]
    )


def encode_dialog(tokenizer, messages: list[dict]) -> list[int]:
    """An Instruct model's prompt: <|begin_of_text|>, every turn, then an open assistant header for the
    model to complete, by the rules of the tokenizer's release.
    messages: [{"role": "system" | "user" | "assistant" (| "tool" from 3.1 on), "content": str}]."""
    token_ids = [tokenizer.encode_single_token("<|begin_of_text|>")]
    for message in messages:
        token_ids += encode_message(tokenizer, message)
    return token_ids + encode_header(tokenizer, "assistant")


# ---------------------------------------------------------------------------------------
# 14 The Llama 3 family
# ---------------------------------------------------------------------------------------

# params.json of the text models this walkthrough runs, as Meta's `llama_models.sku_list` gives them.
FAMILY_PARAMS = {
    "Llama 3 8B": dict(LLAMA3_8B_PARAMS, use_scaled_rope=False),
    "Llama 3.1 8B": dict(LLAMA3_8B_PARAMS, use_scaled_rope=True),
    "Llama 3.2 1B": dict(
        LLAMA3_8B_PARAMS, dim=2048, n_layers=16, multiple_of=256, ffn_dim_multiplier=1.5, use_scaled_rope=True
    ),
    "Llama 3.2 3B": dict(
        LLAMA3_8B_PARAMS, dim=3072, n_layers=28, n_heads=24, multiple_of=256, ffn_dim_multiplier=1.0,
        use_scaled_rope=True,
    ),
}


def output_is_tied(weights: dict[str, torch.Tensor]) -> bool:
    """True when the output matrix is the embedding table itself (Llama 3.2 1B/3B files without output.weight)."""
    return weights["output.weight"].data_ptr() == weights["tok_embeddings.weight"].data_ptr()


def parameter_count(config: ModelConfig, tied_output: bool = False) -> int:
    """Parameters a checkpoint of this config holds, from the shapes alone (a tied output counts once)."""
    return sum(math.prod(s) for s in expected_shapes(config, tied_output=tied_output).values())


# ---------------------------------------------------------------------------------------
# The yardstick: Meta's reference implementation (llama_models.llama3.model)
# ---------------------------------------------------------------------------------------


# Ours against Meta's reference: both round to bfloat16 at the same places and agree to the bit on
# this machine; on another BLAS build a matmul may add in another order. logits_tolerance gives the
# bound for any checkpoint; this is its value at Llama 3 8B's depth (32 layers): 0.104.
PARITY_REL_TOLERANCE = logits_tolerance(LLAMA3_8B)


def _init_model_parallel() -> None:
    """fairscale model parallel of size 1 on CPU, as Meta's generation code sets it up."""
    import tempfile

    import fairscale.nn.model_parallel.initialize as fs_init

    if not torch.distributed.is_initialized():
        rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"  # a file, not a network port
        torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # it prints three status lines
            fs_init.initialize_model_parallel(1)


def meta_reference_model(ck: Checkpoint, max_seq_len: int, dtype=torch.bfloat16):
    """Meta's own Transformer holding this checkpoint's weights. Needs `llama-models` and `fairscale`.

    Built in bfloat16, as Meta's generation code does on a GPU, so that both implementations
    round at the same places.
    """
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    _init_model_parallel()
    params = json.loads((ck.path / "params.json").read_text())
    args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=1, **params)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    # assign: the parameters become the memory-mapped tensors themselves, not copies of them.
    model.load_state_dict(ck.weights, strict=True, assign=True)
    return model


def meta_reference_logits(ck: Checkpoint, token_ids, dtype=torch.bfloat16) -> torch.Tensor:
    """Float32 logits [T, V] from Meta's reference Transformer on the same checkpoint."""
    model = meta_reference_model(ck, max_seq_len=len(token_ids), dtype=dtype)
    with torch.inference_mode():
        return model(torch.tensor([list(token_ids)]), start_pos=0)[0].float()
