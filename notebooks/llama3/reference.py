"""The yardstick: Meta's reference implementation (llama_models.llama3.model) holding our checkpoint
(notebook 09 and the parity tests)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import torch

from .checkpoint import Checkpoint, params_of
from .config import CheckpointError
from .pages import memory_limit
from .weights import StoredWeight

# ---------------------------------------------------------------------------------------
# The yardstick: Meta's reference implementation (llama_models.llama3.model)
# ---------------------------------------------------------------------------------------


def _init_model_parallel() -> None:
    """fairscale model parallel of size 1 on CPU, as Meta's generation code sets it up."""
    import fairscale.nn.model_parallel.initialize as fs_init

    if not torch.distributed.is_initialized():
        rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"  # a file, not a network port
        torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # it prints three status lines
            fs_init.initialize_model_parallel(1)


def meta_reference_model(ck: Checkpoint, max_seq_len: int, dtype=torch.bfloat16):
    """Meta's own Transformer holding this checkpoint's weights. Needs `llama-models` and `fairscale`.

    Built in bfloat16, as Meta's generation code does on a GPU, so that both implementations
    round at the same places.
    """
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    _init_model_parallel()
    args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=1, **params_of(ck))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    # assign: the parameters become the memory-mapped tensors themselves, not copies of them. Weights in
    # shards or in Hugging Face's row order are merged into Meta's layout first: this one-process model
    # needs whole tensors (a copy of the model, which is why notebook 17 never does this).
    weights = {k: w.merged() if isinstance(w, StoredWeight) else w for k, w in ck.weights.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model


def meta_reference_logits(ck: Checkpoint, token_ids, dtype=torch.bfloat16) -> torch.Tensor:
    """Float32 logits [T, V] from Meta's reference Transformer on the same checkpoint."""
    model = meta_reference_model(ck, max_seq_len=len(token_ids), dtype=dtype)
    with torch.inference_mode():
        return model(torch.tensor([list(token_ids)]), start_pos=0)[0].float()


def reference_fits(ck: Checkpoint) -> bool:
    """Meta's one-process reference needs every sharded or permuted weight merged into a copy: skipped when that
    copy would take more than half of this machine's memory.

    A checkpoint in Meta's single-file layout is used in place and always fits.
    """
    merged_bytes = sum(w.numel() * w.element_size() for w in ck.weights.values() if isinstance(w, StoredWeight))
    return merged_bytes <= memory_limit() // 2


# ---------------------------------------------------------------------------------------
# A second yardstick: Hugging Face transformers' LlamaForCausalLM on the Hugging Face layout
# ---------------------------------------------------------------------------------------


def transformers_model(hf_dir, dtype: torch.dtype = torch.bfloat16):
    """transformers' LlamaForCausalLM holding a Hugging Face Llama folder (config.json, *.safetensors), in
    bfloat16 (or `dtype`) on the CPU with the eager (plain PyTorch) attention. Local files only: nothing is
    downloaded.

    transformers only warns about tensors it expected and did not find (it leaves them at random values)
    or found and did not expect; here either one is an error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(f"{hf_dir / 'config.json'} is missing: not a Hugging Face model folder.")
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report and bar; the keys are checked below
    hf_logging.disable_progress_bar()
    try:
        model, info = LlamaForCausalLM.from_pretrained(
            hf_dir, dtype=dtype, attn_implementation="eager", local_files_only=True,
            output_loading_info=True,
        )  # fmt: skip
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    checked = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {k: sorted(v) for k, v in info.items() if v and k in checked}
    if problems:
        raise CheckpointError(f"{hf_dir}: the files do not match config.json: {problems}")
    return model.eval()


def transformers_logits(hf_dir, token_ids, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Float32 logits [T, V] from transformers' LlamaForCausalLM on a Hugging Face Llama folder, its weights
    in `dtype`."""
    model = transformers_model(hf_dir, dtype)
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(token_ids)])).logits[0].float()
