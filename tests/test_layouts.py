"""Meta's model-parallel shards and Hugging Face's safetensors, read in place (llama3.weights, llama3.formats; notebooks 05 and 17).

The forward pass on a layout must equal the forward pass on the same weights in one file: bit for bit
where it does the same sums (column-parallel matmuls, Hugging Face's reordered outputs), and within
llama3.logits_tolerance where a row-parallel matmul adds per-shard partial sums (each rounded to bfloat16
before they are added, where one matmul rounds once).
"""

import json
import shutil

import pytest
import torch

import llama3
from test_parity import assert_logits_match


def file_regions(path):
    """The address ranges this process has mapped from `path`."""
    regions = []
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(path):
            start, end = (int(a, 16) for a in parts[0].split("-"))
            regions.append((start, end))
    return regions


@pytest.mark.parametrize("n", [2, 4])
def test_sharded_forward_matches_the_single_file(demo, demo_shards, demo_prompt, demo_logits, n):
    ck = llama3.load_checkpoint(demo_shards / f"demo-{n}")
    assert ck.layout == "meta-sharded" and len(ck.files) == n
    logits = llama3.forward(ck.weights, ck.config, demo_prompt)
    assert_logits_match(logits, demo_logits, demo.config)
    assert int(logits[-1].argmax()) == 2983


@pytest.mark.parametrize("n", [2, 4])
def test_shards_stay_memory_mapped_and_are_never_merged(demo_shards, demo_prompt, monkeypatch, n):
    ck = llama3.load_checkpoint(demo_shards / f"demo-{n}")
    wq = ck.weights["layers.0.attention.wq.weight"]
    assert isinstance(wq, llama3.ShardedWeight) and len(wq.shards) == n
    for rank, path in enumerate(ck.files):  # each shard's tensors lie in the pages mapped from its own file
        regions = file_regions(path.resolve())
        for key in ("layers.0.attention.wq.weight", "layers.0.attention.wo.weight", "tok_embeddings.weight"):
            address = ck.weights[key].shards[rank].data_ptr()
            assert any(start <= address < end for start, end in regions), (
                f"{key} of shard {rank} is not mapped from {path}"
            )

    def refuse(self):
        raise AssertionError("the forward pass merged a sharded weight")

    monkeypatch.setattr(llama3.StoredWeight, "merged", refuse)
    llama3.forward(ck.weights, ck.config, demo_prompt)


@pytest.mark.parametrize("key", ["layers.0.attention.wq.weight", "layers.0.feed_forward.w1.weight", "output.weight"])
def test_column_parallel_products_are_bit_equal(demo, demo_shards, demo_prompt, key):
    ck = llama3.load_checkpoint(demo_shards / "demo-2")
    x = torch.randn(len(demo_prompt), demo.config.dim, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert torch.equal(x @ ck.weights[key].T, x @ demo.weights[key].T)


def test_row_parallel_products_are_partial_sums(demo, demo_shards, demo_prompt):
    ck = llama3.load_checkpoint(demo_shards / "demo-2")
    wo = ck.weights["layers.0.attention.wo.weight"]
    assert wo.split_dim == 1
    x = torch.randn(len(demo_prompt), demo.config.dim, generator=torch.Generator().manual_seed(1)).bfloat16()
    half = demo.config.dim // 2
    partials = (x[:, :half] @ wo.shards[0].T).float() + (x[:, half:] @ wo.shards[1].T).float()
    assert torch.equal(x @ wo.T, partials.bfloat16())
    merged = x @ demo.weights["layers.0.attention.wo.weight"].T
    # three roundings to bfloat16 (two partials, their sum) of at most half a step each
    scale = max(partials.abs().max().item(), merged.float().abs().max().item())
    assert (merged.float() - (x @ wo.T).float()).abs().max().item() <= 3 * 2**-8 * scale


def test_embedding_rows_come_from_the_shard_holding_each_token(demo, demo_shards):
    ck = llama3.load_checkpoint(demo_shards / "demo-4")
    ids = [0, 1, 32063, 32064, 64127, 64128, 128255, 2983]  # both sides of each shard's boundary
    assert torch.equal(
        llama3.embed(ck.weights["tok_embeddings.weight"], ids), llama3.embed(demo.weights["tok_embeddings.weight"], ids)
    )


def test_more_shards_than_kv_heads_duplicates_them_as_405b_mp16(demo, demo_shards):
    ck = llama3.load_checkpoint(demo_shards / "demo-4")
    assert ck.config.n_kv_heads == 4 and demo.config.n_kv_heads == 2
    assert llama3.kv_head_copies(ck.weights, ck.config) == 2
    assert llama3.kv_head_copies(demo.weights, demo.config) == 1
    two = llama3.load_checkpoint(demo_shards / "demo-2")
    assert llama3.kv_head_copies(two.weights, two.config) == 1


def test_sharded_params_are_metas():
    from llama_models.sku_list import resolve_model

    for name, meta_name in [
        ("Llama 3 70B", "Llama-3-70B"),
        ("Llama 3.1 405B", "Llama3.1-405B"),
        ("Llama 3.1 405B mp16", "Llama3.1-405B:bf16-mp16"),
    ]:
        model = resolve_model(meta_name)
        assert llama3.SHARDED_PARAMS[name] == model.arch_args
        assert llama3.SHARD_COUNTS[name] == model.pth_file_count


def test_split_dims_follow_metas_parallel_layers():
    """Which weight Meta's model makes a ColumnParallelLinear, a RowParallelLinear or a VocabParallelEmbedding."""
    import inspect

    from llama_models.llama3 import model as meta_model

    source = inspect.getsource(meta_model)
    keys = {
        "wq": "layers.0.attention.wq.weight", "wk": "layers.0.attention.wk.weight", "wv": "layers.0.attention.wv.weight",
        "wo": "layers.0.attention.wo.weight", "w1": "layers.0.feed_forward.w1.weight",
        "w3": "layers.0.feed_forward.w3.weight", "w2": "layers.0.feed_forward.w2.weight", "output": "output.weight",
    }  # fmt: skip
    for name, key in keys.items():
        layer_class = "ColumnParallelLinear" if llama3.split_dim_of(key) == 0 else "RowParallelLinear"
        assert f"self.{name} = {layer_class}(" in source, f"{name} is not a {layer_class} in Meta's model"
    assert "self.tok_embeddings = VocabParallelEmbedding(" in source
    assert llama3.split_dim_of("tok_embeddings.weight") == 0  # a vocabulary split: dim 0
    for key in ("layers.0.attention_norm.weight", "layers.0.ffn_norm.weight", "norm.weight"):
        assert llama3.split_dim_of(key) is None


# --- bad input ---------------------------------------------------------------------------------------


@pytest.fixture
def four_shards(demo_shards, tmp_path):
    target = tmp_path / "demo-4"
    shutil.copytree(demo_shards / "demo-4", target)
    return target


def expect_error(path, *fragments):
    with pytest.raises(llama3.CheckpointError) as info:
        llama3.load_checkpoint(path)
    for fragment in fragments:
        assert str(fragment) in str(info.value), f"{fragment!r} not in {info.value}"


def test_a_missing_shard_is_named(four_shards):
    (four_shards / "consolidated.01.pth").unlink()
    expect_error(four_shards, four_shards / "consolidated.01.pth", "is missing", "Download the missing shard")


def test_a_missing_last_shard_is_caught_by_the_shapes(four_shards):
    (four_shards / "consolidated.03.pth").unlink()  # 3 shards left: 4 heads do not divide over them
    expect_error(four_shards, "3 shards", "do not divide", "no shard is missing")


def test_a_shard_of_another_model_is_named(demo, four_shards, tmp_path):
    other = tmp_path / "other"
    weights = {k: (w + 0.5 if k.endswith("norm.weight") else w) for k, w in demo.weights.items()}
    llama3.reshard(
        llama3.Checkpoint(demo.path, demo.config, weights, demo.tokenizer, "meta", demo.files, demo.tokenizer_file),
        other,
        4,
    )
    shutil.copy(other / "consolidated.02.pth", four_shards / "consolidated.02.pth")
    expect_error(four_shards, four_shards / "consolidated.02.pth", "not from the same model")


def test_a_shard_of_another_size_is_named(demo, four_shards, demo_shards):
    shutil.copy(demo_shards / "demo-2" / "consolidated.01.pth", four_shards / "consolidated.01.pth")
    expect_error(four_shards, four_shards / "consolidated.01.pth", "has shape", "4 shards")


def test_a_truncated_shard_is_named(four_shards):
    path = four_shards / "consolidated.02.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(four_shards, path, "truncated or corrupt")


def test_a_shard_count_that_does_not_divide_the_heads_is_refused(demo, tmp_path):
    with pytest.raises(llama3.CheckpointError, match="cannot split 4 query heads"):
        llama3.reshard(demo, tmp_path / "three", 3)
    with pytest.raises(llama3.CheckpointError, match="cannot split 4 query heads"):
        llama3.reshard(demo, tmp_path / "eight", 8)  # the demo has 4 query heads


def test_params_that_do_not_divide_over_the_shards(four_shards):
    params = json.loads((four_shards / "params.json").read_text())
    params["n_kv_heads"] = 2  # as if the duplicated heads were not declared
    (four_shards / "params.json").write_text(json.dumps(params))
    expect_error(four_shards, "do not divide")


def test_a_hugging_face_folder_without_weights_points_at_original(tmp_path, demo):
    (tmp_path / "original").mkdir()
    for name in ("params.json", "tokenizer.model"):
        shutil.copy(demo.path / name, tmp_path / "original" / name)
    (tmp_path / "config.json").write_text("{}")
    expect_error(tmp_path, tmp_path / "original")


def test_pickled_hugging_face_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    expect_error(tmp_path, "pickles", "safetensors")


# --- both yardsticks on every layout ----------------------------------------------------------------


@pytest.fixture(scope="module")
def layouts_of(random_checkpoints, tmp_path_factory):
    """name -> {layout: folder} for the demo and every parity preset: Meta's single file, Hugging Face's
    layout in one file and in several, and Meta's shards where 2 divides the query heads."""
    root = tmp_path_factory.mktemp("yardsticks")
    folders = {}
    for name, meta_dir in {"demo": llama3.DEMO_DIR, **random_checkpoints}.items():
        ck = llama3.load_checkpoint(meta_dir, device="cpu")
        folders[name] = {"meta": meta_dir}
        for layout, shard_bytes in (("hf", None), ("hf-sharded", 1 << 20)):
            folders[name][layout] = llama3.to_hugging_face(ck, root / name / layout, shard_bytes)
        if ck.config.n_heads % 2 == 0:
            llama3.reshard(meta_dir, root / name / "shards", 2)
            folders[name]["shards"] = root / name / "shards"
    return folders


@pytest.mark.parametrize(
    "name", ["demo", "mha", "gqa2", "gqa4", "llama3.1", "llama3.2-tied", "llama3.2-1b-mini", "llama3.2-3b-mini"]
)
def test_every_layout_against_meta_and_transformers(layouts_of, name):
    folders = layouts_of[name]
    meta = llama3.load_checkpoint(folders["meta"])
    ids = llama3.encode_prompt(meta.tokenizer, llama3.DEFAULT_PROMPT, meta.config)
    ours_meta = llama3.forward(meta.weights, meta.config, ids)
    meta_reference = llama3.meta_reference_logits(meta, ids)
    transformers_reference = llama3.transformers_logits(folders["hf"], ids)
    for layout, folder in folders.items():
        ck = llama3.load_checkpoint(folder)
        assert llama3.same_model(ck.config, meta.config) or layout == "shards"  # shards may store kv heads twice
        ours = llama3.forward(ck.weights, ck.config, ids)
        if layout.startswith("hf"):
            assert torch.equal(ours, ours_meta), f"{name} {layout}: not bit-equal to Meta's file"
        assert_logits_match(ours, transformers_reference, meta.config)
        if meta.config.release != "3.2":  # Meta's reference code scales RoPE by 8 for every release (notebook 14)
            assert_logits_match(ours, meta_reference, meta.config)
