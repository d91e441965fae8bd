"""Terminal renderings of analysis results: the confusion matrix as a rich table, an MNIST digit
as half-block art, and the same confusion summary as plain lines for logs.

    confusion_table   counts with true digits as rows and predicted digits as columns, then per-class
                      precision, recall and one-vs-rest accuracy; the diagonal in bold green, the
                      worst mistakes (Confusion.most_confused) in reverse red, empty mistakes dim
    digit_art         one image in the project's normalisation ([-1, 1], -1 = background) as "▀"
                      cells: foreground = upper pixel, background = lower pixel, so 28x28 -> 14 lines
    confusion_lines   accuracy and the most-confused pairs, no markup

Everything here renders what analysis.py computed; nothing is computed twice. Left out: the
heatmap colouring of confusion.png (the table marks only the diagonal and the worst cells).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich import box
from rich.color import Color
from rich.style import Style
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .analysis import Confusion

DIAGONAL_STYLE = "bold green"
CONFUSED_STYLE = "bold red reverse"  # the cells listed in Confusion.most_confused
ZERO_STYLE = "dim"  # off-diagonal cells with no mistakes
HALF_BLOCK = "▀"


# --- the confusion matrix --------------------------------------------------------------------


def _percent(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1%}"


def _accuracy_text(conf: Confusion) -> str:
    total = conf.total
    correct = sum(conf.counts[i][i] for i in range(len(conf.counts)))
    if not total:
        return "accuracy n/a (no images)"
    return f"accuracy {conf.overall_accuracy:.2%} ({correct:,} of {total:,})"


def _confused_text(conf: Confusion) -> str:
    pairs = ", ".join(f"{t} -> {p} ({c:,})" for t, p, c in conf.most_confused)
    return f"most confused: {pairs or 'none'}"


def confusion_table(conf: Confusion, title: str | None = None, compact: bool = False) -> Table:
    """The counts of `conf` (rows true, columns predicted) with per-class statistics at the right;
    `compact` (for 80 columns): no vertical lines, one space between columns, short headings."""
    n = len(conf.counts)
    worst = {(t, p) for t, p, _ in conf.most_confused}
    table = Table(
        title=title,
        caption=Text("\n".join(confusion_lines(conf))),
        title_justify="left",
        caption_justify="left",
        header_style="bold",
        **({"box": box.SIMPLE_HEAD, "collapse_padding": True, "pad_edge": False} if compact else {}),
    )
    table.add_column("t\\p" if compact else "true\\pred", justify="right", style="bold", no_wrap=True)
    for p in range(n):  # a count is never cut to "9…": narrow terminals shorten the headings instead
        widest = max((len(str(conf.counts[t][p])) for t in range(n)), default=1)
        table.add_column(str(p), justify="right", no_wrap=True, min_width=max(widest, len(str(p))))
    for heading in ("prec", "recall", "acc") if compact else ("precision", "recall", "accuracy"):
        table.add_column(heading, justify="right", no_wrap=True, min_width=len("100.0%"))
    for t in range(n):
        cells = []
        for p, count in enumerate(conf.counts[t]):
            if t == p:
                style = DIAGONAL_STYLE
            elif (t, p) in worst:
                style = CONFUSED_STYLE
            elif count == 0:
                style = ZERO_STYLE
            else:
                style = ""
            cells.append(Text(str(count), style=style))
        stats = (conf.precision[t], conf.recall[t], conf.accuracy[t])
        table.add_row(Text(str(t)), *cells, *(Text(_percent(v)) for v in stats))
    return table


def confusion_lines(conf: Confusion) -> list[str]:
    """The table's caption as plain lines: overall accuracy, then the most-confused pairs."""
    return [_accuracy_text(conf), _confused_text(conf)]


# --- one digit -------------------------------------------------------------------------------


def _flatten(pixels: Any) -> list[float]:
    if hasattr(pixels, "tolist"):  # torch tensor or numpy array, of any shape
        pixels = pixels.tolist()
    flat: list[float] = []
    stack = [pixels]
    while stack:  # depth-first, so row-major order is kept
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        else:
            flat.append(float(item))
    return flat


def _gray(v: float) -> Color:
    """[-1, 1] -> black..white; out-of-range values clip, nan is background."""
    level = 0.0 if math.isnan(v) else (min(1.0, max(-1.0, v)) + 1) / 2
    g = round(255 * level)
    return Color.from_rgb(g, g, g)


def digit_art(pixels: Any, width: int = 28) -> Text:
    """A square image (flat or 2-D; list, numpy array or tensor) as rows of "▀", two pixel rows a
    line. `width` is the most terminal columns the art may take: a wider image is shrunk by the
    smallest whole factor that fits, each cell the mean of its block (28x28 and smaller are drawn
    pixel for pixel). An odd number of rows leaves the last line's lower half as background."""
    values = _flatten(pixels)
    side = math.isqrt(len(values))
    if side == 0 or side * side != len(values):
        raise ValueError(f"digit_art needs a square image, got {len(values)} values (not a perfect square)")
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    grid = [values[r * side: (r + 1) * side] for r in range(side)]
    factor = -(-side // width)  # ceil
    if factor > 1:
        out = -(-side // factor)

        def block(r: int, c: int) -> float:
            cells = [grid[i][j] for i in range(r * factor, min(side, (r + 1) * factor))
                     for j in range(c * factor, min(side, (c + 1) * factor))]
            return sum(cells) / len(cells)

        grid = [[block(r, c) for c in range(out)] for r in range(out)]
    if len(grid) % 2:
        grid.append([-1.0] * len(grid[0]))
    art = Text(no_wrap=True, overflow="crop")
    for r in range(0, len(grid), 2):
        if r:
            art.append("\n")
        for upper, lower in zip(grid[r], grid[r + 1]):
            art.append(HALF_BLOCK, Style(color=_gray(upper), bgcolor=_gray(lower)))
    return art


SHADES = " .:-=+*#%@"  # background to ink, for terminals (and files) without colour


def digit_text(pixels: Any) -> str:
    """The same image in plain characters, two per pixel so it keeps its shape: for output
    that is not a colour terminal (a pipe, a log), where the half blocks would all look alike."""
    values = _flatten(pixels)
    side = math.isqrt(len(values))
    if side == 0 or side * side != len(values):
        raise ValueError(f"expected a square image, got {len(values)} values")
    rows = []
    for r in range(side):
        row = values[r * side: (r + 1) * side]
        # [-1, 1] -> shade index; nan counts as background, as in digit_art
        idx = [0 if v != v else min(len(SHADES) - 1, max(0, int((v + 1) / 2 * len(SHADES)))) for v in row]
        rows.append("".join(SHADES[i] * 2 for i in idx).rstrip())
    return "\n".join(rows)
