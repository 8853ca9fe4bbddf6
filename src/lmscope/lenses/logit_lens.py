"""Logit lens: decode every layer's residual stream with the model's own unembedding.

What it measures. A decoder-only transformer keeps a residual stream that every block adds to;
only the last one is multiplied by the unembedding. The logit lens (nostalgebraist, 2020,
"interpreting GPT: the logit lens") applies the final norm and ``lm_head`` to an *intermediate*
residual vector and reads the resulting next-token distribution: which token would the model
say if it stopped here? Per layer and position this module reports the top-k tokens, the rank and
probability of a target token, the entropy of the decoded distribution and its KL divergence from
the model's real output distribution, KL(final || lens).

Assumptions and traps.
- The final norm is applied with the statistics of the vector being decoded (TransformerLens
  PR #1077), which is what ``Model.unembed`` does; the last layer's ``resid_post`` then gives the
  model's logits exactly (tested to 1e-5).
- Any site in the residual basis can be decoded (``resid_pre``/``resid_mid``/``resid_post``,
  ``attn_out``/``mlp_out`` for direct contributions, ``embed``); ``final_norm`` is already
  normalised and is decoded with ``lm_head`` alone.
- Early layers often decode to junk: the basis drifts across depth. The tuned lens
  (``tuned_lens.py``) learns one affine map per layer to correct for that.

Example::

    >>> import lmscope as ls
    >>> from lmscope.lenses import logit_lens
    >>> model = ls.load_tiny("llama")
    >>> res = logit_lens(model, ["hello world"], k=3)
    >>> res.top_ids.shape[1] == model.shape.n_layers and res.top_ids.shape[-1] == 3
    True

On the bundled model, ``logit_lens(ls.load(), "The capital of Poland is", target=" Warsaw")`` shows
the answer becoming top-1 only in the last few of its 30 layers; ``res.emergence()`` gives the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.core.hooks import capture
from lmscope.core.inputs import Batch
from lmscope.core.model import Model
from lmscope.core.sites import RESIDUAL_BASIS_KINDS, Site, SiteLike, as_site

Translator = Callable[[Site, Tensor], Tensor]
"""Maps a site's hidden states (batch, seq, d_model) into the basis the unembedding reads."""

Targets = str | int | Sequence[str] | Sequence[int] | None


@dataclass
class LogitLensResult:
    """Per prompt, layer (site) and position: what the lens decodes.

    Tensors are aligned with the left-padded batch: axis ``seq`` includes padding, and ``mask``
    says which positions are real. Use :meth:`last` to pick each prompt's last real token.
    """

    model_id: str
    """Which model produced this."""
    lens: str
    """"logit" or "tuned" (used in titles)."""
    prompts: list[str]
    """The prompts, one row each."""
    sites: list[Site]
    """The decoded sites, in forward order (axis ``layer``)."""
    input_ids: Tensor
    """(batch, seq) left-padded token ids."""
    mask: Tensor
    """(batch, seq) 1 for real tokens."""
    top_ids: Tensor
    """(batch, layer, seq, k) top-k token ids of the decoded distribution."""
    top_probs: Tensor
    """(batch, layer, seq, k) their probabilities."""
    entropy: Tensor
    """(batch, layer, seq) entropy of the decoded distribution, nats."""
    kl_to_final: Tensor
    """(batch, layer, seq) KL(model output || lens), nats."""
    final_top_ids: Tensor
    """(batch, seq, k) the model's own top-k."""
    final_top_probs: Tensor
    """(batch, seq, k) and their probabilities."""
    target_ids: Tensor | None = None
    """(batch,) one target token per prompt, or None."""
    target_rank: Tensor | None = None
    """(batch, layer, seq) rank of the target (0 = top-1)."""
    target_prob: Tensor | None = None
    """(batch, layer, seq) probability of the target."""
    final_target_rank: Tensor | None = None
    """(batch, seq) rank of the target in the model's own output."""
    vocab: dict[int, str] = field(default_factory=dict)
    """Decoded strings of every token id that appears above."""

    # ---- indexing ------------------------------------------------------------------------------
    @property
    def last_index(self) -> Tensor:
        """(batch,) index of each prompt's last real token."""
        seq = torch.arange(self.mask.shape[1])
        return (self.mask.long() * (seq + 1)).argmax(-1)

    def last(self, t: Tensor) -> Tensor:
        """Each row's last real token from a per-layer tensor: (batch, layer, seq, ...) -> (batch, layer, ...)."""
        return t[torch.arange(t.shape[0]), :, self.last_index]

    def last_final(self, t: Tensor) -> Tensor:
        """Each row's last real token from a model-output tensor: (batch, seq, ...) -> (batch, ...)."""
        return t[torch.arange(t.shape[0]), self.last_index]

    def labels(self) -> list[str]:
        """Short names of the sites ("L12" for resid_post, else "attn_out.3")."""
        return [f"L{s.layer}" if s.kind == "resid_post" else (s.kind if s.layer is None else f"{s.kind}.{s.layer}")
                for s in self.sites]  # fmt: skip

    def tokens(self, row: int) -> list[str]:
        """The real input tokens of a prompt, decoded."""
        ids = self.input_ids[row][self.mask[row].bool()].tolist()
        return [self.vocab.get(i, f"<{i}>") for i in ids]

    def decode(self, token_id: int) -> str:
        return self.vocab.get(int(token_id), f"<{int(token_id)}>")

    # ---- summaries -----------------------------------------------------------------------------
    def model_correct(self) -> list[bool]:
        """Per prompt: is the target the model's own top-1 at the last token?"""
        if self.target_ids is None:
            raise ValueError("this result has no target; pass target=... to logit_lens")
        return (self.last_final(self.final_top_ids)[:, 0] == self.target_ids).tolist()

    def emergence(self, *, stay: bool = True, within: int = 1) -> list[int | None]:
        """Per prompt, the layer at which the target enters the top-``within`` at the last token.

        With ``stay=True`` (default) this is the first site from which the target stays in the
        top-``within`` at every later site; None if it is not there at the last site. With
        ``stay=False``, the first site where it is there at all. Returns that site's layer number.
        """
        if self.target_rank is None:
            raise ValueError("emergence needs a target; pass target=... to logit_lens")
        hits = self.last(self.target_rank) < within  # (batch, layer)
        out: list[int | None] = []
        for row in hits.tolist():
            if stay:
                i = len(row)
                while i > 0 and row[i - 1]:
                    i -= 1
                hit = i if i < len(row) else None
            else:
                hit = next((i for i, v in enumerate(row) if v), None)
            out.append(None if hit is None else self._layer_of(hit))
        return out

    def _layer_of(self, i: int) -> int:
        s = self.sites[i]
        return -1 if s.layer is None else s.layer

    def layer_table(self, row: int = 0) -> tuple[list[str], list[list[Any]]]:
        """(header, rows): one row per site at the prompt's last token."""
        header = ["layer", "top-1", "p", f"top-{self.top_ids.shape[-1]}", "entropy", "KL(final||lens)"]
        if self.target_ids is not None:
            header[3:3] = ["target rank", "target p"]
        last = int(self.last_index[row])
        rows = []
        for i, label in enumerate(self.labels()):
            ids, ps = self.top_ids[row, i, last].tolist(), self.top_probs[row, i, last].tolist()
            r: list[Any] = [label, self.decode(ids[0]), round(ps[0], 4), " ".join(repr(self.decode(t)) for t in ids),
                            round(float(self.entropy[row, i, last]), 3), round(float(self.kl_to_final[row, i, last]), 3)]
            if self.target_rank is not None and self.target_prob is not None:
                r[3:3] = [int(self.target_rank[row, i, last]), round(float(self.target_prob[row, i, last]), 4)]
            rows.append(r)
        return header, rows

    def summary_table(self) -> tuple[list[str], list[list[Any]]]:
        """(header, rows): one row per prompt with the model's answer and the emergence layer."""
        header = ["prompt", "model top-1"]
        answers = [self.decode(i) for i in self.last_final(self.final_top_ids)[:, 0].tolist()]
        if self.target_ids is None:
            return header, [[p, a] for p, a in zip(self.prompts, answers, strict=True)]
        header += ["target", "correct", "top-1 from layer", "first top-1", "top-10 from layer"]
        cols = [self.emergence(), self.emergence(stay=False), self.emergence(within=10)]
        dash = [["-" if v is None else v for v in col] for col in cols]
        rows = [[p, a, self.decode(t), c, *e] for p, a, t, c, *e in
                zip(self.prompts, answers, self.target_ids.tolist(), self.model_correct(), *dash, strict=True)]  # fmt: skip
        return header, rows

    def mean_curves(self) -> dict[str, list[float]]:
        """Per site, averaged over prompts at the last token: KL, entropy, and target stats if any."""
        out = {"kl_to_final": self.last(self.kl_to_final).mean(0).tolist(), "entropy": self.last(self.entropy).mean(0).tolist()}
        agree = (self.last(self.top_ids)[..., 0] == self.last_final(self.final_top_ids)[:, None, 0]).float()
        out["top1_agreement"] = agree.mean(0).tolist()
        if self.target_prob is not None and self.target_rank is not None:
            out["target_prob"] = self.last(self.target_prob).mean(0).tolist()
            out["target_rank_median"] = self.last(self.target_rank).float().median(0).values.tolist()
        return out

    # ---- output --------------------------------------------------------------------------------
    def heatmap(self, row: int = 0):
        """Figure: layers x positions, coloured by top-1 probability, each cell labelled with its top-1 token."""
        from lmscope.lenses._plots import lens_heatmap

        return lens_heatmap(self, row)

    def rank_plot(self):
        """Figure: the target's rank (log scale) and probability across layers, one line per prompt."""
        from lmscope.lenses._plots import rank_plot

        return rank_plot(self)

    def select(self, rows: Sequence[int]) -> LogitLensResult:
        """The same result restricted to some prompts (e.g. those the model answers correctly)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError("select needs at least one row")
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in picked.items():
            if isinstance(value, Tensor):
                picked[name] = value[idx]
        picked["prompts"] = [self.prompts[i] for i in idx.tolist()]
        return LogitLensResult(**picked)

    def view(self, row: int = 0) -> dict[str, Any]:
        """One prompt as the explorer's lens grid: layers x real positions, the top-k tokens and their
        probabilities, entropy, KL to the output, and the target's rank and probability if there is one."""
        real = self.mask[row].bool()
        top = self.top_ids[row][:, real]  # (layer, pos, k)
        doc: dict[str, Any] = {
            "view": "lens", "lens": self.lens, "model": self.model_id, "prompt": self.prompts[row],
            "tokens": self.tokens(row), "layers": self.labels(),
            "top": [[[self.decode(t) for t in cell] for cell in layer] for layer in top.tolist()],
            "p": self.top_probs[row][:, real].tolist(),
            "entropy": self.entropy[row][:, real].tolist(), "kl": self.kl_to_final[row][:, real].tolist(),
            "final": [self.decode(t) for t in self.final_top_ids[row][real][:, 0].tolist()],
            "target": None, "rank": None, "target_p": None,
        }  # fmt: skip
        if self.target_ids is not None and self.target_rank is not None and self.target_prob is not None:
            doc["target"] = self.decode(int(self.target_ids[row]))
            doc["rank"] = self.target_rank[row][:, real].tolist()
            doc["target_p"] = self.target_prob[row][:, real].tolist()
        return doc

    def _repr_html_(self) -> str:
        """In a notebook: the explorer's lens grid for the first prompt (hover a cell for its numbers)."""
        from lmscope.experiments.views import inline

        return inline(self.view(0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per prompt, the last token's per-layer stats and the top-1 grid over positions."""
        from lmscope.lenses._plots import result_dict

        return result_dict(self)

    def report(self, *, max_heatmaps: int = 8):  # -> lmscope.experiments.Result
        """The page: tables, rank/curve figures and per-prompt heatmaps."""
        from lmscope.lenses._plots import result_page

        return result_page(self, max_heatmaps=max_heatmaps)

    def save(self, folder: str | Path, *, max_heatmaps: int = 8) -> Path:
        """Write result.json, heatmap/rank PNGs and index.html."""
        return self.report(max_heatmaps=max_heatmaps).write(folder)


def resolve_sites(model: Model, sites: str | SiteLike | Sequence[SiteLike]) -> list[Site]:
    """A kind name ("resid_post") means that kind at every layer; otherwise Sites or hook names."""
    if isinstance(sites, str) and sites in RESIDUAL_BASIS_KINDS:
        kind = sites
        out = [Site(kind)] if kind in ("embed", "final_norm") else [Site(kind, layer) for layer in range(model.shape.n_layers)]
    else:
        items = [sites] if isinstance(sites, (str, Site)) else list(sites)
        out = [as_site(s) for s in items]
    if not out:
        raise ValueError("no sites to decode")
    for s in out:
        if s.kind not in RESIDUAL_BASIS_KINDS or s.head is not None:
            raise ValueError(f"{s} is not in the residual basis; the lens can decode {list(RESIDUAL_BASIS_KINDS)}")
        if s.layer is not None and s.layer >= model.shape.n_layers:
            raise ValueError(f"{s}: layer {s.layer} out of range; the model has {model.shape.n_layers} layers")
    return sorted(dict.fromkeys(out), key=lambda s: s.depth(model.shape.n_layers))


def resolve_targets(model: Model, target: Targets, n: int) -> Tensor | None:
    """One token id per prompt from a string/id (shared) or a list of them."""
    if target is None:
        return None
    items = [target] * n if isinstance(target, (str, int)) else list(target)
    if len(items) != n:
        raise ValueError(f"{len(items)} targets for {n} prompts; give one target or one per prompt")
    ids = []
    offenders = []
    for t in items:
        if isinstance(t, str):
            try:
                ids.append(model.token_id(t))
            except ValueError as exc:
                offenders.append(str(exc))
        else:
            tid = int(t)  # type: ignore[call-overload]
            if not 0 <= tid < model.shape.vocab:
                raise ValueError(f"target id {t} outside the vocabulary of {model.shape.vocab}")
            ids.append(tid)
    if offenders:
        raise ValueError(f"{len(offenders)} lens target(s) are not one token: {'; '.join(offenders)}. A lens target must "
                         "be one token (often with a leading space)")  # fmt: skip
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def logit_lens(
    model: Model,
    prompts: str | Sequence[str],
    target: Targets = None,
    *,
    sites: str | SiteLike | Sequence[SiteLike] = "resid_post",
    k: int = 5,
    chat: bool = False,
    batch_size: int = 8,
    translator: Translator | None = None,
    lens_name: str = "logit",
) -> LogitLensResult:
    """Decode ``sites`` (default: every layer's ``resid_post``) at every position of ``prompts``.

    Args:
        model: the lmscope Model.
        prompts: one prompt or several (left-padded into one batch).
        target: a token string (" Paris"), id, or one per prompt; enables rank/probability/emergence.
        sites: a residual-basis kind for all layers, or explicit Sites / hook names.
        k: how many top tokens to keep.
        chat: wrap prompts in the chat template.
        batch_size: prompts per forward pass.
        translator: optional map applied to each site's hidden states before unembedding (the
            tuned lens passes its per-layer affine translators here).
        lens_name: recorded in the result ("logit", "tuned").
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    site_list = resolve_sites(model, sites)
    batch = model.tokenize(items, chat=chat)
    tgt = resolve_targets(model, target, len(items))
    k = min(k, model.shape.vocab)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(items), batch_size):
        sub = Batch(*(t[start : start + batch_size] for t in (batch.input_ids, batch.attention_mask, batch.position_ids)))
        sub_tgt = None if tgt is None else tgt[start : start + batch_size].to(model.device)
        for name, value in _decode_batch(model, sub, site_list, sub_tgt, k, translator).items():
            parts.setdefault(name, []).append(value.cpu())
    out = {name: torch.cat(v) for name, v in parts.items()}
    seen = set(torch.cat([out["top_ids"].flatten(), out["final_top_ids"].flatten(), batch.input_ids.flatten().cpu()]).tolist())
    if tgt is not None:
        seen |= set(tgt.tolist())
    vocab = {i: model.tokenizer.decode([i]) for i in sorted(seen)}
    return LogitLensResult(
        model_id=model.model_id, lens=lens_name, prompts=items, sites=site_list,
        input_ids=batch.input_ids.cpu(), mask=batch.attention_mask.cpu(), target_ids=tgt, vocab=vocab, **out,
    )  # fmt: skip


def _decode_batch(
    model: Model, batch: Batch, sites: list[Site], target: Tensor | None, k: int, translator: Translator | None
) -> dict[str, Tensor]:
    with capture(model, sites) as acts:
        final = model(batch)
    assert final is not None
    final_logp = final.float().log_softmax(-1)  # (batch, seq, vocab)
    final_p = final_logp.exp()
    fv, fi = final_logp.topk(k, dim=-1)
    res: dict[str, list[Tensor]] = {"top_ids": [], "top_probs": [], "entropy": [], "kl_to_final": []}
    if target is not None:
        res["target_rank"], res["target_prob"] = [], []
    for site in sites:
        h = acts[site]
        if translator is not None:
            h = translator(site, h)
        logp = model.unembed(h, normalize=site.kind != "final_norm").float().log_softmax(-1)
        p = logp.exp()
        v, i = logp.topk(k, dim=-1)
        res["top_ids"].append(i)
        res["top_probs"].append(v.exp())
        res["entropy"].append(-(p * logp).sum(-1))
        res["kl_to_final"].append((final_p * (final_logp - logp)).sum(-1).clamp(min=0))
        if target is not None:
            t = logp.gather(-1, target[:, None, None].expand(-1, logp.shape[1], 1))  # (batch, seq, 1)
            res["target_rank"].append((logp > t).sum(-1))
            res["target_prob"].append(t[..., 0].exp())
    out = {name: torch.stack(v, dim=1) for name, v in res.items()}  # (batch, layer, seq, ...)
    out["final_top_ids"], out["final_top_probs"] = fi, fv.exp()
    if target is not None:
        t = final_logp.gather(-1, target[:, None, None].expand(-1, final_logp.shape[1], 1))
        out["final_target_rank"] = (final_logp > t).sum(-1)
    return out
