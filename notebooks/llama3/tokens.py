"""Tokens (notebook 02): the tiktoken tokenizer built from tokenizer.model or Hugging Face's tokenizer.json,
byte-pair merging, the special tokens of each release, the prompt."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import tiktoken

from .config import CheckpointError, ModelConfig, PromptError, check_release

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


def hf_special_token_names(release: str = "3") -> list[str]:
    """The 256 special tokens as Hugging Face's tokenizer.json names them (its Llama converter's lists).

    Llama 3's are Meta's. For 3.1 and 3.2 the converter keeps the names Meta's tokenizer had at 3.1's
    release: 128005 is <|reserved_special_token_2|> (<|step_id|> in llama-models today), 128011 is
    <|reserved_special_token_3|> (<|image|>, added with 3.2's vision models), and the reserved tokens
    after it count on from 3, up to <|reserved_special_token_247|> at 128255. The ids are the same."""
    if release == "3":
        return list(LLAMA3_SPECIAL_TOKENS)
    names = special_token_names(release)
    names[5] = "<|reserved_special_token_2|>"
    return names[:11] + [f"<|reserved_special_token_{3 + i}|>" for i in range(NUM_SPECIAL_TOKENS - 11)]


def special_tokens_in_order(tokenizer) -> list[str]:
    """The tokenizer's own special-token names in id order (a tokenizer.json may name them its own way)."""
    return sorted(tokenizer.special_tokens_set, key=tokenizer.encode_single_token)


def release_of_special_tokens(names) -> str:
    """ "3" for Llama 3's special-token names, "3.1" for 3.1's (which 3.2 shares): only 3.1 has <|eom_id|>."""
    return "3.1" if "<|eom_id|>" in names else "3"


class Tokenizer(tiktoken.Encoding):
    """Llama 3's tokenizer: a tiktoken Encoding that knows the release whose rules it follows.

    The release is decided once, when a checkpoint is loaded (from params.json or config.json), and
    everything that differs between releases follows it: the special tokens' names in
    special_token_names(release), the stop tokens, the chat format's rules. The special tokens' ids are the
    same in every release (the first follows the BPE ranks), so `special_id` finds a token of the release by
    its place, whatever name the file gives it (a tokenizer.json may carry another release's names)."""

    def __init__(self, release: str, ranks: dict[bytes, int], special_tokens: dict[str, int], pat_str: str):
        check_release(release)
        super().__init__(f"llama{release}", pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special_tokens)
        self.release = release
        self.first_special_id = len(ranks)

    def special_id(self, name: str) -> int:
        """The id of the release's special token `name` (e.g. "<|eot_id|>")."""
        names = special_token_names(self.release)
        if name not in names:
            raise PromptError(f"{name} is not a special token of Llama {self.release}.")
        return self.first_special_id + names.index(name)


def is_llama3_tokenizer(tokenizer) -> bool:
    """True for Llama 3's tokenizer (any release); False for another model's, such as SmolLM2's byte-level BPE."""
    return isinstance(tokenizer, Tokenizer)


def tokenizer_release(tokenizer) -> str:
    """The release whose rules the tokenizer follows (Tokenizer.release). Another model's tokenizer has no Llama
    release: asking is an error that says so."""
    if not is_llama3_tokenizer(tokenizer):
        raise PromptError(
            f"The tokenizer {tokenizer.name!r} is not Llama 3's, so Llama 3's special tokens and chat format do not "
            "apply to it. For those, use Llama 3's: llama3.load_tokenizer(llama3.meta_tokenizer_model())."
        )
    return tokenizer.release


def prompt_prefix(tokenizer) -> list[int]:
    """The ids the model's own tokenizer puts before a prompt: Llama 3's <|begin_of_text|>; for another model's
    tokenizer read from tokenizer.json, what its post-processor's template puts there (SmolLM2's: nothing)."""
    if is_llama3_tokenizer(tokenizer):
        return [tokenizer.special_id("<|begin_of_text|>")]
    return list(tokenizer.prompt_prefix)


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


def meta_tokenizer_model() -> Path:
    """Meta's Llama 3 tokenizer.model as the llama-models package ships it."""
    import llama_models.llama3

    return Path(llama_models.llama3.__file__).parent / "tokenizer.model"


def load_tokenizer(path: Path, release: str = "3") -> Tokenizer:
    """The tokenizer from tokenizer.model, with Llama 3's split pattern and the release's special tokens.

    Every release ships the same tokenizer.model; only the special tokens' names differ."""
    ranks = read_bpe_ranks(path)
    specials = {name: len(ranks) + i for i, name in enumerate(special_token_names(release))}
    return Tokenizer(release, ranks, specials, SPLIT_PATTERN)


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
    """<|begin_of_text|> (or what the model's own tokenizer puts first: prompt_prefix) followed by the
    prompt's tokens, checked against the context length."""
    if not prompt or not prompt.strip():
        raise PromptError("The prompt is empty. Set LLAMA3_PROMPT to some text, or unset it for the default question.")
    token_ids = prompt_prefix(tokenizer) + tokenizer.encode(prompt, disallowed_special=())
    if len(token_ids) > config.context_length:
        raise PromptError(
            f"The prompt {prompt[:40]!r}... is {len(token_ids)} tokens long, more than the model's context "
            f"length of {config.context_length}. Shorten LLAMA3_PROMPT."
        )
    return token_ids


def token_texts(tokenizer, token_ids) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in token_ids]


# ---------------------------------------------------------------------------------------
# The same tokenizer from Hugging Face's tokenizer.json
# ---------------------------------------------------------------------------------------


def byte_level_alphabet() -> dict[int, str]:
    """The byte -> character table of byte-level BPE (GPT-2's, which Hugging Face's tokenizer.json uses):
    printable Latin-1 bytes stand for themselves, the other 68 bytes (controls, space, soft hyphen...) for
    the characters from U+0100 on, in byte order, so that every vocabulary entry is printable text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table |= {b: chr(256 + i) for i, b in enumerate(others)}
    return table


def read_bpe_json(path: Path, fix: str) -> tuple[dict, dict]:
    """A tokenizer.json holding a byte-pair-encoding model with a vocabulary: (the file, its model), or one
    message naming the file and `fix`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read as JSON ({type(error).__name__}). {fix}") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(
            f"{path} is not a byte-pair-encoding tokenizer.json (Llama 2's is SentencePiece-based). {fix}"
        )
    return data, model


def tokenizer_from_json(path: Path, release: str | None = None) -> Tokenizer:
    """The tokenizer from Hugging Face's tokenizer.json alone: the same ranks, split pattern and special
    tokens as load_tokenizer gives from tokenizer.model.

    The BPE vocabulary maps byte-level strings to ids: each string is mapped back to its bytes, and the id is
    the rank (Llama 3's merges follow the ranks). The special tokens come from added_tokens, the split
    pattern from the pre-tokenizer's Split step. `release` names the Encoding ("llama3", "llama3.1", ...);
    by default it is told from the special tokens' names (release_of_special_tokens)."""
    path = Path(path)
    fix = (
        "Use the tokenizer.json of a Llama 3 repository on Hugging Face (meta-llama/...), "
        "or tokenizer.model from its original/ folder."
    )
    data, model = read_bpe_json(path, fix)
    char_to_byte = {c: b for b, c in byte_level_alphabet().items()}
    try:
        ranks = {bytes(char_to_byte[c] for c in token): int(rank) for token, rank in model["vocab"].items()}
    except KeyError:
        raise CheckpointError(
            f"{path} has vocabulary entries that are not byte-level strings: not Llama 3's. {fix}"
        ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: the vocabulary's ids are not 0..{len(ranks) - 1} without gaps. {fix}")
    # The split pattern: Llama 3's pre-tokenizer is a Split on a regex, then the byte-level mapping.
    try:
        pre = data.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        patterns = [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s["pattern"]]
        specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} is malformed: its pre_tokenizer or added_tokens cannot be read. {fix}") from None
    if len(patterns) != 1:
        raise CheckpointError(f"{path} has no single Split pattern in its pre_tokenizer, as Llama 3's has. {fix}")
    expected_ids = list(range(len(ranks), len(ranks) + NUM_SPECIAL_TOKENS))
    if sorted(specials.values()) != expected_ids or specials.get("<|begin_of_text|>") != len(ranks):
        raise CheckpointError(
            f"{path} does not carry Llama 3's {NUM_SPECIAL_TOKENS} special tokens at ids {expected_ids[0]}.."
            f"{expected_ids[-1]} starting with <|begin_of_text|>. {fix}"
        )
    return Tokenizer(release or release_of_special_tokens(specials), ranks, specials, patterns[0])


def tokenizer_count_text(tokenizer, path: Path) -> str:
    """What a tokenizer file holds, for a message: tokenizer.model's ranks are the file's tokens, and the loader
    adds Llama 3's 256 special tokens to them; a tokenizer.json holds all of its tokens itself."""
    if Path(path).suffix == ".model":
        held = tokenizer.n_vocab - NUM_SPECIAL_TOKENS
        return (
            f"{path} holds {held} tokens (with the {NUM_SPECIAL_TOKENS} special tokens Llama 3 adds to them, "
            f"{tokenizer.n_vocab})"
        )
    return f"{path} holds {tokenizer.n_vocab} tokens"
