"""Sharded checkpoints (llama3.formats.meta) against Meta's own code.

The yardsticks are Meta's: llama_models.checkpoint.reshard_mp (the function Meta's loader uses to
merge model-parallel shards) must rebuild the single file from our shards; every shard must load
with strict=True into Meta's Transformer built as that rank of an N-way model-parallel run (fairscale
decides each parallel layer's share); llama_models.sku_list gives the shard counts and n_kv_heads of
Meta's sharded releases; and Meta's Transformer run in N processes from the shards gives the logits
of the single-process run on the single file.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llama3
from conftest import PARITY_PRESETS
from llama3.formats.meta import shard_params, shard_shapes, write_meta_shards
from llama3.tools import synthetic

MAKE_CHECKPOINT = Path(__file__).resolve().parent.parent / "scripts" / "checkpoints" / "make_checkpoint.py"

# (preset, shard count) for every count of 2, 4, 8 that divides the preset's query heads (and so, here,
# its vocabulary and FFN: Meta's model accepts them all); some counts make the writer repeat key/value heads.
CASES = [
    (name, n)
    for name in PARITY_PRESETS
    for n in (2, 4, 8)
    if llama3.ModelConfig.from_params(synthetic.PRESETS[name]).n_heads % n == 0
]


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def load_shards(ckpt_dir: Path) -> list[dict[str, torch.Tensor]]:
    paths = sorted(ckpt_dir.glob("consolidated.*.pth"))
    assert [p.name for p in paths] == [f"consolidated.{r:02d}.pth" for r in range(len(paths))]
    return [load(p) for p in paths]


def meta_merge(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Meta's own merge of model-parallel shards into one (what its loader does for a smaller world size)."""
    from llama_models.checkpoint import reshard_mp

    return reshard_mp(shards, size=1, rank=0, repeat_qk_qv=1)


def single_with_output(single: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Llama 3.2-style tied file has no output.weight: Meta's model reads the embedding there."""
    return single if "output.weight" in single else dict(single, **{"output.weight": single["tok_embeddings.weight"]})


def expected_merge(single: dict[str, torch.Tensor], params: dict, written: dict) -> dict[str, torch.Tensor]:
    """The single file as Meta's model with written['n_kv_heads'] needs it: each key/value head repeated
    in place (consecutive copies), so that query head h, which reads key/value head h // (n_heads // n_kv_heads),
    still reads a copy of its own."""
    config = llama3.ModelConfig.from_params(params)
    repeat = written["n_kv_heads"] // config.n_kv_heads
    out = {}
    for key, t in single_with_output(single).items():
        if key.endswith(("attention.wk.weight", "attention.wv.weight")):
            t = t.view(config.n_kv_heads, config.head_dim, -1).repeat_interleave(repeat, dim=0).flatten(0, 1)
        out[key] = t
    return out


@pytest.fixture(scope="module")
def sharded(random_checkpoints, tmp_path_factory):
    """(preset, N) -> folder of N shards written from the preset's single-file checkpoint."""
    root = tmp_path_factory.mktemp("shards")
    made = {}

    def get(name: str, n: int) -> Path:
        if (name, n) not in made:
            made[name, n] = root / f"{name}-{n}"
            llama3.reshard(random_checkpoints[name], made[name, n], n)
        return made[name, n]

    return get


@pytest.mark.parametrize("name,n", CASES)
def test_meta_merge_rebuilds_the_single_file(random_checkpoints, sharded, name, n):
    src = random_checkpoints[name]
    single, params = load(src / "consolidated.00.pth"), json.loads((src / "params.json").read_text())
    out = sharded(name, n)
    written = json.loads((out / "params.json").read_text())
    config = llama3.ModelConfig.from_params(params)
    # Each of the N ranks of Meta's model holds n_kv_heads // N whole key/value heads, so the file needs
    # the fewest consecutive copies of every head that N divides (405B: 8 heads, 16 ranks, 16 heads).
    kv_heads = next(k for k in range(config.n_kv_heads, config.n_heads + 1, config.n_kv_heads) if k % n == 0)
    assert written == dict(params, n_kv_heads=kv_heads)
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()

    shards = load_shards(out)
    assert len(shards) == n
    meta_order = list(llama3.expected_shapes(llama3.ModelConfig.from_params(written)))  # output.weight included
    for shard in shards:
        assert list(shard) == meta_order
        assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in shard.values())
        assert len({t.untyped_storage().data_ptr() for t in shard.values()}) == len(shard)  # one storage each
    merged = meta_merge(shards)
    want = expected_merge(single, params, written)
    assert merged.keys() == want.keys()
    for key in want:
        assert torch.equal(merged[key], want[key]), key


@pytest.fixture
def fake_model_parallel(monkeypatch):
    """Make fairscale report (world size, rank) without starting processes, so that Meta's Transformer
    builds rank r's share of every parallel layer. Building needs no communication."""
    import fairscale.nn.model_parallel.initialize as fs_init
    import fairscale.nn.model_parallel.layers as fs_layers

    def set_rank(world_size: int, rank: int) -> None:
        for module in (fs_init, fs_layers):
            monkeypatch.setattr(module, "get_model_parallel_world_size", lambda: world_size)
            monkeypatch.setattr(module, "get_model_parallel_rank", lambda: rank)

    return set_rank


def meta_model_for_rank(params: dict, fake_model_parallel, world_size: int, rank: int):
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    fake_model_parallel(world_size, rank)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return Transformer(ModelArgs(max_seq_len=8, max_batch_size=1, **params))
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("name,n", CASES)
def test_each_shard_loads_strictly_into_meta_rank(sharded, fake_model_parallel, name, n):
    out = sharded(name, n)
    params = json.loads((out / "params.json").read_text())
    for rank, shard in enumerate(load_shards(out)):
        model = meta_model_for_rank(params, fake_model_parallel, n, rank)
        model.load_state_dict(shard, strict=True)  # the keys, and every shape fairscale gave this rank


REPEATING = [(name, n) for name, n in CASES if llama3.ModelConfig.from_params(synthetic.PRESETS[name]).n_kv_heads % n]


@pytest.mark.parametrize("name,n", REPEATING)
def test_repeated_kv_heads_keep_each_query_head_on_its_own(random_checkpoints, sharded, fake_model_parallel, name, n):
    src = random_checkpoints[name]
    single, params = load(src / "consolidated.00.pth"), json.loads((src / "params.json").read_text())
    config = llama3.ModelConfig.from_params(params)
    out = sharded(name, n)
    written = json.loads((out / "params.json").read_text())
    assert written["n_kv_heads"] > config.n_kv_heads
    shards = load_shards(out)
    copies = n // config.n_kv_heads  # when N is a multiple: consecutive ranks hold the same key/value head
    for rank in range(n if copies else 0):
        for key in ("layers.0.attention.wk.weight", "layers.1.attention.wv.weight"):
            same = torch.equal(shards[rank][key], shards[rank - rank % copies][key])
            other = torch.equal(shards[rank][key], shards[(rank + copies) % n][key])  # the next head's ranks
            assert same and (config.n_kv_heads == 1 or not other), (rank, key)
    # Query head h of the single file reads key/value head h // queries_per_kv_head. In Meta's model
    # for rank r, local query head i is global head r * n_local_heads + i and reads local key/value
    # head i // n_rep: it must hold the same rows.
    hd = config.head_dim
    for rank in range(n):
        attention = meta_model_for_rank(written, fake_model_parallel, n, rank).layers[0].attention
        for i in range(attention.n_local_heads):
            h = rank * attention.n_local_heads + i
            kv_local, kv_single = i // attention.n_rep, h // config.queries_per_kv_head
            for w in ("wk", "wv"):
                got = shards[rank][f"layers.0.attention.{w}.weight"][kv_local * hd : (kv_local + 1) * hd]
                want = single[f"layers.0.attention.{w}.weight"][kv_single * hd : (kv_single + 1) * hd]
                assert torch.equal(got, want), (rank, i, w)


def test_shard_counts_and_kv_heads_of_metas_releases():
    """Meta's sharded Llama 3 releases (llama_models.sku_list): their params.json is what the writer
    gives for their file count, and Llama 3.1 405B's 8 key/value heads become the mp16 release's 16."""
    from llama_models.sku_list import resolve_model

    releases = [
        "Llama-3-70B",
        "Llama3.1-70B",
        "Llama3.3-70B-Instruct",
        "Llama3.1-405B:bf16-mp8",
        "Llama3.1-405B:bf16-mp16",
    ]
    for descriptor in releases:
        model = resolve_model(descriptor)
        assert model.pth_file_count > 1
        mp8 = dict(resolve_model("Llama3.1-405B:bf16-mp8").arch_args) if descriptor.endswith("mp16") else None
        base = mp8 if mp8 else dict(model.arch_args)
        assert shard_params(base, model.pth_file_count) == dict(model.arch_args), descriptor
    assert resolve_model("Llama3.1-405B:bf16-mp16").pth_file_count == 16


@pytest.mark.parametrize("descriptor", ["Llama3.1-70B", "Llama3.1-405B:bf16-mp16"])
def test_shard_shapes_at_full_size_are_metas(fake_model_parallel, monkeypatch, descriptor):
    """Rank 0 and the last rank of Meta's Transformer at 70B (8 ranks) and 405B mp16 (16 ranks): every
    tensor the rank holds has the shape its file gets. The weights are allocated but never written
    (fairscale's initialisation skipped), so this costs address space, not memory."""
    import fairscale.nn.model_parallel.layers as fs_layers
    from llama_models.sku_list import resolve_model

    model = resolve_model(descriptor)
    n = model.pth_file_count
    base = resolve_model("Llama3.1-405B:bf16-mp8").arch_args if descriptor.endswith("mp16") else model.arch_args
    monkeypatch.setattr(fs_layers, "_initialize_affine_weight", lambda *args, **kwargs: None)
    for rank in (0, n - 1):
        meta = meta_model_for_rank(dict(model.arch_args), fake_model_parallel, n, rank)
        assert {k: tuple(t.shape) for k, t in meta.state_dict().items()} == shard_shapes(dict(base), n)
        del meta


@pytest.mark.parametrize("name,n", [("gqa4", 3), ("gqa2", 4), ("mha", 8)])
def test_refuses_a_count_that_does_not_divide_the_heads(random_checkpoints, tmp_path, name, n):
    with pytest.raises(llama3.CheckpointError, match=f"query heads into {n} shards"):
        llama3.reshard(random_checkpoints[name], tmp_path / "out", n)
    assert not list(tmp_path.glob("out/*"))
    run = subprocess.run(
        [sys.executable, str(MAKE_CHECKPOINT), str(tmp_path / "cli"), "--preset", name, "--shards", str(n)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"into {n} shards" in run.stderr and "Choose a shard count that divides" in run.stderr


def test_refuses_stale_shards(sharded, tmp_path):
    with pytest.raises(llama3.CheckpointError, match="consolidated.03.pth"):  # readers would count 4 shards
        llama3.reshard(llama3.DEMO_DIR, sharded("gqa4", 4), 2)


@pytest.mark.parametrize("n", [2, 4])
def test_demo_in_shards_is_the_single_file(demo, demo_shards, n):
    shards_dir = demo_shards / f"demo-{n}"
    written = json.loads((shards_dir / "params.json").read_text())
    single = load(llama3.DEMO_DIR / "consolidated.00.pth")
    params = json.loads((llama3.DEMO_DIR / "params.json").read_text())
    merged = meta_merge(load_shards(shards_dir))
    want = expected_merge(single, params, written)
    assert all(torch.equal(merged[k], want[k]) for k in want)
    if n <= demo.config.n_kv_heads:  # nothing repeated: Meta's own split of the file gives the same shards
        from llama_models.checkpoint import reshard_mp

        for rank, shard in enumerate(load_shards(shards_dir)):
            metas = reshard_mp([single], size=n, rank=rank, repeat_qk_qv=1)
            assert all(torch.equal(shard[k], metas[k]) for k in single)


def test_random_shards_are_the_random_single_file_split(tmp_path):
    """--shards N with a preset draws the same numbers as the single file with the same seed."""
    subprocess.run(
        [
            sys.executable,
            str(MAKE_CHECKPOINT),
            str(tmp_path / "sharded"),
            "--preset",
            "llama3.2-tied",
            "--shards",
            "4",
            "--seed",
            "5",
            "--embedding-scale",
            "4",
        ],
        check=True,
        capture_output=True,
    )
    single_dir = synthetic.write_checkpoint(
        tmp_path / "single", synthetic.PRESETS["llama3.2-tied"], seed=5, embedding_scale=4.0, tied=True
    )
    single = load(single_dir / "consolidated.00.pth")
    params = json.loads((single_dir / "params.json").read_text())
    written = json.loads((tmp_path / "sharded/params.json").read_text())
    merged, want = meta_merge(load_shards(tmp_path / "sharded")), expected_merge(single, params, written)
    assert merged.keys() == want.keys() and all(torch.equal(merged[k], want[k]) for k in want)


def test_one_shard_is_a_copy_with_metas_output(random_checkpoints, tmp_path):
    src = random_checkpoints["llama3.2-tied"]
    single = load(src / "consolidated.00.pth")
    assert "output.weight" not in single
    write_meta_shards(single, json.loads((src / "params.json").read_text()), tmp_path, 1, src / "tokenizer.model")
    (copy,) = load_shards(tmp_path)
    assert copy.keys() == single.keys() | {"output.weight"}
    assert all(torch.equal(copy[k], t) for k, t in single_with_output(single).items())


def assert_logits_match_model_parallel(ours: torch.Tensor, reference: torch.Tensor, config, n: int) -> None:
    """Tolerance: in N processes a row-parallel layer (wo, w2) rounds each rank's partial sum to bfloat16
    and adds the N partials in bfloat16 (one rounding per addition), where one process adds in float32
    and rounds once: up to about N bfloat16 steps of the output instead of one. So N times
    llama3.logits_tolerance, whose argument counts one step per matmul; the column-parallel layers and
    the embedding only gather or add zeros, which is exact. Measured with 2, 4 and 8 processes on the
    demo and on random gqa4 and llama3.2-1b-mini checkpoints (embedding scales 4, 1 and 0.02, weight
    std 1/sqrt(fan_in) and 0.02, five seeds): at most 0.30 of logits_tolerance, 0.13 of this bound."""
    rel_tolerance = n * llama3.logits_tolerance(config)
    for position, (a, b) in enumerate(zip(ours, reference)):
        diff, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert diff <= rel_tolerance * scale, f"position {position}: max |diff| {diff} > {rel_tolerance} * {scale}"
        assert llama3.same_prediction(a, b, rel_tolerance), f"position {position}: top-1 differs beyond a tie"


@pytest.mark.parametrize("n", [2, 4])
def test_meta_model_parallel_from_shards_gives_the_single_process_logits(demo, demo_shards, tmp_path, n):
    """Meta's Transformer in N processes (gloo), each rank loading its own file with Meta's loader and
    strict=True, against Meta's Transformer in one process on the single file. With 4 shards the demo's
    2 key/value heads are each repeated on two ranks."""
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.DEFAULT_PROMPT, demo.config)
    from test_tensor_parallel import meta_reference  # llama3.tools.tp_reference under torchrun

    parallel = meta_reference(demo_shards / f"demo-{n}", n, tmp_path / "meta.pt")
    single = llama3.meta_reference_logits(demo, token_ids)
    assert_logits_match_model_parallel(parallel, single, demo.config, n)
    assert int(parallel[-1].argmax()) == 2983  # "42"
