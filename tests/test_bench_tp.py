"""What the tensor-parallel benchmark (llama3.tools.bench_tp) relies on: the collectives' timing hook counts every
collective of a forward pass and changes no result, and regrouping a sharded checkpoint keeps its weights."""

import torch
import torch.distributed as dist

import llama3


def test_regrouping_shards_keeps_the_weights(demo, demo_shards, tmp_path):
    """The demo cut into 2 shards and those regrouped into 1 (read shard by shard) are the demo again."""
    llama3.reshard(demo_shards / "demo-2", tmp_path / "one", 1)
    whole = torch.load(tmp_path / "one" / "consolidated.00.pth", weights_only=True)
    assert list(whole) == list(demo.weights)
    assert all(torch.equal(whole[key], demo.weights[key]) for key in whole)


def test_timing_the_collectives_counts_them_and_changes_nothing(demo, demo_shards, tmp_path):
    """One rank (a world of 1, gloo in this process): the embedding's all_reduce, two per layer, the logits' all_gather."""
    own_group = not dist.is_initialized()  # Meta's reference (reference.py) may have made a world of 1 already
    if own_group:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.get_world_size() == 1
    try:
        shard = llama3.load_rank_shard(demo_shards / "demo-1", demo.config, 0, 1)
        ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
        plain = llama3.tp_forward(shard, ids)
        seconds: list[float] = []
        llama3.time_collectives(seconds)
        try:
            timed = llama3.tp_forward(shard, ids)
        finally:
            llama3.time_collectives(None)
        assert torch.equal(plain, timed)
        assert len(seconds) == 2 + 2 * demo.config.n_layers and all(s > 0 for s in seconds)
        llama3.tp_forward(shard, ids)
        assert len(seconds) == 2 + 2 * demo.config.n_layers  # off again
    finally:
        if own_group:
            dist.destroy_process_group()
