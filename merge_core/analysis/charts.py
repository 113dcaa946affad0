"""Bar charts with Pillow only (no plotting dependency), readable at a glance."""
from __future__ import annotations

from typing import Optional, Sequence


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, y_label: str = "",
              y_range: Optional[tuple[float, float]] = None, width: int = 1024, height: int = 512):
    """One vertical bar per label, value printed above each bar; returns a PIL RGB image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, 20, 40, 70
    lo, hi = y_range if y_range is not None else (min(0.0, min(values, default=0.0)), max(values, default=1.0))
    if hi <= lo:
        hi = lo + 1.0
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.text((left, 10), title, fill="black", font=font)
    if y_label:
        draw.text((5, 10), y_label, fill="gray", font=font)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - frac)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((5, y - 6), f"{lo + frac * (hi - lo):.3g}", fill="gray", font=font)
    n = max(1, len(values))
    slot = plot_w / n
    for i, (label, value) in enumerate(zip(labels, values)):
        x0 = left + i * slot + slot * 0.15
        x1 = left + (i + 1) * slot - slot * 0.15
        v = min(max(value, lo), hi)
        y = top + plot_h * (1 - (v - lo) / (hi - lo))
        base = top + plot_h * (1 - (max(lo, 0.0) - lo) / (hi - lo))
        color = (70, 120, 200) if label.startswith("IN") else (200, 110, 60) if label.startswith("OUT") \
            else (90, 160, 90)
        draw.rectangle([x0, min(y, base), x1, max(y, base)], fill=color)
        draw.text((x0, min(y, base) - 12), f"{value:.3g}", fill="black", font=font)
        # vertical label: one character per line keeps 26 labels legible at 1024 px
        for j, ch in enumerate(label):
            draw.text((x0 + (x1 - x0) / 2 - 3, top + plot_h + 4 + j * 10), ch, fill="black", font=font)
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    return img
