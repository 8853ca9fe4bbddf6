"""The one page builder: a :class:`Result` holds an experiment's numbers, tables, figures and
provenance, and writes one folder layout.

Every experiment returns a Result, so every command leaves the same folder behind:

- ``result.json``: one schema (:data:`SCHEMA`): ``command``, ``title``, ``config``, ``identity``,
  ``provenance``, ``summary`` (the headline numbers), ``data`` (everything else), ``figures``
  and ``artifacts`` (files the experiment wrote beside it);
- one ``<name>.png`` per figure;
- ``index.html``: self-contained (figures embedded), the page people read.

    >>> import tempfile, json, pathlib
    >>> r = Result("demo", summary={"accuracy": 0.75})
    >>> r.table("Scores", ["layer", "accuracy"], [[3, 0.5], [6, 0.75]])
    >>> folder = r.write(tempfile.mkdtemp())
    >>> json.loads((folder / "result.json").read_text())["summary"]
    {'accuracy': 0.75}
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscope.experiments.artifacts import atomic_write_bytes, atomic_write_json

SCHEMA = "lmscope.result/1"


def new_figure(*args: Any, **kwargs: Any):
    """A matplotlib figure with the non-interactive backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib (an lmscope dependency): pip install matplotlib") from exc
    return plt.subplots(*args, **kwargs)


def figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
    "img{max-width:100%}.prov{color:#666;font-size:12px}</style>"
)


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML page (the one template every page of lmscope uses)."""
    return f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}<h1>{html.escape(title)}</h1>{body}"


def html_table(header: list[Any], rows: list[list[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (for cells that are links the caller built)."""
    esc = (lambda c: _fmt(c)) if raw else (lambda c: html.escape(_fmt(c)))
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class Result:
    """What an experiment found: headline numbers, data, tables, figures, notes and provenance."""

    title: str
    summary: dict[str, Any] = field(default_factory=dict)
    """The headline numbers (what the reproduce report and the closing line of a command read)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Everything else worth keeping, JSON-able."""
    lines: list[str] = field(default_factory=list)
    """What the command prints when it finishes (one finding per line)."""
    sections: list[tuple[str, str]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    """Files written beside result.json, by role (e.g. ``{"vector": "vector.safetensors"}``)."""
    command: str | None = None
    config: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None

    def say(self, line: str) -> None:
        """A finding the command prints at the end."""
        self.lines.append(line)

    def text(self, heading: str, body: str) -> None:
        self.sections.append((heading, f"<p>{html.escape(body)}</p>"))

    def table(self, heading: str, header: list[Any], rows: list[list[Any]]) -> None:
        self.sections.append((heading, html_table(header, rows)))

    def figure(self, name: str, fig: Any, caption: str = "") -> None:
        png = figure_png(fig)
        self.figures[name] = png
        b64 = base64.b64encode(png).decode()
        self.sections.append((caption or name, f'<img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'))

    def _repr_html_(self) -> str:
        """In a notebook: the explorer's result view (summary, interactive data views, figures, provenance)."""
        from lmscope.experiments.views import inline, result_view

        doc = self.to_dict()
        doc["figure_urls"] = [f"data:image/png;base64,{base64.b64encode(self.figures[n]).decode()}" for n in sorted(self.figures)]
        return inline(result_view(doc))

    @classmethod
    def load(cls, folder: str | Path) -> Result:
        """A finished experiment's Result from its folder (``result.json`` and its figures), e.g. to display it."""
        folder = Path(folder)
        doc = read_result(folder)
        figures = {n: (folder / f"{n}.png").read_bytes() for n in doc.get("figures") or [] if (folder / f"{n}.png").is_file()}
        return cls(doc.get("title") or "", summary=doc.get("summary") or {}, data=doc.get("data") or {}, figures=figures,
                   artifacts=doc.get("artifacts") or {}, command=doc.get("command"), config=doc.get("config"),
                   identity=doc.get("identity"), provenance=doc.get("provenance"))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The ``result.json`` document."""
        return {"schema": SCHEMA, "command": self.command, "title": self.title, "config": self.config,
                "identity": self.identity, "provenance": self.provenance, "summary": self.summary, "data": self.data,
                "figures": sorted(self.figures), "artifacts": self.artifacts}  # fmt: skip

    def write(self, folder: str | Path, data: dict[str, Any] | None = None) -> Path:
        """Write ``result.json``, the figures and ``index.html`` to ``folder`` (``data`` replaces :attr:`data`)."""
        if data is not None:
            self.data = data
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "result.json", self.to_dict())
        for name, png in self.figures.items():
            atomic_write_bytes(out / f"{name}.png", png)
        atomic_write_bytes(out / "index.html", page(self.title, self._body()).encode())
        return out

    def _body(self) -> str:
        parts = []
        if self.summary:
            parts.append(("Summary", html_table(["", ""], [[k, v] for k, v in self.summary.items()])))
        parts += self.sections
        if self.artifacts:
            links = [[role, f"<a href='{html.escape(p)}'>{html.escape(p)}</a>"] for role, p in self.artifacts.items()]
            parts.append(("Files", html_table(["role", "file"], links, raw=True)))
        body = "".join(f"<h2>{html.escape(h)}</h2>{b}" for h, b in parts)
        if self.provenance:
            prov = ", ".join(f"{k} {v}" for k, v in self.provenance.items() if v not in (None, ""))
            ident = (self.identity or {}).get("digest", "")
            body += f"<p class='prov'>{html.escape(prov)}; identity {html.escape(str(ident)[:16])}</p>"
        return body


def read_result(folder: str | Path) -> dict[str, Any]:
    """The ``result.json`` of a finished experiment, checked to be of this schema."""
    import json

    path = Path(folder) / "result.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: the experiment has not finished there") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an lmscope result ({SCHEMA})")
    return doc


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)
