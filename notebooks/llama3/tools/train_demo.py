"""Train the demo checkpoint: Llama 3 in miniature, on text generated for this project.

The model is the walkthrough's own forward pass (the package notebooks/llama3) at the shape in
scripts/demo/trained/params.json, trained in float32 to predict every next token of
sequences from demo_corpus.py (questions whose answer depends on two words far back,
and spans said twice). The loss counts the untrained rows of the vocabulary too (as one
logit that stands for all of them), so the probabilities hold at the full vocabulary. Only
the embedding and output rows of the tokens the corpus uses are trained and saved
(trained.pt, bfloat16); build_demo_checkpoint.py expands them into Meta's full file format.

Every LOG_EVERY steps the script builds the checkpoint in memory and measures, with the
module's own functions, what notebooks 10, 11 and 15 show: the loss, the logit lens of "42"
on the default prompt, and the best previous-token, sink, answer-word and induction heads.
These go to training_log.json (a few KB), which notebook 15 plots.

The saved files are committed, so building the checkpoint never needs training: run this
only to change the demo model. Training is deterministic on one machine (fixed seed, one
thread); another machine may round differently, which is why its result is committed.

    python scripts/demo/train_demo.py [--seed N] [--out DIR]
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

import llama3
from llama3.tools import demo_corpus

DEMO = llama3.REPO_DIR / "scripts" / "demo" / "trained"  # the committed result of training
SEED = 0
STEPS = 2400
BATCH = 24
SEQ_LEN = 64
LEARNING_RATE = 3e-3
WARMUP = 100
INIT_STD = 0.02
LOG_EVERY = 100
REPLAY_STEPS = 30  # losses saved one by one, for notebook 15 to replay
ANSWER_ID = 2983  # "42"


def demo_config() -> llama3.ModelConfig:
    return llama3.ModelConfig.from_params(json.loads((DEMO / "params.json").read_text()))


def corpus_token_ids(tokenizer) -> list[int]:
    """Every token the corpus can use: <|begin_of_text|>, the words, the numbers, the punctuation."""
    words = demo_corpus.ECHO_WORDS + ["say"]
    numbers = [str(n) for n in demo_corpus.answer_table().values()]
    pieces = ["the", "say", ",", " ", ".", ".\n", "\n"] + [" " + w for w in words] + numbers
    ids = {tokenizer.encode_single_token("<|begin_of_text|>")}
    for piece in pieces:
        ids |= set(tokenizer.encode(piece))
    return sorted(ids)


def training_batch(rng: random.Random, tokenizer, table) -> list[list[int]]:
    """BATCH sequences of SEQ_LEN + 1 tokens, each <|begin_of_text|> and then corpus lines."""
    bos = tokenizer.encode_single_token("<|begin_of_text|>")
    batch = []
    for _ in range(BATCH):
        text = demo_corpus.sequence_text(rng, table, min_chars=6 * SEQ_LEN)
        ids = [bos] + tokenizer.encode(text)
        while len(ids) < SEQ_LEN + 1:  # rare: many short words
            text += "\n" + demo_corpus.random_line(rng, table)
            ids = [bos] + tokenizer.encode(text)
        batch.append(ids[: SEQ_LEN + 1])
    return batch


def untrained_rows(n_rows: int, dim: int, stream: int, seed: int = SEED) -> torch.Tensor:
    """The embedding/output rows training never touches: numpy's legacy generator, fixed across platforms."""
    rows = np.random.RandomState(seed * 1000 + stream).standard_normal((n_rows, dim)) * INIT_STD
    return torch.from_numpy(rows.astype(np.float32)).to(torch.bfloat16)


def init_weights(config: llama3.ModelConfig, n_rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """float32 weights in Meta's key order; embedding and output have only the corpus's n_rows rows."""
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


def full_weights(trained: dict[str, torch.Tensor], token_ids: torch.Tensor, config, seed: int = SEED):
    """Meta's full bfloat16 tensors: the trained rows in place, every other row at its initial value."""
    weights = {}
    for stream, (key, shape) in enumerate(llama3.expected_shapes(config).items()):
        value = trained[key].detach().to(torch.bfloat16)
        if key in ("tok_embeddings.weight", "output.weight"):
            full = untrained_rows(*shape, stream=stream, seed=seed)
            full[token_ids] = value
            value = full
        weights[key] = value.contiguous()
    return weights


def behaviour(weights, config, tokenizer) -> dict:
    """What the notebooks measure, on the bfloat16 checkpoint: the numbers the tests check."""
    prompt = llama3.encode_prompt(tokenizer, llama3.DEFAULT_PROMPT, config)
    trace = llama3.trace_layers(weights, config, prompt)
    probs = torch.softmax(llama3.logit_lens(trace.residuals[-1][-1:], weights, config)[0], -1)
    ranks = llama3.lens_ranks(trace, weights, config, ANSWER_ID)
    answer_positions = llama3.word_positions(tokenizer, prompt, llama3.ANSWER_WORDS)
    echo = llama3.encode_prompt(tokenizer, llama3.ECHO_PROMPT, config)
    echo_trace = llama3.trace_layers(weights, config, echo)
    echo_logits = llama3.logit_lens(echo_trace.residuals[-1], weights, config)
    return {
        "p_42": round(float(probs[ANSWER_ID]), 4),
        "lens_ranks_42": ranks,
        "first_top1_42": llama3.first_top1(ranks),
        "previous_token": round(float(llama3.head_scores(trace, llama3.previous_token_scores).max()), 4),
        "sink": round(float(llama3.head_scores(trace, llama3.sink_scores).max()), 4),
        "answer_words": round(float(llama3.head_scores(trace, llama3.attention_from_last, answer_positions).max()), 4),
        "induction": round(float(llama3.head_scores(echo_trace, llama3.induction_scores, llama3.ECHO_PERIOD).max()), 4),
        "copy_accuracy": round(llama3.copy_accuracy(echo_logits, echo, llama3.ECHO_PERIOD), 4),
    }


def meets_targets(b: dict, config) -> bool:
    """The issue's targets (tests/test_demo_behaviour.py checks them on the built file)."""
    return (
        b["p_42"] >= 0.5
        and min(b["lens_ranks_42"][:2]) > 10
        and b["first_top1_42"] is not None
        and b["first_top1_42"] >= config.n_layers / 2
        and b["previous_token"] >= 0.5
        and b["sink"] >= 0.5
        and b["answer_words"] >= 0.5
        and b["induction"] >= 0.5
        and b["copy_accuracy"] >= 0.9
    )


class TrainingRun:
    """Everything one training run holds: the compact weights, AdamW and its schedule, the corpus's rng.

    Built from the seed alone, so the first steps of the committed run can be replayed (notebook 15).
    """

    def __init__(self, seed: int = SEED):
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        self.config = demo_config()
        self.tokenizer = llama3.load_tokenizer(llama3.meta_tokenizer_model())
        self.table = demo_corpus.answer_table()
        vocab = corpus_token_ids(self.tokenizer)
        self.row_of = torch.full((self.config.vocab_size,), -1, dtype=torch.long)
        self.row_of[vocab] = torch.arange(len(vocab))
        self.token_ids = torch.tensor(vocab, dtype=torch.int64)
        # The trained rows compete in a softmax over all 128256 tokens; the untrained rows' logits
        # stay near 0, so their share is one extra logit of log(number of untrained rows).
        self.untrained_logit = math.log(self.config.vocab_size - len(vocab))
        self.weights = init_weights(self.config, len(vocab), gen)
        self.optimizer = torch.optim.AdamW(self.weights.values(), lr=LEARNING_RATE, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS))
        )

    def next_batch(self) -> torch.Tensor:
        """[BATCH, SEQ_LEN + 1] row indices into the compact embedding/output matrices."""
        batch = self.row_of[torch.tensor(training_batch(self.rng, self.tokenizer, self.table))]
        assert (batch >= 0).all(), "a corpus token has no trained row: extend corpus_token_ids"
        return batch

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """llama3.forward on every sequence of the batch: [B, T] -> [B, T, trained rows + 1 for the rest]."""
        logits = torch.func.vmap(lambda ids: llama3.forward(self.weights, self.config, ids))(batch)
        return torch.cat([logits, torch.full((*logits.shape[:2], 1), self.untrained_logit)], dim=-1)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the next token at every position of every sequence."""
        logits = self.logits(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    def step(self) -> float:
        """One AdamW step on a fresh batch; returns the loss before it."""
        loss = self.loss(self.next_batch())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.item()

    def checkpoint(self) -> dict[str, torch.Tensor]:
        """The full bfloat16 checkpoint these weights would build into."""
        return full_weights(self.weights, self.token_ids, self.config, self.seed)


def compact_log(log: dict) -> dict:
    """The log as saved (a few KB): the first REPLAY_STEPS losses, then the mean loss of every 10 steps."""
    losses = log.pop("loss")
    log["first_losses"] = losses[:REPLAY_STEPS]
    log["mean_loss_per_10_steps"] = [
        round(sum(losses[i : i + 10]) / len(losses[i : i + 10]), 4) for i in range(0, len(losses), 10)
    ]
    return log


def train(seed: int, out: Path) -> dict:
    run = TrainingRun(seed)
    log = {"seed": seed, "steps": STEPS, "batch": BATCH, "seq_len": SEQ_LEN, "learning_rate": LEARNING_RATE,
           "loss": [], "checkpoints": []}  # fmt: skip
    started, cpu_started = time.time(), time.process_time()
    for step in range(STEPS + 1):
        if step % LOG_EVERY == 0 or step == STEPS:
            with torch.no_grad():
                b = behaviour(run.checkpoint(), run.config, run.tokenizer)
            log["checkpoints"].append({"step": step, **b})
            print(f"step {step:5d}  {time.time() - started:5.0f}s  {json.dumps(b)}", flush=True)
        if step < STEPS:
            log["loss"].append(round(run.step(), 4))
    log["wall_seconds"] = round(time.time() - started)
    log["cpu_seconds"] = round(time.process_time() - cpu_started)
    log["meets_targets"] = meets_targets(log["checkpoints"][-1], run.config)

    out.mkdir(parents=True, exist_ok=True)
    trained = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in run.weights.items()}
    trained["token_ids"] = run.token_ids
    torch.save(trained, out / "trained.pt")
    (out / "training_log.json").write_text(json.dumps(compact_log(log), separators=(",", ":")) + "\n")
    size = (out / "trained.pt").stat().st_size
    print(f"seed {seed}: wrote {out / 'trained.pt'} ({size / 1024:.0f} KiB, {len(run.token_ids)} token rows), "
          f"{log['wall_seconds']}s wall, {log['cpu_seconds']}s CPU, meets targets: {log['meets_targets']}")  # fmt: skip
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DEMO)
    args = parser.parse_args()
    train(args.seed, args.out)


if __name__ == "__main__":
    main()
