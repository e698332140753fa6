"""The review page's header: the one-line summary and a score histogram per provenance class, as
inline SVG with every label escaped (strings in a report are untrusted)."""

from __future__ import annotations

import html
import os

BINS = 20


def summary_line(meta: dict) -> str:
    parts = [f"{meta['rows']:,} files"]
    parts += [f"{v} {n:,}" for v, n in sorted(meta["verdicts"].items(), key=lambda kv: -kv[1])]
    if meta["threshold"] is not None:
        parts.append(f"threshold {meta['threshold']:.4f}")
    if meta["detector"]:
        parts.append(f"detector {os.path.basename(meta['detector'])}")
    return " · ".join(parts)


def histograms(counts_by_class: dict, no_score: int, threshold: float | None) -> str:
    """One small inline SVG per provenance class (``counts_by_class``: files per score bin), the
    threshold as a line; ``no_score`` files without a score are said to be left out."""
    if not counts_by_class:
        return '<p class="muted">No scores to plot.</p>'
    order = ["generated", "ai-edited", "captured", "camera-exif", "none", "all"]
    classes = sorted(counts_by_class, key=lambda c: (order.index(c) if c in order else len(order), c))
    w, h, pad, top = 240, 96, 4, 18
    bw = (w - 2 * pad) / BINS
    panels = []
    for cls in classes:
        counts = counts_by_class[cls]
        peak = max(int(counts.max()), 1)
        total = int(counts.sum())
        bars = []
        for b, c in enumerate(counts.tolist()):
            bh = (h - top - 14) * c / peak
            lo = b / BINS
            bars.append(f'<rect class="bar" x="{pad + b * bw:.1f}" y="{h - 14 - bh:.1f}" width="{bw - 1:.1f}" '
                        f'height="{bh:.1f}"><title>{lo:.2f}–{lo + 1 / BINS:.2f}: {c:,}</title></rect>')
        mark = ""
        if threshold is not None:
            x = pad + threshold * (w - 2 * pad)
            mark = (f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{h - 14}">'
                    f'<title>threshold {threshold:.4f}</title></line>')
        label = html.escape(f"{cls} · {total:,} files")
        panels.append(
            f'<figure class="hist" data-class="{html.escape(cls, quote=True)}">'
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            f'aria-label="{label}"><text x="{pad}" y="12">{label}</text>{"".join(bars)}{mark}'
            f'<line class="axis" x1="{pad}" x2="{w - pad}" y1="{h - 14}" y2="{h - 14}"></line>'
            f'<text class="tick" x="{pad}" y="{h - 2}">0</text>'
            f'<text class="tick" x="{w / 2:.0f}" y="{h - 2}" text-anchor="middle">0.5</text>'
            f'<text class="tick" x="{w - pad}" y="{h - 2}" text-anchor="end">1</text></svg></figure>')
    extra = ""
    if no_score:
        extra = (f'<p class="muted">{no_score:,} file{"s" if no_score > 1 else ""} without a score '
                 f'{"are" if no_score > 1 else "is"} not plotted.</p>')
    return "".join(panels) + extra
