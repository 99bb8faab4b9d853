"""Chat (notebook 13): our dialog encoding against Meta's ChatFormat, token for token."""

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
}


@pytest.fixture(scope="module")
def meta_chat_format():
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance())


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_dialog_encoding_equals_metas_chat_format(demo, meta_chat_format, name):
    from llama_models.datatypes import RawMessage

    messages = CONVERSATIONS[name]
    reference = meta_chat_format.encode_dialog_prompt([RawMessage(**m) for m in messages]).tokens
    assert llama3.encode_dialog(demo.tokenizer, messages) == reference


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
    assert eot in llama3.stop_token_ids(tok)


def test_special_token_names_in_content_stay_text(demo):
    token_ids = llama3.encode_dialog(demo.tokenizer, CONVERSATIONS["special names as text"])
    assert token_ids.count(demo.tokenizer.encode_single_token("<|eot_id|>")) == 1
