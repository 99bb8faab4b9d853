"""Build the demo checkpoint in Meta's original layout from the committed trained parameters.

Writes build/llama3-demo/{consolidated.00.pth, params.json, tokenizer.model}:
- the layers and norms from scripts/demo/trained/trained.pt (see train_demo.py);
- tok_embeddings and output at the full vocabulary of 128256: the rows of the tokens the
  corpus uses come from training, every other row stays at its initial random value (numpy's
  legacy generator, whose stream is fixed across platforms and versions);
- Meta's tokenizer.model from the llama-models package, checked against its sha256.
The result is byte-identical on every machine; scripts/demo/trained/consolidated.sha256
records the expected digest and the tests check it.

    python scripts/demo/build_demo_checkpoint.py [--out DIR]
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import llama3
from llama3.tools.train_demo import DEMO, demo_config, full_weights


def demo_weights() -> dict[str, torch.Tensor]:
    config = demo_config()
    trained = torch.load(DEMO / "trained.pt", map_location="cpu", weights_only=True)
    weights = full_weights(trained, trained.pop("token_ids"), config)
    for key, shape in llama3.expected_shapes(config).items():
        assert tuple(weights[key].shape) == shape, key
    return weights


def build(out: Path) -> Path:
    tokenizer = llama3.meta_tokenizer_model()
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
