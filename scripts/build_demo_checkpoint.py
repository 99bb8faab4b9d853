"""Build the demo checkpoint in Meta's original layout from the committed trained parameters.

Writes build/llama3-demo/{consolidated.00.pth, params.json, tokenizer.model}:
- the layers and norms from scripts/demo_checkpoint/trained.pt (see train_demo.py);
- tok_embeddings and output at the full vocabulary of 128256: the rows of the tokens the
  corpus uses come from training, every other row stays at its initial random value (numpy's
  legacy generator, whose stream is fixed across platforms and versions);
- Meta's tokenizer.model from the llama-models package, checked against its sha256.
The result is byte-identical on every machine; scripts/demo_checkpoint/consolidated.sha256
records the expected digest and the tests check it.

    python scripts/build_demo_checkpoint.py [--out DIR]
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "notebooks"))
import llama3  # noqa: E402
from train_demo import DEMO, INIT_STD, SEED, reference_tokenizer_path  # noqa: E402


def untrained_rows(n_rows: int, dim: int, stream: int) -> torch.Tensor:
    rows = np.random.RandomState(SEED * 1000 + stream).standard_normal((n_rows, dim)) * INIT_STD
    return torch.from_numpy(rows.astype(np.float32)).to(torch.bfloat16)


def demo_weights() -> dict[str, torch.Tensor]:
    config = llama3.ModelConfig.from_params(json.loads((DEMO / "params.json").read_text()))
    trained = torch.load(DEMO / "trained.pt", map_location="cpu", weights_only=True)
    token_ids = trained.pop("token_ids")
    weights = {}
    for stream, (key, shape) in enumerate(llama3.expected_shapes(config).items()):
        if key in ("tok_embeddings.weight", "output.weight"):
            full = untrained_rows(*shape, stream=stream)
            full[token_ids] = trained[key]
            weights[key] = full
        else:
            weights[key] = trained[key]
        assert tuple(weights[key].shape) == shape, key
    return weights


def build(out: Path) -> Path:
    tokenizer = reference_tokenizer_path()
    if llama3.sha256_of(tokenizer) != llama3.META_TOKENIZER_SHA256:
        sys.exit(f"{tokenizer} is not Meta's Llama 3 tokenizer.model (sha256 differs); reinstall llama-models.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    torch.save(demo_weights(), staging / "consolidated.00.pth")
    shutil.copyfile(DEMO / "params.json", staging / "params.json")
    shutil.copyfile(tokenizer, staging / "tokenizer.model")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # appears whole or not at all
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=llama3.DEMO_DIR)
    out = build(parser.parse_args().out)
    digest = llama3.sha256_of(out / "consolidated.00.pth")
    print(f"demo checkpoint: {out}  (consolidated.00.pth sha256 {digest})")


if __name__ == "__main__":
    main()
