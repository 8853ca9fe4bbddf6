"""Views: JSON documents that ``static/views.js`` draws, in the explorer and in notebooks.

A view document is a dict with a ``"view"`` key (``result``, ``lens``, ``attention``,
``patchscope``, ``sae_latent``, ``sae_fires``); the families build theirs (e.g.
``LogitLensResult.view()``) and the explorer (``lmscope serve``) answers requests with them.
:func:`inline` wraps one with the same script for Jupyter's ``_repr_html_``, so a notebook cell
shows what the explorer's panel shows, with no URL to fetch. Nothing here loads files or runs a model.
"""

from __future__ import annotations

import hashlib
import html
import json
from importlib import resources
from typing import Any

import torch

_count = 0


def attention_view(tokens: list[str], layer: int, pattern: torch.Tensor) -> dict[str, Any]:
    """One layer's attention, (heads, query, key), rounded to 5 decimals for the wire."""
    return {"view": "attention", "tokens": tokens, "layer": layer, "heads": int(pattern.shape[0]),
            "pattern": [[[round(float(v), 5) for v in q] for q in h] for h in pattern.tolist()]}  # fmt: skip


def asset(name: str) -> str:
    """One of the views' own files (``views.js``, ``views.css``), from the package."""
    return resources.files("lmscope.experiments").joinpath(f"static/{name}").read_text()


def result_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``result.json`` document as the result page draws it (the document itself, tagged)."""
    return {"view": "result", **doc}


def inline(doc: dict[str, Any]) -> str:
    """HTML for a notebook cell: the view's script (from the package, no URL) and its data."""
    script = asset("views.js")
    css = asset("views.css")
    data = json.dumps(doc, default=str).replace("</", "<\\/")
    global _count
    _count += 1
    uid = f"lmscope-view-{_count}-{hashlib.sha256(data.encode()).hexdigest()[:8]}"
    return (f"<style>{css}</style><div id='{uid}' class='lmscope'></div><script>{script}\n"
            f"lmscopeViews.render(document.getElementById('{html.escape(uid)}'), {data});</script>")  # fmt: skip
