"""The Llama 3 family (notebook 14): params from Meta's model list, RoPE scaling, the mini presets."""

import dataclasses

import pytest
import torch

import llama3
import make_checkpoint

META_NAMES = {"Llama 3 8B": "Llama-3-8B", "Llama 3.1 8B": "Llama3.1-8B", "Llama 3.2 1B": "Llama3.2-1B", "Llama 3.2 3B": "Llama3.2-3B"}
PARAMETERS = {"Llama 3 8B": 8_030_261_248, "Llama 3.1 8B": 8_030_261_248, "Llama 3.2 1B": 1_235_814_400, "Llama 3.2 3B": 3_212_749_824}


@pytest.mark.parametrize("name", META_NAMES)
def test_family_params_are_metas(name):
    from llama_models.sku_list import resolve_model

    assert llama3.FAMILY_PARAMS[name] == resolve_model(META_NAMES[name]).arch_args
    config = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[name])
    assert llama3.parameter_count(config, tied_output=name.startswith("Llama 3.2")) == PARAMETERS[name]


@pytest.mark.parametrize("name", META_NAMES)
def test_rope_scaling_is_metas(name):
    from llama_models.llama3.model import apply_scaling, precompute_freqs_cis

    config = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[name])
    freqs = llama3.rope_frequencies(dataclasses.replace(config, use_scaled_rope=False))
    assert torch.equal(llama3.scale_rope_frequencies(freqs), apply_scaling(freqs))
    meta = precompute_freqs_cis(config.head_dim, 64, config.rope_theta, use_scaled=config.use_scaled_rope)
    assert torch.equal(llama3.rope_freqs_cis(config, 64), meta)


@pytest.mark.parametrize("mini, full", [("llama3.2-1b-mini", "Llama 3.2 1B"), ("llama3.2-3b-mini", "Llama 3.2 3B")])
def test_mini_presets_mirror_their_models(mini, full):
    small = llama3.ModelConfig.from_params(make_checkpoint.PRESETS[mini])
    big = llama3.ModelConfig.from_params(llama3.FAMILY_PARAMS[full])
    assert small.queries_per_kv_head == big.queries_per_kv_head
    assert small.ffn_dim_multiplier == big.ffn_dim_multiplier
    assert small.use_scaled_rope and big.use_scaled_rope
    assert mini in make_checkpoint.TIED_PRESETS


def test_tied_checkpoint_output_is_the_embedding(random_checkpoints):
    ck = llama3.load_checkpoint(random_checkpoints["llama3.2-1b-mini"])
    assert llama3.output_is_tied(ck.weights)
    assert "output.weight" not in torch.load(ck.path / "consolidated.00.pth", mmap=True, weights_only=True)
    assert llama3.count_parameters(ck.weights) == llama3.parameter_count(ck.config, tied_output=True)


def test_untied_demo(demo):
    assert not llama3.output_is_tied(demo.weights)
    assert llama3.count_parameters(demo.weights) == llama3.parameter_count(demo.config)
