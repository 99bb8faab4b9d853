"""Bad input ends in one clear message naming the path (or the prompt) and the fix."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import llama3

REPO = llama3.REPO_DIR


@pytest.fixture
def good_dir(demo, tmp_path):
    """A copy of the demo checkpoint to break."""
    target = tmp_path / "llama3"
    shutil.copytree(demo.path, target)
    return target


def expect_error(path, *fragments, error=llama3.CheckpointError):
    with pytest.raises(error) as info:
        llama3.load_checkpoint(path)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nowhere", tmp_path / "nowhere", "Point LLAMA3_DIR at a folder")


def test_missing_demo_checkpoint_says_how_to_build_it(monkeypatch, tmp_path):
    for module in (llama3.config, llama3.checkpoint):  # checkpoint_dir's default and checkpoint_layout's test
        monkeypatch.setattr(module, "DEMO_DIR", tmp_path / "llama3-demo")
    monkeypatch.delenv("LLAMA3_DIR", raising=False)
    expect_error(None, "make demo")


@pytest.mark.parametrize("name", ["consolidated.00.pth", "params.json", "tokenizer.model"])
def test_missing_file(good_dir, name):
    (good_dir / name).unlink()
    expect_error(good_dir, good_dir / name, "is missing", "download")


def test_params_not_json(good_dir):
    (good_dir / "params.json").write_text("{dim: 64,")
    expect_error(good_dir, good_dir / "params.json", "not readable JSON", "Download params.json again")


def test_params_missing_keys(good_dir):
    params = json.loads((good_dir / "params.json").read_text())
    del params["n_layers"], params["norm_eps"]
    (good_dir / "params.json").write_text(json.dumps(params))
    expect_error(good_dir, good_dir / "params.json", "n_layers", "norm_eps")


def test_shapes_disagree_with_params(good_dir):
    params = json.loads((good_dir / "params.json").read_text())
    stored = llama3.ModelConfig.from_params(params)
    params["n_kv_heads"] = stored.n_heads  # more key/value heads than the file holds
    (good_dir / "params.json").write_text(json.dumps(params))
    message = expect_error(good_dir, good_dir / "consolidated.00.pth", "layers.0.attention.wk.weight", "same model")
    assert f"[{stored.n_kv_heads * stored.head_dim}, {stored.dim}]" in message  # the file's shape
    assert f"[{stored.n_heads * stored.head_dim}, {stored.dim}]" in message  # what params.json implies


def test_missing_tensor(good_dir):
    params = json.loads((good_dir / "params.json").read_text())
    params["n_layers"] += 1
    (good_dir / "params.json").write_text(json.dumps(params))
    expect_error(good_dir, good_dir / "consolidated.00.pth", "lacks", f"layers.{params['n_layers'] - 1}.")


def test_truncated_checkpoint(good_dir):
    path = good_dir / "consolidated.00.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(good_dir, path, "truncated or corrupt", "fetch it again")


def test_corrupt_checkpoint(good_dir):
    path = good_dir / "consolidated.00.pth"
    path.write_bytes(os.urandom(4096))
    expect_error(good_dir, path, "truncated or corrupt")


def test_checkpoint_holding_code_is_not_unpickled(good_dir, tmp_path):
    marker = tmp_path / "ran"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."  # a pickle that would run a shell command
    import zipfile

    with zipfile.ZipFile(good_dir / "consolidated.00.pth", "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    expect_error(good_dir, good_dir / "consolidated.00.pth")
    assert not marker.exists()


def test_tokenizer_of_another_size_names_what_the_file_holds(good_dir):
    """The count is the file's own: tokenizer.model's ranks, and apart from them the 256 special tokens Llama 3 adds."""
    path = good_dir / "tokenizer.model"
    path.write_text("\n".join(path.read_text().splitlines()[:1000]) + "\n")
    expect_error(good_dir, path, "holds 1000 tokens", "256 special tokens", "1256", "vocab_size is 128256")


def test_tokenizer_json_of_another_model_names_what_it_holds(good_dir, real_model):
    (good_dir / "tokenizer.model").unlink()
    shutil.copy(real_model.tokenizer_file, good_dir / "tokenizer.json")
    message = expect_error(good_dir, good_dir / "tokenizer.json", "holds 49152 tokens", "vocab_size is 128256")
    assert "special tokens" not in message  # a tokenizer.json holds all of its tokens itself


def test_llama2_params(good_dir):
    (good_dir / "params.json").write_text(
        json.dumps({"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 4, "norm_eps": 1e-5, "vocab_size": -1})
    )
    expect_error(good_dir, good_dir / "params.json", "Llama 2", "Llama 3 checkpoint")


def test_llama2_sentencepiece_tokenizer(good_dir):
    # A SentencePiece model is a binary protobuf: field 1 (pieces), bytes, non-UTF-8 scores.
    (good_dir / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02\xff\xfe" * 50)
    expect_error(good_dir, good_dir / "tokenizer.model", "SentencePiece", "Llama 3 checkpoint")


def test_hugging_face_files_without_their_index(tmp_path, demo):
    hf = tmp_path / "Meta-Llama-3-8B"
    hf.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(llama3.DEMO_HF_DIR / name, hf / name)
    (hf / "model-00001-of-00004.safetensors").write_bytes(b"")
    expect_error(hf, hf / "model.safetensors.index.json", "is missing")


def test_hugging_face_config_of_another_model(tmp_path):
    hf = tmp_path / "Mistral-7B"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    (hf / "tokenizer.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    expect_error(hf, hf / "config.json", "not describe a Llama model")


def test_a_whole_file_beside_it_is_not_a_shard(good_dir):
    shutil.copyfile(good_dir / "consolidated.00.pth", good_dir / "consolidated.01.pth")
    expect_error(good_dir, good_dir / "consolidated.00.pth", "2 shards", "has shape")


def test_empty_prompt(demo):
    for prompt in ["", "   "]:
        with pytest.raises(llama3.PromptError, match="empty.*LLAMA3_PROMPT"):
            llama3.encode_prompt(demo.tokenizer, prompt, demo.config)


def test_prompt_longer_than_context(demo):
    prompt = "llama " * demo.config.context_length
    with pytest.raises(
        llama3.PromptError, match=f"more than the model's context length of {demo.config.context_length}"
    ):
        llama3.encode_prompt(demo.tokenizer, prompt, demo.config)
    fits = "the" + " the" * (demo.config.context_length - 2)  # one token each
    assert len(llama3.encode_prompt(demo.tokenizer, fits, demo.config)) == demo.config.context_length


def test_jupyter_shows_the_message_not_a_traceback(tmp_path):
    error = llama3.CheckpointError(f"{tmp_path} is not a directory.")
    assert error._render_traceback_() == [f"CheckpointError: {tmp_path} is not a directory."]


def run_notebooks(env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA3_DIR", "LLAMA3_PROMPT")} | env_changes
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run" / "run_notebooks.py")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "env_changes, expected",
    [
        ({"LLAMA3_DIR": "/nonexistent/Meta-Llama-3-8B"}, "/nonexistent/Meta-Llama-3-8B is not a directory"),
        ({"LLAMA3_PROMPT": ""}, "The prompt is empty"),
    ],
)
def test_make_run_stops_with_one_message(env_changes, expected):
    result = run_notebooks(env_changes)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
