"""A tokenizer that is not Llama 3's: byte-level BPE with a list of merges, read from Hugging Face's
tokenizer.json (GPT-2's kind of tokenizer, which SmolLM2 uses; see gguf.py for where its file comes from).

Llama 3's tokenizer (tokens.py) merges by the rank of the merged token, as tiktoken does. A tokenizer.json
with `merges` says which *pairs* merge, in priority order, and a token reachable by two pairs merges only
through the listed one; so the merge loop here ranks pairs, as Hugging Face's `tokenizers` does. Everything
else is as in notebook 02: split the text into pieces (the pre-tokenizer's regexes), turn each piece into
UTF-8 bytes, merge the best-ranked adjacent pair until none is listed, look up the ids.

ByteLevelBPE has the methods of tiktoken.Encoding the walkthrough calls (encode, decode, encode_single_token,
decode_single_token_bytes, special_tokens_set, n_vocab, name), and says what Llama 3 hard-codes:
`prompt_prefix`, the ids put before a prompt (from the post-processor's template: none for SmolLM2), and
`stop_tokens` (tokenizer_config.json's eos_token beside the file).
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import CheckpointError, PromptError
from .tokens import byte_level_alphabet, read_bpe_json

__all__ = ["GPT2_SPLIT_PATTERN", "ByteLevelBPE", "load_tokenizer_json"]

# GPT-2's pre-tokenizer regex, as Hugging Face's ByteLevel pre-tokenizer applies it when use_regex is set:
# contractions, letters with one optional leading space, numbers likewise, other symbols likewise, and
# whitespace (a run of spaces before a word leaves its last space to the word).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class ByteLevelBPE:
    """Byte-level BPE with ranked merges; see the module's docstring."""

    def __init__(
        self,
        name: str,
        vocab: dict[bytes, int],
        merges: list[tuple[bytes, bytes]],
        special_tokens: dict[str, int],
        split_patterns: list[str],
        prompt_prefix: list[int] = (),
        stop_tokens: list[str] = (),
    ):
        import regex

        self.name = name
        self.vocab = dict(vocab)
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.special_tokens = dict(special_tokens)
        self.splits = [regex.compile(p) for p in split_patterns]
        self.prompt_prefix = list(prompt_prefix)
        self.stop_tokens = list(stop_tokens)
        self.token_bytes = {i: b for b, i in self.vocab.items()}
        self.token_bytes |= {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self._cache: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"<ByteLevelBPE {self.name!r}: {self.n_vocab} tokens, {len(self.merge_ranks)} merges>"

    @property
    def n_vocab(self) -> int:
        return max(self.token_bytes) + 1

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self.special_tokens)

    def pieces(self, text: str) -> list[str]:
        """The pre-tokenizer: each regex in turn splits every piece into its matches and what lies between."""
        pieces = [text]
        for pattern in self.splits:
            split = []
            for piece in pieces:
                start = 0
                for m in pattern.finditer(piece):
                    if m.start() > start:
                        split.append(piece[start : m.start()])
                    if m.end() > m.start():
                        split.append(m.group())
                    start = m.end()
                if start < len(piece):
                    split.append(piece[start:])
            pieces = split
        return pieces

    def merge(self, piece: bytes) -> list[int]:
        """Byte-pair encoding of one piece: merge the adjacent pair listed first in the merges (the leftmost
        if it occurs twice) until no adjacent pair is listed."""
        missing = [b for b in set(piece) if bytes([b]) not in self.vocab]
        if missing:
            raise PromptError(
                f"The byte {missing[0]:#04x} (in {piece!r}) is not in {self.name}'s vocabulary, so no token can "
                "stand for it. Remove that character from the prompt."
            )
        parts = [bytes([b]) for b in piece]
        while len(parts) > 1:
            ranked = [(self.merge_ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [(r, i) for r, i in ranked if r is not None]
            if not ranked:
                break
            _, i = min(ranked)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return [self.vocab[p] for p in parts]

    def encode_ordinary(self, text: str) -> list[int]:
        ids = []
        for piece in self.pieces(text):
            if piece not in self._cache:
                self._cache[piece] = self.merge(piece.encode("utf-8"))
            ids += self._cache[piece]
        return ids

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        """Token ids of text, with tiktoken's rules for special-token names in it: those in allowed_special
        ("all": every one) become their token; others are an error, unless disallowed_special is () (then plain
        text)."""
        allowed = self.special_tokens_set if allowed_special == "all" else set(allowed_special)
        disallowed = (self.special_tokens_set - allowed) if disallowed_special == "all" else set(disallowed_special)
        for name in disallowed:
            if name in text:
                raise ValueError(
                    f"{text[:40]!r}... holds the special token {name}: pass allowed_special or disallowed_special=()"
                )
        if not allowed:
            return self.encode_ordinary(text)
        import regex

        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        ids = []
        for i, part in enumerate(splitter.split(text)):
            ids += [self.special_tokens[part]] if i % 2 else self.encode_ordinary(part)
        return ids

    def encode_single_token(self, token: str | bytes) -> int:
        if isinstance(token, str) and token in self.special_tokens:
            return self.special_tokens[token]
        key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        if key not in self.vocab:
            raise KeyError(token)
        return self.vocab[key]

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        return self.token_bytes[int(token_id)]

    def decode_bytes(self, token_ids) -> bytes:
        return b"".join(self.token_bytes[int(i)] for i in token_ids)

    def decode(self, token_ids, errors: str = "replace") -> str:
        return self.decode_bytes(token_ids).decode("utf-8", errors=errors)


def _split_patterns(step: dict, path: Path) -> list[str]:
    """The regexes one pre-tokenizer step of tokenizer.json splits by (ByteLevel, Digits, Split)."""
    kind = step.get("type")
    if kind == "Sequence":
        return [p for s in step.get("pretokenizers", []) for p in _split_patterns(s, path)]
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            raise CheckpointError(f"{path}: a ByteLevel pre-tokenizer with add_prefix_space is not supported.")
        return [GPT2_SPLIT_PATTERN] if step.get("use_regex", True) else []
    if kind == "Digits":
        return [r"\p{N}" if step.get("individual_digits") else r"\p{N}+"]
    if (
        kind == "Split"
        and "Regex" in step.get("pattern", {})
        and step.get("behavior") == "Isolated"
        and not step.get("invert")
    ):
        return [step["pattern"]["Regex"]]
    raise CheckpointError(
        f"{path}: the pre-tokenizer step {json.dumps(step)[:120]} is not one this reader knows "
        "(ByteLevel, Digits, or Split on a regex with behavior Isolated)."
    )


def _prefix_tokens(post: dict | None) -> list[str]:
    """The special tokens a post-processor puts before a single text ($A): TemplateProcessing's, else none."""
    if not post:
        return []
    if post.get("type") == "Sequence":
        return [t for p in post.get("processors", []) for t in _prefix_tokens(p)]
    if post.get("type") != "TemplateProcessing":
        return []
    prefix = []
    for item in post.get("single", []):
        if "Sequence" in item:
            break
        prefix.append(item["SpecialToken"]["id"])
    return prefix


def load_tokenizer_json(path: str | Path) -> ByteLevelBPE:
    """ByteLevelBPE from a byte-level BPE tokenizer.json with merges (SmolLM2's), and the stop token from
    tokenizer_config.json's eos_token when that file lies beside it."""
    path = Path(path)
    data, model = read_bpe_json(path, "Download it again from the model's repository.")
    if data.get("normalizer"):
        raise CheckpointError(
            f"{path} has a normalizer ({data['normalizer'].get('type')}): not a byte-level BPE tokenizer."
        )
    char_to_byte = {c: b for b, c in byte_level_alphabet().items()}
    try:
        vocab = {bytes(char_to_byte[c] for c in token): int(i) for token, i in model["vocab"].items()}
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        merges = [(bytes(char_to_byte[c] for c in a), bytes(char_to_byte[c] for c in b)) for a, b in merges]
    except (KeyError, ValueError):
        raise CheckpointError(f"{path} has vocabulary entries or merges that are not byte-level strings.") from None
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    patterns = _split_patterns(data.get("pre_tokenizer") or {"type": "ByteLevel"}, path)
    prefix = [specials[name] for name in _prefix_tokens(data.get("post_processor"))]
    stop = []
    config_path = path.with_name("tokenizer_config.json")
    if config_path.exists():
        eos = json.loads(config_path.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if eos is not None:
            stop = [eos]
    return ByteLevelBPE(path.parent.name or path.name, vocab, merges, specials, patterns, prefix, stop)
