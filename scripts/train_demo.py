"""Train the demo checkpoint: Llama 3 in miniature, on a few sentences written for this project.

The model is the walkthrough's own forward pass (notebooks/llama3.py) at the shape in
scripts/demo_checkpoint/params.json, trained in float32 to predict every next token of
corpus.txt, one line per sequence, each opened by <|begin_of_text|> and closed by
<|end_of_text|>. The loss counts the untrained rows of the vocabulary too (as one logit
that stands for all of them), so the probabilities hold at the full vocabulary. Only the embedding and output rows of the tokens the corpus uses are
trained and saved (trained.pt, bfloat16, a few hundred KB); build_demo_checkpoint.py
expands them into Meta's full file format.

The saved file is committed, so building the checkpoint never needs training: run this
only to change the demo model. Training is deterministic on one machine (fixed seed,
one thread); another machine may round differently, which is why its result is committed.

    python scripts/train_demo.py
"""

import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "notebooks"))
import llama3  # noqa: E402

DEMO = HERE / "demo_checkpoint"
SEED = 3
STEPS = 600
LEARNING_RATE = 3e-3
INIT_STD = 0.02


def reference_tokenizer_path() -> Path:
    import llama_models.llama3

    return Path(llama_models.llama3.__file__).parent / "tokenizer.model"


def training_sequences(tokenizer) -> list[list[int]]:
    bos = tokenizer.encode_single_token("<|begin_of_text|>")
    eos = tokenizer.encode_single_token("<|end_of_text|>")
    lines = [line for line in (DEMO / "corpus.txt").read_text().splitlines() if line.strip()]
    return [[bos] + tokenizer.encode(line) + [eos] for line in lines]


def init_weights(config: llama3.ModelConfig, n_rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    weights = {}
    for key, shape in llama3.expected_shapes(config).items():
        if key in ("tok_embeddings.weight", "output.weight"):
            shape = (n_rows, shape[1])
        if len(shape) == 1:
            weights[key] = torch.ones(shape)
        else:
            weights[key] = torch.randn(shape, generator=gen) * INIT_STD
        weights[key].requires_grad_(True)
    return weights


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)
    config = llama3.ModelConfig.from_params(json.loads((DEMO / "params.json").read_text()))
    tokenizer = llama3.load_tokenizer(reference_tokenizer_path())
    sequences = training_sequences(tokenizer)

    vocab = sorted({t for seq in sequences for t in seq})  # rows the corpus uses
    row_of = {t: i for i, t in enumerate(vocab)}
    compact = [torch.tensor([row_of[t] for t in seq]) for seq in sequences]

    # The trained rows compete in a softmax over all 128256 tokens; the untrained rows' logits
    # stay near 0, so their share is one extra logit of log(number of untrained rows).
    untrained_logit = torch.tensor([math.log(config.vocab_size - len(vocab))])

    def loss_of(seq: torch.Tensor) -> torch.Tensor:
        logits = llama3.forward(weights, config, seq[:-1])
        logits = torch.cat([logits, untrained_logit.expand(len(logits), 1)], dim=1)
        return torch.nn.functional.cross_entropy(logits, seq[1:])

    weights = init_weights(config, len(vocab), gen)
    optimizer = torch.optim.AdamW(weights.values(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)
    started = time.time()
    for step in range(STEPS):
        loss = sum(loss_of(seq) for seq in compact) / len(compact)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == STEPS - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - started:.0f}s")

    trained = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in weights.items()}
    trained["token_ids"] = torch.tensor(vocab, dtype=torch.int64)
    torch.save(trained, DEMO / "trained.pt")
    size = (DEMO / "trained.pt").stat().st_size
    print(f"wrote {DEMO / 'trained.pt'} ({size / 1024:.0f} KiB, {len(vocab)} token rows)")


if __name__ == "__main__":
    main()
