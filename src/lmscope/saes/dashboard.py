"""Static HTML feature dashboards: one page per latent and an index searchable by token.

Each latent page shows its density, activation quantiles, a histogram of its non-zero
activations, bars of the tokens its decoder direction promotes and suppresses, its top contexts (each token shaded by the latent's
activation, the peak token boxed) and examples from a lower activation band. The index lists
every written latent with its most frequent top-activating tokens and promoted tokens; a search
box filters it by token. No server, no JavaScript library: open ``index.html`` in a browser.

    >>> # after training: stats = latent_stats(sae, acts, ids); write_dashboards(model, sae, stats, "out/dash")
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.experiments.artifacts import atomic_write_bytes, atomic_write_json
from lmscope.saes.features import QUANTILES, Context, LatentStats, band_contexts, logit_effects, sample_codes, top_contexts
from lmscope.saes.sae import SAE

if TYPE_CHECKING:
    from lmscope.core.model import Model

_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1000px;margin:1.5em auto}"
    ".ctx{font-family:monospace;white-space:pre-wrap;margin:4px 0;padding:3px;border-bottom:1px solid #eee}"
    ".pk{outline:2px solid #c00}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
    "font-size:13px}</style>"
)


def _shade(ctx: Context) -> str:
    peak = max(ctx.value, 1e-9)
    spans = []
    for i, (tok, v) in enumerate(zip(ctx.tokens, ctx.values, strict=True)):
        alpha = max(0.0, min(1.0, v / peak))
        cls = " class='pk'" if i == ctx.peak else ""
        spans.append(f"<span{cls} title='{v:.3g}' style='background:rgba(255,120,0,{alpha:.2f})'>{html.escape(tok)}</span>")
    return f"<div class='ctx'><b>{ctx.value:.3g}</b> {''.join(spans)}</div>"


def _histogram(values: list[float], zeros: int, bins: int = 24, width: int = 360, height: int = 80) -> str:
    """Inline SVG: the histogram of a latent's non-zero activations (hover a bar for its range and count)."""
    if not values:
        return "<p>never active on these tokens</p>"
    hi = max(values)
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int(bins * v / hi)) if hi > 0 else 0] += 1
    top = max(counts)
    bars = "".join(
        f"<rect x='{i * width / bins:.1f}' y='{height - height * c / top:.1f}' width='{width / bins - 1:.1f}' "
        f"height='{height * c / top:.1f}' fill='#f80'><title>{i * hi / bins:.3g}..{(i + 1) * hi / bins:.3g}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    label = f"0 … {hi:.3g} ({len(values)} active, {zeros} at zero not drawn)"
    return (f"<svg width='{width}' height='{height + 16}' role='img' aria-label='activation histogram'>{bars}"
            f"<text x='0' y='{height + 13}' font-size='11'>{label}</text></svg>")  # fmt: skip


def _effect_bars(items: list[tuple[str, float]], colour: str) -> str:
    """Inline bars: each token's logit effect, scaled to the largest."""
    peak = max((abs(v) for _, v in items), default=1.0) or 1.0
    rows = "".join(
        f"<tr><td><code>{html.escape(repr(t))}</code></td><td><div style='background:{colour};height:10px;"
        f"width:{120 * abs(v) / peak:.0f}px'></div></td><td>{v:+.2f}</td></tr>"
        for t, v in items
    )
    return f"<table class='bars'>{rows}</table>"


def latent_summary(sae: SAE, stats: LatentStats, latent: int, *, tokenizer, n_top: int = 10) -> dict:
    """JSON-able facts about one latent: density, quantiles, top contexts and their peak tokens."""
    ctxs = top_contexts(sae, stats, latent, tokenizer=tokenizer, n=n_top)
    return {
        "latent": latent, "density": float(stats.density[latent]), "max": float(stats.max_act[latent]),
        "quantiles": dict(zip([str(q) for q in QUANTILES], stats.quantiles[latent].tolist(), strict=True)),
        "top_tokens": [t for t, _ in Counter(c.tokens[c.peak] for c in ctxs).most_common(5)],
        "contexts": [{"text": "".join(c.tokens), "token": c.tokens[c.peak], "value": c.value} for c in ctxs],
    }  # fmt: skip


def write_dashboards(model: Model, sae: SAE, stats: LatentStats, folder: str | Path, latents: list[int] | None = None,
                     *, n_top: int = 12) -> Path:  # fmt: skip
    """Write ``latent_<i>.html`` for each latent (default: every live latent) and ``index.html``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if latents is None:
        latents = [int(i) for i in (stats.density > 0).nonzero()[:, 0]]
    effects = logit_effects(model, sae, latents) if latents else {}
    codes = sample_codes(sae, stats)
    rows, summaries = [], []
    for lat in latents:
        s = latent_summary(sae, stats, lat, tokenizer=model.tokenizer, n_top=n_top)
        s["logits"] = effects[lat]
        summaries.append(s)
        q = stats.quantiles[lat]
        lower = (band_contexts(sae, stats, lat, tokenizer=model.tokenizer, lo=float(q[0]), hi=float(q[2]), codes=codes)
                 if q[2] > 0 else [])  # fmt: skip
        page = [
            f"<!doctype html><meta charset='utf-8'><title>latent {lat}</title>{_STYLE}",
            f"<p><a href='index.html'>index</a></p><h1>Latent {lat}</h1>",
            f"<p>density {s['density']:.4%} · max {s['max']:.3g} · hook {html.escape(sae.cfg.hook_name)}</p>",
            "<table><tr>" + "".join(f"<th>q{q_}</th>" for q_ in QUANTILES) + "</tr><tr>"
            + "".join(f"<td>{float(v):.3g}</td>" for v in q) + "</tr></table>",
            "<h2>Activation histogram</h2>",
            _histogram(codes[:, lat][codes[:, lat] > 0].tolist(), int((codes[:, lat] <= 0).sum())),
            "<h2>Logit effects</h2><div style='display:flex;gap:2em'><div><h3>promoted</h3>",
            _effect_bars(effects[lat]["promoted"], "#3a3"), "</div><div><h3>suppressed</h3>",
            _effect_bars(effects[lat]["suppressed"], "#c44"), "</div></div>",
            "<h2>Top activating contexts</h2>",
            *[_shade(c) for c in top_contexts(sae, stats, lat, tokenizer=model.tokenizer, n=n_top)],
            "<h2>Examples between the 25% and 75% quantiles</h2>",
            *([_shade(c) for c in lower] or ["<p>none</p>"]),
        ]
        atomic_write_bytes(folder / f"latent_{lat}.html", "".join(page).encode())
        search = " ".join(s["top_tokens"] + [t for t, _ in effects[lat]["promoted"]]).lower()
        rows.append(
            f"<tr data-s='{html.escape(search, quote=True)}'><td><a href='latent_{lat}.html'>{lat}</a></td>"
            f"<td>{s['density']:.3%}</td><td>{s['max']:.3g}</td>"
            f"<td>{html.escape(' | '.join(repr(t) for t in s['top_tokens']))}</td>"
            f"<td>{html.escape(' '.join(repr(t) for t, _ in effects[lat]['promoted'][:5]))}</td></tr>"
        )
    script = (
        "<script>function f(){const q=document.getElementById('q').value.toLowerCase();"
        "for(const r of document.querySelectorAll('tr[data-s]'))r.style.display=r.dataset.s.includes(q)?'':'none';}</script>"
    )
    index = (
        f"<!doctype html><meta charset='utf-8'><title>SAE latents</title>{_STYLE}{script}"
        f"<h1>SAE latents: {html.escape(sae.cfg.hook_name)} ({sae.cfg.architecture}, d_sae={sae.cfg.d_sae})</h1>"
        "<p><input id='q' oninput='f()' placeholder='search by token (top-activating or promoted)' size=50></p>"
        "<table><tr><th>latent</th><th>density</th><th>max</th><th>top-activating tokens</th><th>promoted</th></tr>"
        + "".join(rows) + "</table>"
    )
    atomic_write_bytes(folder / "index.html", index.encode())
    atomic_write_json(folder / "latents.json", json.loads(json.dumps(summaries)))
    return folder
