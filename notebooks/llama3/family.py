"""The Llama 3 family (notebook 14): the releases' params and what follows from them."""

from __future__ import annotations

import json
import math

import torch

from .config import *  # noqa: F401,F403
from .checkpoint import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403


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
