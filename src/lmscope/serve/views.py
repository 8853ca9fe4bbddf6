"""The explorer's views as data, and the same views inline in a notebook.

Each ``*_view`` function turns an lmscope object into the JSON the front end draws
(``static/views.js``); the server answers requests with exactly these documents, and
:func:`inline` wraps one with the same script for Jupyter's ``_repr_html_``, so a notebook cell
shows what the explorer's panel shows. Nothing here loads files or runs the model.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

import torch


def lens_view(res: Any, row: int = 0) -> dict[str, Any]:
    """A :class:`~lmscope.lenses.LogitLensResult` row as a layers x positions grid (top-1 token, its
    probability, the top-k, and the target's rank and probability when there is a target)."""
    real = res.mask[row].bool()
    top = res.top_ids[row][:, real]  # (layer, pos, k)
    probs = res.top_probs[row][:, real]
    doc: dict[str, Any] = {
        "view": "lens", "lens": res.lens, "model": res.model_id, "prompt": res.prompts[row], "tokens": res.tokens(row),
        "layers": res.labels(),
        "top": [[[res.decode(t) for t in cell] for cell in layer] for layer in top.tolist()],
        "p": probs.tolist(),
        "entropy": res.entropy[row][:, real].tolist(), "kl": res.kl_to_final[row][:, real].tolist(),
        "final": [res.decode(t) for t in res.final_top_ids[row][real][:, 0].tolist()],
        "target": None, "rank": None, "target_p": None,
    }  # fmt: skip
    if res.target_ids is not None:
        doc["target"] = res.decode(int(res.target_ids[row]))
        doc["rank"] = res.target_rank[row][:, real].tolist()
        doc["target_p"] = res.target_prob[row][:, real].tolist()
    return doc


def attention_view(tokens: list[str], layer: int, pattern: torch.Tensor) -> dict[str, Any]:
    """One layer's attention, (heads, query, key), rounded to 5 decimals for the wire."""
    return {"view": "attention", "tokens": tokens, "layer": layer, "heads": int(pattern.shape[0]),
            "pattern": [[[round(float(v), 5) for v in q] for q in h] for h in pattern.tolist()]}  # fmt: skip


def result_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``result.json`` document as the result page draws it (the document itself, tagged)."""
    return {"view": "result", **doc}


def inline(doc: dict[str, Any]) -> str:
    """HTML for a notebook cell: the view's script (from the package, no URL) and its data."""
    script = resources.files("lmscope.serve").joinpath("static/views.js").read_text()
    css = resources.files("lmscope.serve").joinpath("static/views.css").read_text()
    data = json.dumps(doc, default=str).replace("</", "<\\/")
    uid = f"lmscope-{abs(hash(data)) % 10**10}"
    return (f"<style>{css}</style><div id='{uid}' class='lmscope'></div><script>{script}\n"
            f"lmscopeViews.render(document.getElementById('{html.escape(uid)}'), {data});</script>")  # fmt: skip
