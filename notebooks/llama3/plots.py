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


def rms_bars(ax, series: dict, tokens: list[str], colors=None, baseline: float | None = None):
    """Grouped bars: for each token, the RMS of its vector in each [tokens, dim] tensor of `series`.

    On a log axis a bar has no natural start (0 is not on the axis), so pass `baseline`: the bars
    then run from that value (drawn as a line) up or down to each RMS, which a dot marks.
    """
    positions = torch.arange(len(tokens))
    width = 0.8 / len(series)
    bottom = 0.0 if baseline is None else baseline
    for k, (label, t) in enumerate(series.items()):
        rms = t.float().pow(2).mean(-1).sqrt()
        offset = (k - (len(series) - 1) / 2) * width
        color = colors[k] if colors else None
        bars = ax.bar(positions + offset, (rms - bottom).numpy(), width, bottom=bottom, label=label, color=color)
        if baseline is not None:  # a dot at each value, so that a bar too short to see still shows
            ax.plot(positions + offset, rms.numpy(), "o", markersize=3, color=bars.patches[0].get_facecolor())
    if baseline is not None:
        ax.axhline(baseline, color="black", linewidth=0.8)
        ax.use_sticky_edges = False  # leave a margin beyond the baseline too, where the dots may sit
    ax.set_xticks(positions.tolist(), token_labels(tokens), rotation=90, fontsize=8)
    ax.set_ylabel("RMS over dim")


def diverging_heatmap(ax, matrix: torch.Tensor, row_labels=None, col_labels=None, title="", limit=None, colorbar=True):
    """`heatmap` in red (positive) and blue (negative), white at zero: limits -limit..+limit.

    `limit` defaults to the largest |value|; pass one limit to several panels to give them one scale.
    """
    if limit is None:
        limit = max(symmetric_limit(matrix), 1e-30)
    image = heatmap(ax, matrix, row_labels, col_labels, title=title, cmap="RdBu_r", colorbar=colorbar)
    image.set_clim(-limit, limit)
    return image


def symmetric_limit(*matrices: torch.Tensor) -> float:
    """The largest |value| over all the matrices (finite values only): one colour scale centred on zero."""
    return max(m.detach().float().nan_to_num(0, 0, 0).abs().max().item() for m in matrices)


def leading_block(matrix: torch.Tensor, max_rows: int | None = None, max_cols: int | None = None):
    """The top-left corner of a matrix too large to draw one cell per pixel, and a note saying which part it is.

    Slicing is a view: nothing of a memory-mapped weight is read beyond the corner. The note is ""
    when the whole matrix fits.
    """
    rows, cols = matrix.shape
    keep_rows = rows if max_rows is None else min(rows, max_rows)
    keep_cols = cols if max_cols is None else min(cols, max_cols)
    parts = []
    if keep_rows < rows:
        parts.append(f"rows 0-{keep_rows - 1} of {rows}")
    if keep_cols < cols:
        parts.append(f"columns 0-{keep_cols - 1} of {cols}")
    return matrix[:keep_rows, :keep_cols], ", ".join(parts)


def share_bars(ax, shares: dict, colors=None):
    """One horizontal bar per model, split into the percentage each group takes.

    shares: {model label: {group: amount}}; every model's amounts are shown as percentages of its total.
    """
    models = list(shares)
    groups = list(dict.fromkeys(g for per_model in shares.values() for g in per_model))
    left = [0.0] * len(models)
    for k, group in enumerate(groups):
        percents = [100 * shares[m].get(group, 0) / sum(shares[m].values()) for m in models]
        color = colors[k % len(colors)] if colors else None
        bars = ax.barh(models, percents, left=left, label=group, color=color, edgecolor="white")
        ax.bar_label(
            bars, [f"{p:.0f}%" if p >= 4 else "" for p in percents], label_type="center", fontsize=8, color="white"
        )
        left = [a + b for a, b in zip(left, percents)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the weights' bytes")
    ax.invert_yaxis()
