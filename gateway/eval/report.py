"""The demo's outputs: summary rows, contact sheets and an ``index.html`` report."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gateway.codec.image_io import resize_rgb


@dataclass
class DemoRow:
    """One transfer of the demo: an image at one budget with one codec."""

    image: str
    frames_budget: int
    codec: str
    message_id: int | None = None
    state: str = "pending"
    frames: int | None = None
    bytes: int | None = None
    bpp: float | None = None
    setting: str = ""
    retransmissions: int | None = None
    encode_ms: float | None = None
    decode_ms: float | None = None
    psnr: float | None = None
    ms_ssim: float | None = None
    output_png: str | None = None
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label_font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _tile(img: np.ndarray, label: str, height: int) -> Image.Image:
    """An image scaled to ``height`` with a caption strip under it."""
    w = max(1, round(img.shape[1] * height / img.shape[0]))
    tile = Image.new("RGB", (w, height + 22), "white")
    tile.paste(Image.fromarray(resize_rgb(img, (w, height))), (0, 0))
    ImageDraw.Draw(tile).text((4, height + 4), label, fill="black", font=_label_font())
    return tile


def contact_sheet(rows: list[tuple[str, list[tuple[np.ndarray | None, str]]]], path: Path, height: int = 192) -> None:
    """Write a grid: one line per (title, [(image or None, caption), ...]); a missing image is a grey box."""
    lines = []
    for _title, cells in rows:
        tiles = []
        for img, caption in cells:
            if img is None:
                img = np.full((height, height, 3), 200, np.uint8)
            tiles.append(_tile(img, caption, height))
        lines.append(tiles)
    gap = 6
    width = max(sum(t.width for t in tiles) + gap * (len(tiles) + 1) for tiles in lines)
    total_h = sum(max(t.height for t in tiles) + gap for tiles in lines) + gap
    sheet = Image.new("RGB", (width, total_h), (240, 240, 240))
    y = gap
    for tiles in lines:
        x = gap
        for t in tiles:
            sheet.paste(t, (x, y))
            x += t.width + gap
        y += max(t.height for t in tiles) + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec else str(v)


COLUMNS = [
    ("image", "image", ""), ("budget", "frames_budget", ""), ("codec", "codec", ""), ("state", "state", ""),
    ("frames", "frames", ""), ("bytes", "bytes", ""), ("bpp", "bpp", ".4f"), ("setting", "setting", ""),
    ("retx", "retransmissions", ""), ("enc ms", "encode_ms", ".0f"), ("dec ms", "decode_ms", ".0f"),
    ("PSNR", "psnr", ".2f"), ("MS-SSIM", "ms_ssim", ".4f"),
]


def table_cells(row: DemoRow) -> list[str]:
    """The summary-table cells of one row, formatted."""
    d = row.as_dict()
    return [_fmt(d[key], spec) for _, key, spec in COLUMNS]


def write_index(out: Path, rows: list[DemoRow], sheets: list[str], info: dict[str, Any]) -> Path:
    """Write ``summary.json`` and a self-contained ``index.html`` that shows everything."""
    (out / "summary.json").write_text(json.dumps({"info": info, "rows": [r.as_dict() for r in rows]}, indent=2))
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _, _ in COLUMNS)
    body = []
    for r in rows:
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(r))
        body.append(f"<tr>{cells}</tr>")
    imgs = "".join(f'<h3>{html.escape(s)}</h3><img src="{html.escape(s)}" alt="{html.escape(s)}">' for s in sheets)
    meta = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in info.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>satgw demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>satgw demo</h1><ul>{meta}</ul>
<h2>Transfers</h2><table><tr>{head}</tr>{''.join(body)}</table>
<h2>Contact sheets (original | cadc | classical, bytes on air under each)</h2>{imgs}
<p>Reconstructions, JSON metadata and daemon logs are in this folder.</p></body></html>"""
    path = out / "index.html"
    path.write_text(page)
    return path
