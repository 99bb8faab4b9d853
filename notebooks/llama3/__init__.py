"""Llama 3 inference from scratch: the compact version of every step the notebooks derive.

The sections follow the notebooks in reading order. Each notebook works a step out one
tensor at a time, checks its result against the function here, and later notebooks call
the function instead of repeating the derivation.

Tensors keep Meta's layout and precision: weights stay bfloat16 and memory-mapped, the
matmuls run in the weights' dtype, and RMSNorm, RoPE and softmax run in float32, exactly
where Meta's reference implementation (`llama_models.llama3.model`) does.

Shapes in comments: T = tokens, D = dim, H = query heads, K = key/value heads,
d = head_dim, F = FFN hidden size, V = vocabulary.

One file per concern, in the order the notebooks derive them:

- config.py       01  params.json as a ModelConfig, the releases, the errors for bad input
- tokens.py       02  the tokenizer and the prompt
- byte_level_bpe.py  16  a tokenizer that is not Llama 3's: byte-level BPE with merges, from tokenizer.json
- checkpoint.py   01  Meta's files checked and memory-mapped; shapes beside 8B's
- layouts.py      01, 05, 17  Meta's model-parallel shards and Hugging Face's safetensors, used in place
- model.py        03-09  embeddings, RMSNorm, heads, RoPE, attention, the feed-forward network, forward
- inspection.py   10-11  attention weights kept per layer, head scores, the logit lens
- generation.py   12-13  generation with a key/value cache, sampling, tolerances, chat
- family.py       14  the releases' params
- reference.py    09 and the tests: Meta's reference implementation as the yardstick
- fast.py         19  the weights' pages mapped up front (the matmul kernel is matmul_kernel.py)
- parallel.py     18  one shard per process over torch.distributed (and scripts/run_tp.py)
- gguf.py         16  llama.cpp's GGUF files: a real model's weights and tokenizer (make smollm2)

`import llama3` gives every public name of them all, so notebooks write `llama3.forward(...)`.
"""

from .config import *  # noqa: F401,F403
from .tokens import *  # noqa: F401,F403
from .byte_level_bpe import *  # noqa: F401,F403
from .fast import *  # noqa: F401,F403
from .checkpoint import *  # noqa: F401,F403
from .layouts import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .inspection import *  # noqa: F401,F403
from .generation import *  # noqa: F401,F403
from .family import *  # noqa: F401,F403
from .reference import *  # noqa: F401,F403
from .parallel import *  # noqa: F401,F403
from .gguf import *  # noqa: F401,F403
