"""The attention explorer's plumbing (notebook 10): one figure repainted from cached weights, and its widgets.

Notebook 10 computes what the explorer shows; this file only draws it. Why it is built this way (a figure
repainted by blitting, PNG encoding, the timing of a slider move) is the subject of the appendix notebook 19.
"""

import io

import ipywidgets as widgets
import matplotlib.colors
import matplotlib.figure
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy
import PIL.Image
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from . import plots

STATIC_DPI = 110  # the inline figure: labels must read on the page
LIVE_DPI = 80  # the widget's PNG, encoded on every slider move: smaller is faster


class AttentionView:
    """One head's [T, T] weights with a query token's row framed, and that row as bars."""

    def __init__(self, attention_per_layer, tokens, config, live=False):
        self.attention_per_layer, self.tokens, self.config = attention_per_layer, tokens, config
        n = len(tokens)
        self.future = torch.ones(n, n, dtype=torch.bool).triu(1)  # keys a query may not see
        size = (10.5, 4.4)
        # Inline, a pyplot figure; live, a figure of its own that pyplot never shows, painted by Agg.
        if live:
            self.figure = matplotlib.figure.Figure(figsize=size, dpi=LIVE_DPI)
            FigureCanvasAgg(self.figure)
        else:
            self.figure = plt.figure(figsize=size, dpi=STATIC_DPI)
        self.ax_map, self.ax_row = self.figure.subplots(1, 2, width_ratios=[1, 1.2])
        self.figure.subplots_adjust(left=0.13, right=0.98, bottom=0.3, top=0.92, wspace=0.3)
        self.image = plots.heatmap(self.ax_map, torch.zeros(n, n), tokens, tokens, colorbar=False)
        self.image.set_norm(matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1))  # spreads out the small weights
        self.figure.colorbar(self.image, ax=self.ax_map, fraction=0.046, pad=0.02)
        self.ax_map.set_xlabel("key token", fontsize=8)
        row_frame = matplotlib.patches.Rectangle((-0.5, -0.5), n, 1, fill=False, edgecolor="red", clip_on=False)
        self.row_box = self.ax_map.add_patch(row_frame)
        self.bars = self.ax_row.bar(range(n), [0.0] * n, color="tab:blue")
        self.ax_row.set_xticks(range(n), plots.token_labels(tokens), fontsize=7, rotation=90)
        self.ax_row.set_ylim(0, 1)
        self.ax_row.set_ylabel("attention weight", fontsize=8)
        self.map_title, self.row_title = self.ax_map.set_title(" ", fontsize=9), self.ax_row.set_title(" ", fontsize=9)
        self.moving = [self.image, self.row_box, *self.bars, self.map_title, self.row_title]
        self.live = live
        if live:  # draw everything that never changes once, and keep it as the background
            for artist in self.moving:
                artist.set_animated(True)
            self.figure.canvas.draw()
            self.background = self.figure.canvas.copy_from_bbox(self.figure.bbox)

    def draw(self, layer, head, position):
        probs = self.attention_per_layer[layer][head]
        self.image.set_data(probs.masked_fill(self.future, float("nan")).numpy())
        self.row_box.set_y(position - 0.5)
        for bar, weight in zip(self.bars, probs[position].tolist()):
            bar.set_height(weight)
        kv_head = head // self.config.queries_per_kv_head
        self.map_title.set_text(f"layer {layer}, head {head} (key/value head {kv_head})")
        self.row_title.set_text(f"where token {position} {plots.token_labels([self.tokens[position]])[0]!r} looks")
        if self.live:
            self.figure.canvas.restore_region(self.background)
            for artist in self.moving:
                self.figure.draw_artist(artist)

    def png(self) -> bytes:
        pixels = numpy.asarray(self.figure.canvas.buffer_rgba())
        buffer = io.BytesIO()
        PIL.Image.fromarray(pixels).save(buffer, format="png", compress_level=1)  # fast rather than small
        return buffer.getvalue()


class Explorer:
    """Sliders for layer and head, a menu for the query token, and a layers x heads grid of buttons coloured
    by one of `head_summaries` ({name: [layers, heads] tensor of attention fractions}); a click opens a head."""

    def __init__(self, attention_per_layer, tokens, config, head_summaries, layer, head, position):
        self.config, self.head_summaries = config, head_summaries
        n_layers, n_heads = config.n_layers, config.n_heads
        self.layer_slider = widgets.IntSlider(value=layer, min=0, max=n_layers - 1, description="layer")
        self.head_slider = widgets.IntSlider(value=head, min=0, max=n_heads - 1, description="head")
        self.token_menu = widgets.Dropdown(
            options=[(f"{i}: {label}", i) for i, label in enumerate(plots.token_labels(tokens))],
            value=position,
            description="token",
        )
        self.kv_note = widgets.HTML(layout=widgets.Layout(width="330px"))
        self.measure_menu = widgets.Dropdown(options=list(head_summaries), description="grid shows")
        self.figure_image = widgets.Image(format="png")
        for control, name in [(self.layer_slider, "layer"), (self.head_slider, "head"),
                              (self.token_menu, "token"), (self.figure_image, "figure")]:  # fmt: skip
            control.add_class(f"explorer-{name}")  # names the browser test finds them by

        self.small_grid = n_layers * n_heads <= 64
        width, height = ("46px", "24px") if self.small_grid else ("16px", "14px")
        self.head_buttons = [[widgets.Button(layout=widgets.Layout(width=width, height=height, padding="0"))
                              for _ in range(n_heads)] for _ in range(n_layers)]  # fmt: skip
        header = [widgets.HTML("")] + [widgets.HTML(f"<small>{h}</small>") for h in range(n_heads)]
        rows = [[widgets.HTML(f"<small>{layer}</small>")] + self.head_buttons[layer] for layer in range(n_layers)]
        self.head_grid = widgets.GridBox(sum(rows, header), layout=widgets.Layout(
            grid_template_columns=f"24px repeat({n_heads}, {width})", grid_gap="1px"))  # fmt: skip

        self.view = AttentionView(attention_per_layer, tokens, config, live=True)
        self.busy, self.framed_button = False, None
        for layer_index, row in enumerate(self.head_buttons):
            for h, button in enumerate(row):
                button.on_click(lambda _, layer=layer_index, h=h: self.open_head(layer, h))
        for control in (self.layer_slider, self.head_slider, self.token_menu):
            control.observe(self.show_selection, names="value")
        self.measure_menu.observe(self.colour_grid, names="value")
        self.colour_grid()
        self.show_selection()
        self.widget = widgets.HBox([
            widgets.VBox([self.layer_slider, self.head_slider, self.kv_note, self.token_menu, self.measure_menu,
                          self.head_grid], layout=widgets.Layout(min_width="340px")),
            self.figure_image,
        ])  # fmt: skip

    def colour_grid(self, change=None):
        """Every measure is a fraction of a head's attention: one colour scale, 0 to 1, for all of them."""
        per_head = self.head_summaries[self.measure_menu.value]
        colours = plt.get_cmap("viridis")(per_head.clamp(0, 1).numpy())
        for layer, row in enumerate(self.head_buttons):
            for h, button in enumerate(row):
                value = float(per_head[layer, h])
                button.style.button_color = matplotlib.colors.to_hex(colours[layer, h])
                button.style.text_color = "white" if value < 0.6 else "black"
                button.description = f"{value:.2f}" if self.small_grid else ""
                button.tooltip = f"layer {layer}, head {h}: {value:.3f} {self.measure_menu.value}"

    def show_selection(self, change=None):
        if self.busy:
            return
        layer, h = self.layer_slider.value, self.head_slider.value
        self.view.draw(layer, h, self.token_menu.value)
        self.figure_image.value = self.view.png()
        group_size = self.config.queries_per_kv_head
        kv = h // group_size
        self.kv_note.value = (f"reads key/value head <b>{kv}</b>, shared by query heads "
                              f"{kv * group_size}–{(kv + 1) * group_size - 1}")  # fmt: skip
        if self.framed_button is not None:
            self.framed_button.layout.border = ""
        self.framed_button = self.head_buttons[layer][h]
        self.framed_button.layout.border = "2px solid red"

    def open_head(self, layer, h):
        self.busy = True  # two slider moves, one repaint
        self.layer_slider.value, self.head_slider.value = layer, h
        self.busy = False
        self.show_selection()
