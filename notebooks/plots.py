"""Figure helpers shared by the notebooks: each draws onto a matplotlib Axes it is given."""

import matplotlib.pyplot as plt
import torch


def token_labels(texts: list[str]) -> list[str]:
    """Token texts made visible as axis labels: spaces as '·', newlines as '\\n'."""
    return [t.replace(" ", "·").replace("\n", "\\n") or "∅" for t in texts]


def heatmap(ax, matrix: torch.Tensor, row_labels=None, col_labels=None, title="", cmap="viridis", colorbar=True):
    """A [rows, cols] matrix with token labels; -inf cells (masked) are drawn blank."""
    values = matrix.detach().float().clone()
    values[torch.isinf(values)] = float("nan")
    image = ax.imshow(values.numpy(), cmap=cmap, aspect="auto")
    if row_labels is not None:
        ax.set_yticks(range(len(row_labels)), token_labels(row_labels), fontsize=7)
    if col_labels is not None:
        ax.set_xticks(range(len(col_labels)), token_labels(col_labels), fontsize=7, rotation=90)
    ax.set_title(title, fontsize=9)
    if colorbar:
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


def rms_bars(ax, series: dict, tokens: list[str], colors=None):
    """Grouped bars: for each token, the RMS of its vector in each [tokens, dim] tensor of `series`."""
    positions = torch.arange(len(tokens))
    width = 0.8 / len(series)
    for k, (label, t) in enumerate(series.items()):
        rms = t.float().pow(2).mean(-1).sqrt()
        offset = (k - (len(series) - 1) / 2) * width
        color = colors[k] if colors else None
        ax.bar(positions + offset, rms.numpy(), width, label=label, color=color)
    ax.set_xticks(positions.tolist(), token_labels(tokens), rotation=90, fontsize=8)
    ax.set_ylabel("RMS over dim")
