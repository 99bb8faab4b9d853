"""Draw images/demo_checkpoint.svg, the README's picture of what the demo checkpoint learned.

Left: the logit lens, the rank of "42" at the last position after the embeddings and after each
layer. Right: the best previous-token, sink, answer-word and induction heads, found with the
module's own scores (notebooks 10, 11 and 15 use the same functions).

    python scripts/demo/draw_demo_figure.py        # needs `make demo` first
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import llama3  # noqa: E402
from llama3 import plots  # noqa: E402

OUT = llama3.REPO_DIR / "images" / "demo_checkpoint.svg"


def main() -> None:
    plt.rcParams["svg.hashsalt"] = "demo"  # stable ids: the same file on every run
    ck = llama3.load_checkpoint(llama3.DEMO_DIR)
    prompt = llama3.encode_prompt(ck.tokenizer, llama3.DEFAULT_PROMPT, ck.config)
    echo = llama3.encode_prompt(ck.tokenizer, llama3.ECHO_PROMPT, ck.config)
    trace = llama3.trace_layers(ck.weights, ck.config, prompt)
    echo_trace = llama3.trace_layers(ck.weights, ck.config, echo)
    answer_positions = llama3.word_positions(ck.tokenizer, prompt, llama3.ANSWER_WORDS)
    panels = [
        ("previous token", trace, prompt, llama3.head_scores(trace, llama3.previous_token_scores)),
        ("sink", trace, prompt, llama3.head_scores(trace, llama3.sink_scores)),
        (
            "last → life, universe",
            trace,
            prompt,
            llama3.head_scores(trace, llama3.attention_from_last, answer_positions),
        ),
        ("induction", echo_trace, echo, llama3.head_scores(echo_trace, llama3.induction_scores, llama3.ECHO_PERIOD)),
    ]
    ranks = llama3.lens_ranks(trace, ck.weights, ck.config, 2983)

    fig, axes = plt.subplots(1, 5, figsize=(20, 4.4), gridspec_kw={"width_ratios": [0.8, 1, 1, 1, 1]})
    ax = axes[0]
    ax.plot(range(len(ranks)), ranks, "o-")
    ax.set_yscale("log")
    ax.set_yticks([1, 10, 100, 1000], ["1", "10", "100", "1000"])
    ax.set_ylim(max(ranks) * 2, 0.7)  # rank 1 at the top
    for layer, rank in enumerate(ranks):
        ax.annotate(str(rank), (layer, rank), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(1, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(ranks)), ["emb"] + [str(i) for i in range(len(ranks) - 1)])
    ax.set_xlabel("after layer")
    ax.set_ylabel("rank of '42' (1 = top)")
    ax.set_title("logit lens at the last position", fontsize=9)
    for ax, (name, t, ids, scores) in zip(axes[1:], panels):
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
        texts = llama3.token_texts(ck.tokenizer, ids)
        title = f"{name}: layer {layer}, head {head} (score {scores.max():.2f})"
        plots.heatmap(ax, t.attention[layer][head], texts, texts, title=title, colorbar=False)
        ax.tick_params(labelsize=6)
    fig.suptitle("The demo checkpoint on the default prompt (induction: on a span said twice)", fontsize=11)
    fig.tight_layout()
    fig.savefig(OUT, metadata={"Date": None})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
