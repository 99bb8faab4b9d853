"""The Llama 3 family (notebook 14): params from Meta's model list, the release told from params.json,
RoPE scaling (8 for 3.1, 32 for 3.2, where Meta's reference code uses 8 for both), the mini presets."""

import dataclasses

import pytest
import torch

import llama3
from llama3.tools import synthetic

META_NAMES = {
    "Llama 3 8B": "Llama-3-8B",
    "Llama 3.1 8B": "Llama3.1-8B",
    "Llama 3.2 1B": "Llama3.2-1B",
    "Llama 3.2 3B": "Llama3.2-3B",
}
PARAMETERS = {
    "Llama 3 8B": 8_030_261_248,
    "Llama 3.1 8B": 8_030_261_248,
    "Llama 3.2 1B": 1_235_814_400,
    "Llama 3.2 3B": 3_212_749_824,
}


@pytest.mark.parametrize("name", META_NAMES)
def test_family_params_are_metas(name):
    from llama_models.sku_list import resolve_model

    assert llama3.FAMILY_PARAMS[name] == resolve_model(META_NAMES[name]).arch_args
    config = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[name])
    assert llama3.parameter_count(config, tied_output=name.startswith("Llama 3.2")) == PARAMETERS[name]


RELEASES = {
    "Llama 3 8B": ("3", None),
    "Llama 3.1 8B": ("3.1", 8),
    "Llama 3.2 1B": ("3.2", 32),
    "Llama 3.2 3B": ("3.2", 32),
}


@pytest.mark.parametrize("name", META_NAMES)
def test_release_and_scale_factor_from_params(name):
    config = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[name])
    assert (config.release, config.rope_scale_factor) == RELEASES[name]


def test_release_can_be_overridden():
    params = llama3.FAMILY_PARAMS["Llama 3.1 8B"]
    assert llama3.ModelConfig.from_params(params, release="3.2").rope_scale_factor == 32
    with pytest.raises(llama3.CheckpointError, match="4.0"):
        llama3.ModelConfig.from_params(params, release="4.0")


def test_load_checkpoint_reads_the_release_override(random_checkpoints, monkeypatch):
    path = random_checkpoints["llama3.2-1b-mini"]  # 3.2's ratios at a small shape: taken for 3.1 by default
    assert llama3.load_checkpoint(path).config.rope_scale_factor == 8
    assert llama3.load_checkpoint(path, release="3.2").config.rope_scale_factor == 32
    monkeypatch.setenv("LLAMA3_RELEASE", "3.2")
    assert llama3.load_checkpoint(path).release == "3.2"


def metas_apply_scaling_with_factor(factor):
    """Meta's own apply_scaling, its hard-coded scale_factor 8 replaced: the rule with 3.2's factor."""
    import inspect

    from llama_models.llama3 import model

    source = inspect.getsource(model.apply_scaling)
    assert source.count("scale_factor = 8\n") == 1
    namespace = {"torch": torch}
    exec(source.replace("scale_factor = 8\n", f"scale_factor = {factor}\n"), namespace)
    return namespace["apply_scaling"]


@pytest.mark.parametrize("name", META_NAMES)
def test_rope_scaling_is_metas_rule_with_the_release_factor(name):
    from llama_models.llama3.model import apply_scaling, precompute_freqs_cis

    config = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[name])
    freqs = llama3.rope_frequencies(dataclasses.replace(config, use_scaled_rope=False))
    assert torch.equal(llama3.scale_rope_frequencies(freqs, 8), apply_scaling(freqs))
    if config.use_scaled_rope:
        reference = metas_apply_scaling_with_factor(config.rope_scale_factor)
        assert torch.equal(llama3.rope_frequencies(config), reference(freqs))
    # Meta's reference Transformer, under its own factor 8:
    as_meta_runs_it = dataclasses.replace(config, rope_scale_factor=8) if config.use_scaled_rope else config
    meta = precompute_freqs_cis(config.head_dim, 64, config.rope_theta, use_scaled=config.use_scaled_rope)
    assert torch.equal(llama3.rope_freqs_cis(as_meta_runs_it, 64), meta)


def test_factors_8_and_32_differ_only_at_long_range():
    config_32 = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS["Llama 3.2 1B"])
    config_8 = dataclasses.replace(config_32, rope_scale_factor=8)
    f32, f8 = llama3.rope_frequencies(config_32), llama3.rope_frequencies(config_8)
    wavelength = 2 * torch.pi / llama3.rope_frequencies(dataclasses.replace(config_32, use_scaled_rope=False))
    fast = wavelength < llama3.ROPE_ORIGINAL_CONTEXT / llama3.ROPE_HIGH_FREQ_FACTOR
    slow = wavelength > llama3.ROPE_ORIGINAL_CONTEXT / llama3.ROPE_LOW_FREQ_FACTOR
    assert torch.equal(f32[fast], f8[fast]) and fast.any()  # fast pairs: untouched by either factor
    assert torch.allclose(f8[slow] / f32[slow], torch.tensor(4.0)) and slow.any()  # slow pairs: 32 / 8

    # Score of a query and key on every pair alike, against their distance: mean over pairs of cos(d * theta_i).
    def score(freqs, distance):
        return torch.cos(distance * freqs.double()).mean()

    for distance in range(0, 64):  # a prompt's length: far below a bfloat16 step of the score (2^-8)
        assert abs(score(f32, distance) - score(f8, distance)) < 2**-12
    far = [abs(score(f32, d) - score(f8, d)) for d in (16384, 65536, 131071)]
    assert min(far) > 0.03  # tens of thousands of positions apart: clearly different


def test_short_prompt_logits_barely_depend_on_the_factor(random_checkpoints):
    """A Llama 3.2-shaped checkpoint under its factor 32 against Meta's reference Transformer, which uses 8:
    on a 17-token prompt the logits agree within the parity tolerance and give the same top token."""
    from test_parity import assert_logits_match

    ck = llama3.load_checkpoint(random_checkpoints["llama3.2-1b-mini"], release="3.2")
    token_ids = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    ours = llama3.forward(ck.weights, ck.config, token_ids)
    assert_logits_match(ours, llama3.meta_reference_logits(ck, token_ids), ck.config)
    as_meta_runs_it = llama3.forward(ck.weights, dataclasses.replace(ck.config, rope_scale_factor=8), token_ids)
    assert not torch.equal(ours, as_meta_runs_it)  # the factor is used, and still changes little here


@pytest.mark.parametrize("mini, full", [("llama3.2-1b-mini", "Llama 3.2 1B"), ("llama3.2-3b-mini", "Llama 3.2 3B")])
def test_mini_presets_mirror_their_models(mini, full):
    small = llama3.ModelConfig.from_params(synthetic.PRESETS[mini])
    big = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[full])
    assert small.queries_per_kv_head == big.queries_per_kv_head
    assert small.ffn_dim_multiplier == big.ffn_dim_multiplier
    assert small.use_scaled_rope and big.use_scaled_rope
    assert big.release == "3.2" and small.release == "3.1"  # told by shape: a miniature is not 3.2's shape
    assert mini in synthetic.TIED_PRESETS


def test_tied_checkpoint_output_is_the_embedding(random_checkpoints):
    ck = llama3.load_checkpoint(random_checkpoints["llama3.2-1b-mini"])
    assert llama3.output_is_tied(ck.weights)
    assert "output.weight" not in torch.load(ck.path / "consolidated.00.pth", mmap=True, weights_only=True)
    assert llama3.count_parameters(ck.weights) == llama3.parameter_count(ck.config, tied_output=True)


def test_untied_demo(demo):
    assert not llama3.output_is_tied(demo.weights)
    assert llama3.count_parameters(demo.weights) == llama3.parameter_count(demo.config)
