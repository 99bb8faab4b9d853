"""Chat (notebook 13): our dialog encoding against Meta's ChatFormat, token for token.

Two releases, two rules. Llama 3.1's ChatFormat is in the installed `llama-models` package, and
a Llama 3.1 tokenizer must match it id for id. Llama 3's ChatFormat (meta-llama/llama3,
llama/tokenizer.py) is not on PyPI; its published rule is restated here: each message is its
header, then `message["content"].strip()` encoded as text, then <|eot_id|>; roles are system,
user and assistant; the prompt is <|begin_of_text|>, the messages, an open assistant header.
"""

import pytest

import llama3

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the answer to everything?"}],
    "system prompt": [
        {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
        {"role": "user", "content": "Why does Llama 3 use grouped-query attention?"},
    ],
    "multi-turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another, bigger one?"},
        {"role": "assistant", "content": "13"},
        {"role": "user", "content": "Thanks!\n\nBye."},
    ],
    "special names as text": [
        {"role": "user", "content": "Is <|eot_id|> a token? And <|start_header_id|>?"},
    ],
    "unicode and spaces": [
        {"role": "system", "content": "  Réponds en français.  "},
        {"role": "user", "content": "naïve café 🦙, 日本語\n\ttabs"},
    ],
    "tool result": [
        {"role": "user", "content": "What is 6 * 7?"},
        {"role": "assistant", "content": "Let me compute that."},
        {"role": "tool", "content": "42"},
    ],
    "empty system prompt": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
    "whitespace around content": [
        {"role": "system", "content": "\n  Be brief.\t"},
        {"role": "user", "content": " What is 6 * 7? \n\n"},
        {"role": "assistant", "content": " 42"},
        {"role": "user", "content": "And 6 * 9?  "},
    ],
}
LLAMA3_CONVERSATIONS = [name for name in CONVERSATIONS if name != "tool result"]  # no tool role in Llama 3


@pytest.fixture(scope="module")
def tokenizers(demo):
    return {r: llama3.load_tokenizer(demo.path / "tokenizer.model", r) for r in ("3", "3.1")}


def llama3_chat_format(tok, messages):
    """Llama 3's published ChatFormat.encode_dialog_prompt, restated (see the module docstring)."""

    def header(role):
        return (
            [tok.encode_single_token("<|start_header_id|>")] + tok.encode(role)
            + [tok.encode_single_token("<|end_header_id|>")] + tok.encode("\n\n")
        )  # fmt: skip

    token_ids = [tok.encode_single_token("<|begin_of_text|>")]
    for m in messages:
        token_ids += header(m["role"]) + tok.encode(m["content"].strip(), disallowed_special=())
        token_ids.append(tok.encode_single_token("<|eot_id|>"))
    return token_ids + header("assistant")


@pytest.fixture(scope="module")
def meta_chat_format():
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance())


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_llama3_1_dialog_encoding_equals_metas_chat_format(tokenizers, meta_chat_format, name):
    from llama_models.datatypes import RawMessage

    messages = CONVERSATIONS[name]
    reference = meta_chat_format.encode_dialog_prompt([RawMessage(**m) for m in messages]).tokens
    assert llama3.encode_dialog(tokenizers["3.1"], messages) == reference


@pytest.mark.parametrize("name", LLAMA3_CONVERSATIONS)
def test_llama3_dialog_encoding_follows_llama3s_chat_format(tokenizers, name):
    messages = CONVERSATIONS[name]
    assert llama3.encode_dialog(tokenizers["3"], messages) == llama3_chat_format(tokenizers["3"], messages)


def test_the_releases_differ_on_whitespace_around_content(tokenizers, demo):
    messages = CONVERSATIONS["whitespace around content"]
    llama3_ids = llama3.encode_dialog(tokenizers["3"], messages)
    llama3_1_ids = llama3.encode_dialog(tokenizers["3.1"], messages)
    assert llama3_ids != llama3_1_ids
    assert tokenizers["3"].decode(llama3_ids).count("<|end_header_id|>\n\nWhat is 6 * 7?<|eot_id|>") == 1
    assert tokenizers["3.1"].decode(llama3_1_ids).count("<|end_header_id|>\n\n What is 6 * 7? \n\n<|eot_id|>") == 1
    assert demo.release == "3" and llama3.encode_dialog(demo.tokenizer, messages) == llama3_ids


def test_llama3_has_no_tool_role(tokenizers):
    with pytest.raises(llama3.PromptError, match="tool"):
        llama3.encode_dialog(tokenizers["3"], CONVERSATIONS["tool result"])


def test_dialog_layout(demo):
    tok = demo.tokenizer
    token_ids = llama3.encode_dialog(tok, CONVERSATIONS["system prompt"])
    text = tok.decode(token_ids)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful assistant. Answer in one sentence.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Why does Llama 3 use grouped-query attention?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    eot = tok.encode_single_token("<|eot_id|>")
    assert token_ids.count(eot) == 2  # one per finished turn; the assistant's turn is open
    assert llama3.stop_token_ids(tok) == [tok.encode_single_token("<|end_of_text|>"), eot]  # Llama 3's two


def test_special_token_names_in_content_stay_text(demo):
    token_ids = llama3.encode_dialog(demo.tokenizer, CONVERSATIONS["special names as text"])
    assert token_ids.count(demo.tokenizer.encode_single_token("<|eot_id|>")) == 1
