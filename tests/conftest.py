import pytest

import llama3
from llama3.tools import synthetic

# Random checkpoints for parity: other head ratios, rope_theta, Llama 3.1 scaling, tied output.
# Embedding scale 4 makes their logits peaked, so bfloat16 rounding cannot decide the top-1.
# Llama 3.2 1B and 3B in miniature: their head ratios and FFN multipliers, scaled RoPE, tied output.
PARITY_PRESETS = ["mha", "gqa2", "gqa4", "llama3.1", "llama3.2-tied", "llama3.2-1b-mini", "llama3.2-3b-mini"]


@pytest.fixture(scope="session")
def demo():
    if not (llama3.DEMO_DIR / "consolidated.00.pth").exists():
        pytest.fail("the demo checkpoint is missing: run `make demo` (make test builds it)")
    return llama3.load_checkpoint(llama3.DEMO_DIR)


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct (4-bit weights expanded back) in Meta's layout, as `make smollm2` writes it."""
    if not (llama3.SMOLLM2_DIR / "consolidated.00.pth").exists():
        pytest.fail("the real model is missing: run `make smollm2` (make test builds it)")
    return llama3.load_checkpoint(llama3.SMOLLM2_DIR)


@pytest.fixture(scope="session")
def real_model_hf():
    """The same weights in Hugging Face's layout."""
    if not (llama3.SMOLLM2_HF_DIR / "model.safetensors").exists():
        pytest.fail("the real model is missing: run `make smollm2` (make test builds it)")
    return llama3.load_checkpoint(llama3.SMOLLM2_HF_DIR)


@pytest.fixture(scope="session")
def demo_prompt(demo):
    """The walkthrough's prompt as the demo's token ids."""
    return llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)


@pytest.fixture(scope="session")
def demo_logits(demo, demo_prompt):
    """The one-process forward pass on the demo's single file: what every layout must reproduce."""
    return llama3.forward(demo.weights, demo.config, demo_prompt)


@pytest.fixture(scope="session")
def demo_shards(demo, tmp_path_factory):
    """The demo cut into 1, 2 and 4 of Meta's model-parallel shards, in demo-N (2: one key/value head each,
    as in 70B; 4: each key/value head stored twice, as in Llama 3.1 405B's 16-shard release)."""
    root = tmp_path_factory.mktemp("demo-shards")
    for n in (1, 2, 4):
        llama3.reshard(demo, root / f"demo-{n}", n)
    return root


@pytest.fixture(scope="session")
def random_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        name: synthetic.write_checkpoint(
            root / name,
            synthetic.PRESETS[name],
            seed=index,
            embedding_scale=4.0,
            tied=name in synthetic.TIED_PRESETS,
        )
        for index, name in enumerate(PARITY_PRESETS)
    }


# The real model (make smollm2) in both layouts: what was measured on our own weights must hold on real ones too.
REAL_MODELS = ["smollm2", "smollm2-hf"]


@pytest.fixture(params=["demo"] + REAL_MODELS + PARITY_PRESETS)
def checkpoint(request, demo, random_checkpoints):
    if request.param == "demo":
        return demo
    if request.param in REAL_MODELS:
        return request.getfixturevalue("real_model" if request.param == "smollm2" else "real_model_hf")
    return llama3.load_checkpoint(random_checkpoints[request.param])


@pytest.fixture
def prompt_ids(checkpoint):
    return llama3.encode_prompt(checkpoint.tokenizer, llama3.DEFAULT_PROMPT, checkpoint.config)
