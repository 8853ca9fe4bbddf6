"""Figures, JSON and the output folder for lens results (kept apart so the method module stays short)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmscope.experiments.report import Result, new_figure

if TYPE_CHECKING:
    from lmscope.lenses.logit_lens import LogitLensResult


def _short(s: str, n: int = 8) -> str:
    s = s.replace("\n", "\\n")
    if s.strip() == "":
        s = s.replace(" ", "\u2423")  # a visible space
    s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)  # control bytes have no glyph
    return s if len(s) <= n else s[: n - 1] + "…"


def lens_heatmap(res: LogitLensResult, row: int = 0):
    """Layers (rows, last on top) x real positions (columns); colour = top-1 probability."""
    pos = res.mask[row].bool().nonzero()[:, 0].tolist()
    probs = res.top_probs[row, :, pos, 0].numpy()  # (layer, seq)
    ids = res.top_ids[row, :, pos, 0].tolist()
    labels = res.labels()
    fig, ax = new_figure(figsize=(1.6 + 0.95 * len(pos), 1.2 + 0.26 * len(labels)))
    im = ax.imshow(probs, aspect="auto", origin="lower", cmap="Blues", vmin=0.0, vmax=1.0)
    tgt = None if res.target_ids is None else int(res.target_ids[row])
    for li in range(len(labels)):
        for pj in range(len(pos)):
            tok = ids[li][pj]
            weight = "bold" if (tgt is not None and tok == tgt) else "normal"
            color = "white" if probs[li, pj] > 0.6 else "black"
            ax.text(pj, li, _short(res.decode(tok)), ha="center", va="center", fontsize=6, color=color, fontweight=weight)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xticks(range(len(pos)), [_short(t, 10) for t in res.tokens(row)], rotation=45, ha="right", fontsize=7)
    title = f"{res.lens} lens: {_short(res.prompts[row], 60)!r}"
    if tgt is not None:
        title += f"  (target {res.decode(tgt)!r} in bold)"
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="top-1 probability")
    return fig


def rank_plot(res: LogitLensResult):
    """Target rank (log scale) and probability per layer at the last token, one line per prompt."""
    if res.target_rank is None or res.target_prob is None or res.target_ids is None:
        raise ValueError("rank_plot needs a target; pass target=... to logit_lens")
    ranks = res.last(res.target_rank).numpy() + 1
    probs = res.last(res.target_prob).numpy()
    x = list(range(len(res.sites)))
    fig, (a1, a2) = new_figure(1, 2, figsize=(11, 4))
    for r in range(ranks.shape[0]):
        prompt = res.prompts[r] if len(res.prompts[r]) <= 36 else "…" + res.prompts[r][-35:]
        name = f"{prompt!r} → {res.decode(int(res.target_ids[r]))!r}"  # by prompt: many prompts share a target
        a1.plot(x, ranks[r], lw=1, alpha=0.8, label=name)
        a2.plot(x, probs[r], lw=1, alpha=0.8, label=name)
    a1.set_yscale("log")
    a1.invert_yaxis()
    a1.set_ylabel("target rank + 1 (log; top = rank 0)")
    a2.set_ylabel("target probability")
    step = max(1, len(x) // 15)
    for a in (a1, a2):
        a.set_xticks(x[::step], res.labels()[::step], fontsize=7)
        a.set_xlabel("site")
    if ranks.shape[0] <= 12:
        a2.legend(fontsize=6)
    a1.set_title(f"{res.lens} lens: target rank at the last token", fontsize=9)
    a2.set_title("target probability", fontsize=9)
    return fig


def curves_plot(res: LogitLensResult):
    """Mean KL(final || lens) and entropy per layer at the last token."""
    c = res.mean_curves()
    fig, (a1, a2) = new_figure(1, 2, figsize=(11, 3.5))
    x = list(range(len(res.sites)))
    a1.plot(x, c["kl_to_final"], marker=".")
    a1.set_ylabel("KL(final || lens), nats")
    a2.plot(x, c["entropy"], marker=".")
    a2.set_ylabel("entropy, nats")
    step = max(1, len(x) // 15)
    for a in (a1, a2):
        a.set_xticks(x[::step], res.labels()[::step], fontsize=7)
    a1.set_title(f"{res.lens} lens, mean over {len(res.prompts)} prompt(s), last token", fontsize=9)
    return fig


def _pairs(res: LogitLensResult, ids: Any, probs: Any) -> list[list[Any]]:
    return [[res.decode(t), round(float(p), 5)] for t, p in zip(ids.tolist(), probs.tolist(), strict=True)]


def result_dict(res: LogitLensResult) -> dict[str, Any]:
    prompts = []
    emergence = res.emergence() if res.target_ids is not None else [None] * len(res.prompts)
    first = res.emergence(stay=False) if res.target_ids is not None else [None] * len(res.prompts)
    top10 = res.emergence(within=10) if res.target_ids is not None else [None] * len(res.prompts)
    for row, prompt in enumerate(res.prompts):
        last = int(res.last_index[row])
        pos = res.mask[row].bool().nonzero()[:, 0].tolist()
        layers = []
        for i, site in enumerate(res.sites):
            entry: dict[str, Any] = {
                "site": str(site),
                "top": _pairs(res, res.top_ids[row, i, last], res.top_probs[row, i, last]),
                "entropy": round(float(res.entropy[row, i, last]), 5),
                "kl_to_final": round(float(res.kl_to_final[row, i, last]), 5),
                "top1_by_position": [res.decode(t) for t in res.top_ids[row, i, pos, 0].tolist()],
            }  # fmt: skip
            if res.target_rank is not None and res.target_prob is not None:
                entry["target_rank"] = int(res.target_rank[row, i, last])
                entry["target_prob"] = round(float(res.target_prob[row, i, last]), 6)
            layers.append(entry)
        item: dict[str, Any] = {
            "prompt": prompt, "tokens": res.tokens(row),
            "model_top": _pairs(res, res.final_top_ids[row, last], res.final_top_probs[row, last]),
            "layers": layers,
        }  # fmt: skip
        if res.target_ids is not None:
            item.update(target=res.decode(int(res.target_ids[row])), target_id=int(res.target_ids[row]),
                        model_correct=res.model_correct()[row], emergence_layer=emergence[row], first_top1_layer=first[row],
                        top10_layer=top10[row])  # fmt: skip
        prompts.append(item)
    return {"lens": res.lens, "model_id": res.model_id, "sites": [str(s) for s in res.sites],
            "mean_curves": res.mean_curves(), "prompts": prompts}  # fmt: skip


def result_page(res: LogitLensResult, *, max_heatmaps: int = 8) -> Result:
    report = Result(f"{res.lens} lens on {res.model_id}")
    header, rows = res.summary_table()
    report.table("Prompts", header, rows)
    if len(res.prompts) == 1:
        h, r = res.layer_table(0)
        report.table("Per layer, last token", h, r)
    if res.target_ids is not None:
        report.figure("rank", res.rank_plot(), "Target rank and probability across layers")
    report.figure("curves", curves_plot(res), "KL to the final distribution and entropy across layers")
    for row in range(min(max_heatmaps, len(res.prompts))):
        name = "heatmap" if len(res.prompts) == 1 else f"heatmap_{row}"
        report.figure(name, res.heatmap(row), f"Top-1 token per layer and position: {res.prompts[row]!r}")
    report.data = res.to_dict()
    return report
