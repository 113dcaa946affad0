"""Labelled X/Y image grids with Pillow (one grid per Z value), as SuperMerger's XYZ plot draws them.

Labels wrap to the cell width; long block-weight strings arrive already
shortened (sweep.abbreviate). The title states what is common to every cell.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class GridLayout:
    z: Optional[str]
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    cells: tuple[tuple[Optional[int], ...], ...]  # [row][col] -> image index, None when missing

    def describe(self) -> str:
        head = f"grid{'' if self.z is None else ' ' + self.z}: {len(self.y_labels)} rows x {len(self.x_labels)} cols"
        return "\n".join([head, "X: " + " | ".join(self.x_labels), "Y: " + " | ".join(self.y_labels)])


def _unique(values: Sequence) -> list:
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def layouts(x_labels: Sequence[str], y_labels: Sequence[str], z_labels: Sequence[str]) -> list[GridLayout]:
    """Group image i by (z[i], y[i], x[i]); rows and columns in order of first appearance."""
    n = len(x_labels)
    ys = list(y_labels) if y_labels else [""] * n
    zs = list(z_labels) if z_labels else [None] * n
    out = []
    for z in _unique(zs):
        idx = [i for i in range(n) if zs[i] == z]
        cols = _unique([x_labels[i] for i in idx])
        rows = _unique([ys[i] for i in idx])
        cells: list[list[Optional[int]]] = [[None] * len(cols) for _ in rows]
        for i in idx:
            cells[rows.index(ys[i])][cols.index(x_labels[i])] = i
        out.append(GridLayout(z, tuple(cols), tuple(rows), tuple(tuple(r) for r in cells)))
    return out


def common_title(texts: Sequence[str]) -> str:
    """The words every text shares (e.g. the fixed settings of a set of recipes), in the first one's order."""
    if not texts:
        return ""
    words = [t.split() for t in texts]
    common = set(words[0]).intersection(*map(set, words[1:]))
    return " ".join(w for w in words[0] if w in common)


def mark_overridden(labels: Sequence[str], recipes: Sequence[str]) -> list[str]:
    """Labels of a scalar ratio that block weights overrode, marked so: 'alpha=0.2 (overridden by
    blocks_alpha)'. A cell's recipe (the one at its index, or every recipe when their counts differ) omits
    alpha and names blocks_alpha when the blocks replaced it; differing labels would claim different merges."""
    out = []
    for i, label in enumerate(labels):
        name = label.split("=", 1)[0] if "=" in label else ""
        texts = [recipes[i]] if len(recipes) == len(labels) else list(recipes)
        words = [w for t in texts for w in t.split()]
        if (name in ("alpha", "beta") and texts and any(w.startswith(f"blocks_{name}=") for w in words)
                and not any(w.startswith(f"{name}=") for w in words)):
            label += f" (overridden by blocks_{name})"
        out.append(label)
    return out


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _cut(draw, line: str, font, width: int) -> str:
    while len(line) > 1 and draw.textlength(line, font=font) > width:
        line = line[:-1]
    return line


def _wrap(draw, text: str, font, width: int, max_lines: int = 4) -> list[str]:
    width = max(8, width)
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for ch_word in para.replace(",", ", ").split(" "):
            trial = (line + " " + ch_word).strip() if line else ch_word
            if draw.textlength(trial, font=font) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = ch_word
        lines.append(line)
    lines = [_cut(draw, line, font, width) for line in lines]  # a single word wider than the cell
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [lines[max_lines - 1][:-3] + "..."]
    return lines


def draw_grid(images: Sequence, layout: GridLayout, title: str = "", font_size: int = 14):
    """PIL RGB image: title, column labels on top, row labels on the left, the images in cells."""
    from PIL import Image, ImageDraw
    font = _font(font_size)
    cw = max((images[i].width for row in layout.cells for i in row if i is not None), default=64)
    ch = max((images[i].height for row in layout.cells for i in row if i is not None), default=64)
    cw_label = max(cw, 120)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = font_size + 4
    col_lines = [_wrap(probe, x, font, cw_label - 8) for x in layout.x_labels]
    has_rows = any(layout.y_labels)
    row_w = 180 if has_rows else 0
    row_lines = [_wrap(probe, y, font, row_w - 10, max_lines=max(2, ch // line_h)) if has_rows else []
                 for y in layout.y_labels]
    full_title = title if layout.z is None else f"{title}  [{layout.z}]".strip()
    grid_w = row_w + cw_label * len(layout.x_labels)
    title_lines = _wrap(probe, full_title, font, grid_w - 10, max_lines=3) if full_title else []
    top = len(title_lines) * line_h + (6 if title_lines else 0)
    head = max((len(c) for c in col_lines), default=1) * line_h + 6
    height = top + head + ch * len(layout.y_labels)
    img = Image.new("RGB", (grid_w, height), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(title_lines):
        draw.text((5, 3 + i * line_h), line, fill="black", font=font)
    for c, lines in enumerate(col_lines):
        for j, line in enumerate(lines):
            x = row_w + c * cw_label + (cw_label - draw.textlength(line, font=font)) / 2
            draw.text((x, top + 3 + j * line_h), line, fill="black", font=font)
    for r, lines in enumerate(row_lines):
        y0 = top + head + r * ch + (ch - len(lines) * line_h) / 2
        for j, line in enumerate(lines):
            draw.text((5, y0 + j * line_h), line, fill="black", font=font)
        for c, index in enumerate(layout.cells[r]):
            x0, y = row_w + c * cw_label + (cw_label - cw) // 2, top + head + r * ch
            if index is None:
                draw.rectangle([x0, y, x0 + cw - 1, y + ch - 1], outline=(200, 200, 200))
                continue
            img.paste(images[index].convert("RGB"), (x0, y))
    return img
