"""views.py: the confusion table read back from a recorded console and from its cells' styles,
and digit art checked cell by cell (which half block carries which pixel)."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from rich.style import Style

from backprop_lab.analysis import Confusion, from_counts
from backprop_lab.views import (
    CONFUSED_STYLE,
    DIAGONAL_STYLE,
    ZERO_STYLE,
    confusion_lines,
    confusion_table,
    digit_art,
)

# 3 classes, rows true, columns predicted; class 2 is never predicted (precision nan)
COUNTS_3 = [[50, 7, 0], [12, 40, 0], [3, 0, 0]]


def render(renderable, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system="truecolor", force_terminal=True)
    console.print(renderable)
    return console.export_text()


def cell(table, row: int, column: int):
    return list(table.columns[column].cells)[row]


def ten_class_counts() -> list[list[int]]:
    counts = [[980 if t == p else 0 for p in range(10)] for t in range(10)]
    counts[4][9], counts[7][2], counts[3][5], counts[8][3], counts[1][1] = 23, 17, 15, 4, 1130
    return counts


def test_every_count_in_its_row():
    counts = ten_class_counts()
    text = render(confusion_table(from_counts(counts), title="test set"))
    assert "test set" in text
    rows = {}
    for line in text.splitlines():
        cells = line.replace("│", " ").replace("┃", " ").split()
        if cells and cells[0].isdigit() and len(cells) == 14:  # true digit, 10 counts, 3 percentages
            rows[int(cells[0])] = cells[1:]
    assert sorted(rows) == list(range(10))
    for t in range(10):
        assert [int(c.replace(",", "")) for c in rows[t][:10]] == counts[t]
        assert all(c.endswith("%") for c in rows[t][10:])


def test_cell_styles():
    conf = from_counts(ten_class_counts())
    table = confusion_table(conf)
    for t in range(10):
        assert cell(table, t, 1 + t).style == DIAGONAL_STYLE  # column 0 is the true digit
    for t, p in [(4, 9), (7, 2), (3, 5)]:
        assert cell(table, t, 1 + p).style == CONFUSED_STYLE
    assert cell(table, 8, 1 + 3).style == ""  # a mistake, but not among the three worst
    assert cell(table, 0, 1 + 1).style == ZERO_STYLE
    # and the styles reach the terminal: reverse video only on the worst cells
    console = Console(record=True, width=160, color_system="truecolor", force_terminal=True)
    console.print(table)
    ansi = console.export_text(styles=True)
    assert ansi.count("\x1b[1;7;31m") == 3  # bold, reverse, red


def test_caption_and_lines():
    conf = from_counts(ten_class_counts())
    text = render(confusion_table(conf))
    expected = "most confused: 4 -> 9 (23), 7 -> 2 (17), 3 -> 5 (15)"
    assert expected in text
    total = 9 * 980 + 1130 + 23 + 17 + 15 + 4
    correct = 9 * 980 + 1130
    assert f"accuracy {correct / total:.2%}" in text
    assert confusion_lines(conf) == [f"accuracy {correct / total:.2%} ({correct:,} of {total:,})", expected]


def test_three_classes_nan_and_percentages():
    conf = from_counts(COUNTS_3)
    table = confusion_table(conf)
    assert len(table.columns) == 1 + 3 + 3
    assert cell(table, 2, 4).plain == "n/a"  # precision of class 2: never predicted
    assert cell(table, 0, 4).plain == f"{50 / 65:.1%}"  # precision of class 0
    assert cell(table, 1, 5).plain == f"{40 / 52:.1%}"  # recall of class 1
    assert cell(table, 2, 5).plain == "0.0%"  # recall of class 2
    assert cell(table, 0, 3).style == ZERO_STYLE
    assert cell(table, 2, 3).style == DIAGONAL_STYLE  # the diagonal stays marked even at 0
    text = render(table)
    assert "most confused: 1 -> 0 (12), 0 -> 1 (7), 2 -> 0 (3)" in text
    assert "n/a" in text
    assert confusion_lines(conf)[0] == f"accuracy {90 / 112:.2%} (90 of 112)"


def test_no_mistakes_and_no_images():
    assert confusion_lines(from_counts([[5, 0], [0, 5]]))[1] == "most confused: none"
    nan = float("nan")  # from_counts divides by the total, so build the empty case by hand
    empty = Confusion(counts=[[0, 0], [0, 0]], precision=[nan, nan], recall=[nan, nan],
                      accuracy=[nan, nan], most_confused=[])
    assert confusion_lines(empty) == ["accuracy n/a (no images)", "most confused: none"]
    assert "n/a" in render(confusion_table(empty))  # renders, no ZeroDivisionError


# --- digit art -------------------------------------------------------------------------------

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def colours(art, line: int, column: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(foreground, background) RGB of one character of the art."""
    row = art.split("\n")[line]
    style = Style.combine(span.style for span in row.spans if span.start <= column < span.end)
    return tuple(style.color.triplet), tuple(style.bgcolor.triplet)


def one_pixel(side: int, row: int, column: int) -> np.ndarray:
    image = -np.ones((side, side), dtype=np.float32)
    image[row, column] = 1.0
    return image.reshape(-1)


def test_single_pixel_lands_in_its_half_block():
    art = digit_art(one_pixel(28, 5, 7))  # numpy; a torch tensor takes the same .tolist() path
    lines = render(art).splitlines()
    assert len(lines) == 14 and all(line == "▀" * 28 for line in lines)
    # rows 4 and 5 share line 2: row 5 is the lower pixel, so the cell's background is lit
    assert colours(art, 2, 7) == (BLACK, WHITE)
    for line, column in [(2, 6), (2, 8), (1, 7), (3, 7), (0, 0), (13, 27)]:
        assert colours(art, line, column) == (BLACK, BLACK)
    # an even row is the upper pixel: the foreground
    assert colours(digit_art(one_pixel(28, 4, 7).tolist()), 2, 7) == (WHITE, BLACK)


def test_grey_levels_and_2d_input():
    image = np.full((28, 28), -1.0)
    image[0, 0], image[1, 0] = 0.0, 1.0  # mid grey over white
    image[0, 1] = 5.0  # clipped to white
    art = digit_art(image)  # 2-D numpy array
    assert colours(art, 0, 0) == ((128, 128, 128), WHITE)
    assert colours(art, 0, 1) == (WHITE, BLACK)


def test_sizes():
    assert len(render(digit_art([-1.0] * 196)).splitlines()) == 7  # 14x14
    small = render(digit_art([0.0] * 100)).splitlines()  # 10x10
    assert len(small) == 5 and all(len(line) == 10 for line in small)
    odd = digit_art(one_pixel(5, 4, 2))  # 5 rows: the last line's lower half is background
    assert len(render(odd).splitlines()) == 3
    assert colours(odd, 2, 2) == (WHITE, BLACK)
    big = render(digit_art([-1.0] * 56 * 56)).splitlines()  # shrunk 2x to fit 28 columns
    assert len(big) == 14 and all(len(line) == 28 for line in big)
    with pytest.raises(ValueError, match="50"):
        digit_art([0.0] * 50)
    with pytest.raises(ValueError):
        digit_art([])


def test_digit_text_for_output_without_colour():
    from backprop_lab.views import SHADES, digit_text

    image = [-1.0] * 784
    image[5 * 28 + 7] = 1.0  # ink at row 5, column 7
    image[20 * 28 + 3] = 0.0  # mid grey at row 20, column 3
    lines = digit_text(image).split("\n")
    assert len(lines) == 28
    assert lines[5] == " " * 14 + SHADES[-1] * 2
    assert lines[20] == " " * 6 + SHADES[len(SHADES) // 2] * 2
    assert all(line == "" for i, line in enumerate(lines) if i not in (5, 20))
    assert len(digit_text([0.0] * 196).split("\n")) == 14
    with pytest.raises(ValueError):
        digit_text([0.0] * 50)


def test_the_progress_bar_knows_its_length_and_shows_no_loss_before_the_first_report():
    import io
    import time

    from backprop_lab.report import Reporter

    out = io.StringIO()
    reporter = Reporter(Console(file=out, force_terminal=True, width=100))
    with reporter.progress(2, 938) as on_batch:
        time.sleep(0.3)  # a refresh before any report (it showed 0/? and loss nan)
        on_batch(50, 938, 0.1234)
        time.sleep(0.3)
    text = out.getvalue()
    assert "0/938" in text and "loss -" in text and "50/938" in text and "loss 0.1234" in text and "nan" not in text
