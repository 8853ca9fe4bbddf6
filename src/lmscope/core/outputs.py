"""Writing results for people: an output folder with JSON, PNG figures and one HTML page.

Every family's results use this, so every command leaves the same kind of folder behind:
``result.json``, ``*.png`` and ``index.html`` (self-contained: figures are embedded).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscope.core.artifacts import atomic_write_bytes, atomic_write_json


def new_figure(*args: Any, **kwargs: Any):
    """A matplotlib figure with the non-interactive backend (matplotlib is an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'lmscope[viz]'") from exc
    return plt.subplots(*args, **kwargs)


def figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Report:
    """Collects a title, tables, figures and notes; writes them to a folder."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def text(self, heading: str, body: str) -> None:
        self.sections.append((heading, f"<p>{html.escape(body)}</p>"))

    def table(self, heading: str, header: list[str], rows: list[list[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
        self.sections.append((heading, f"<table><tr>{head}</tr>{body}</table>"))

    def figure(self, name: str, fig: Any, caption: str = "") -> None:
        png = figure_png(fig)
        self.figures[name] = png
        b64 = base64.b64encode(png).decode()
        self.sections.append((caption or name, f'<img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'))

    def write(self, folder: str | Path, result: dict[str, Any] | None = None) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if result is not None:
            atomic_write_json(out / "result.json", result)
        for name, png in self.figures.items():
            atomic_write_bytes(out / f"{name}.png", png)
        parts = "".join(f"<h2>{html.escape(h)}</h2>{b}" for h, b in self.sections)
        page = (
            f"<!doctype html><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
            "img{max-width:100%}</style>"
            f"<h1>{html.escape(self.title)}</h1>{parts}"
        )
        atomic_write_bytes(out / "index.html", page.encode())
        return out


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)
