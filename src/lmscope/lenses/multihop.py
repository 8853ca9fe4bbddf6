"""Two-hop questions: when is the bridge entity resolved, and does backpatching rescue failures?

What it is. A two-hop query composes two facts: "The capital of the country where the Eiffel
Tower is located is" needs (Eiffel Tower -> France) then (France -> Paris). Biran et al. 2024
("Hopping Too Late: Exploring the Limitations of Large Language Models on Multi-Hop Queries")
find that the bridge entity is resolved in middle layers at the last token and the second hop
must then happen in the layers that remain; when it resolves too late, the query fails.
*Backpatching* copies the last token's hidden state from a later layer j back into an earlier
layer i < j of the same prompt and reruns, giving the second hop more layers: in their models up
to 66% of previously failed queries were then answered correctly (for some (j, i)).

Here:
- :func:`build_two_hop` composes queries only from the built-in one-hop tables (landmark/company ->
  country, country -> capital/language), after checking that the model answers each one-hop fact
  (so the bridge and the answer are facts the model knows); answers and bridges are single tokens.
- :func:`analyze_two_hop` decodes the last token at every layer (logit lens, or a tuned lens via
  ``translator``): the first layer where the bridge / the answer is in the top-k, and correctness.
- :func:`backpatch` sweeps (j, i) pairs on failed queries; a query is fixed when the patched run's
  top-1 next token is the answer. Controls: j -> j (a no-op, tested bitwise) and the same (j, i)
  grid with the vector taken from an unrelated prompt.

Example::

    >>> import lmscope as ls
    >>> from lmscope.lenses.multihop import compose
    >>> hop1 = {"the Eiffel Tower": "France"}
    >>> hop2 = {"France": "Paris", "Spain": "Madrid"}
    >>> [q["answer"] for q in compose(hop1, hop2, "The capital of the country where {} is located is")]
    ['Paris']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.data.bundled import load_json, load_jsonl
from lmscope.lenses.logit_lens import Translator

# (hop-1 relation, hop-2 relation) -> two-hop template; {} is the hop-1 subject.
TWO_HOP_TEMPLATES: dict[tuple[str, str], str] = {
    ("landmark_country", "country_capital"): "The capital of the country where {} is located is",
    ("landmark_country", "country_language"): "The main language spoken in the country where {} is located is",
    ("company_country", "country_capital"): "The capital of the country where {} was founded is",
    ("company_country", "country_language"): "The main language spoken in the country where {} was founded is",
}


@dataclass
class TwoHopDataset:
    """Queries composed from one-hop facts the model knows, and the one-hop checks behind them."""

    queries: list[dict[str, str]]
    """Each: prompt, subject, bridge, answer, hop1, hop2 (relation names)."""
    one_hop: dict[str, dict[str, Any]]
    """Relation -> {"checked", "correct", "accuracy", "known": {subject: object}}."""


def compose(hop1: dict[str, str], hop2: dict[str, str], template: str) -> list[dict[str, str]]:
    """Every query (subject -> bridge -> answer) whose two facts are both in the given tables."""
    return [{"prompt": template.format(s), "subject": s, "bridge": b, "answer": hop2[b]} for s, b in hop1.items() if b in hop2]


@torch.no_grad()
def _top1(model: Model, prompts: list[str], batch_size: int = 16) -> list[int]:
    out: list[int] = []
    for start in range(0, len(prompts), batch_size):
        batch = model.tokenize(prompts[start : start + batch_size])
        logits = model(batch)
        assert logits is not None
        out += logits[torch.arange(batch.shape[0]), batch.last_index].argmax(-1).tolist()
    return out


def _single(model: Model, word: str) -> int | None:
    ids = model.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def check_one_hop(model: Model, relation: str) -> dict[str, Any]:
    """Ask the model every single-token fact of a built-in relation; keep those it gets right."""
    template = load_json("relations/templates.json")[relation]["prompt"]
    facts = [r for r in load_jsonl(f"relations/{relation}.jsonl") if _single(model, r["object"]) is not None]
    if not facts:
        return {"checked": 0, "correct": 0, "accuracy": 0.0, "known": {}}
    top = _top1(model, [template.format(r["subject"]) for r in facts])
    known = {r["subject"]: r["object"] for r, t in zip(facts, top, strict=True) if t == _single(model, r["object"])}
    return {"checked": len(facts), "correct": len(known), "accuracy": len(known) / len(facts), "known": known}


def build_two_hop(model: Model, templates: dict[tuple[str, str], str] | None = None) -> TwoHopDataset:
    """Check each one-hop relation, then compose two-hop queries from the known facts only."""
    templates = templates or TWO_HOP_TEMPLATES
    relations = sorted({r for pair in templates for r in pair})
    one_hop = {r: check_one_hop(model, r) for r in relations}
    queries = []
    for (h1, h2), template in templates.items():
        for q in compose(one_hop[h1]["known"], one_hop[h2]["known"], template):
            queries.append({**q, "hop1": h1, "hop2": h2})
    return TwoHopDataset(queries, one_hop)


@dataclass
class TwoHopAnalysis:
    """Per query: correctness and the layers where the bridge and the answer become decodable."""

    queries: list[dict[str, Any]]
    """Each query dict plus: correct, model_top1, bridge_layer, answer_layer (None if never)."""
    within: int
    """"Decodable" means within the lens's top-``within`` at the last token."""
    lens: str

    def accuracy(self) -> float:
        return sum(q["correct"] for q in self.queries) / max(1, len(self.queries))

    def failed(self) -> list[dict[str, Any]]:
        return [q for q in self.queries if not q["correct"]]

    def summary(self) -> dict[str, Any]:
        def mean(key: str, group: list[dict[str, Any]]) -> float | None:
            vals = [q[key] for q in group if q[key] is not None]
            return None if not vals else round(sum(vals) / len(vals), 2)

        ok, bad = [q for q in self.queries if q["correct"]], self.failed()
        return {
            "n": len(self.queries), "accuracy": round(self.accuracy(), 4), "lens": self.lens, "within": self.within,
            "bridge_layer_mean": {"correct": mean("bridge_layer", ok), "failed": mean("bridge_layer", bad)},
            "answer_layer_mean": {"correct": mean("answer_layer", ok), "failed": mean("answer_layer", bad)},
            "bridge_found": {"correct": sum(q["bridge_layer"] is not None for q in ok),
                             "failed": sum(q["bridge_layer"] is not None for q in bad)},
            "bridge_before_answer": sum(q["bridge_layer"] is not None and q["answer_layer"] is not None
                                        and q["bridge_layer"] <= q["answer_layer"] for q in ok),
        }  # fmt: skip


@torch.no_grad()
def last_token_ranks(model: Model, prompts: Sequence[str], tokens: Tensor, *, translator: Translator | None = None,
                     batch_size: int = 16) -> Tensor:  # fmt: skip
    """(prompt, layer, n_tokens) rank of each of ``tokens[prompt]`` (prompt, n_tokens) at the last token, per layer."""
    n = model.shape.n_layers
    sites = [Site("resid_post", layer) for layer in range(n)]
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = model.tokenize(list(prompts[start : start + batch_size]))
        rows = torch.arange(batch.shape[0])
        with capture(model, sites) as acts:
            model(batch)
        ranks = []
        for site in sites:
            h = acts[site][rows, batch.last_index]  # (batch, d_model)
            if translator is not None:
                h = translator(site, h)
            logits = model.unembed(h).float()
            want = logits.gather(-1, tokens[start : start + batch_size].to(logits.device))  # (batch, n_tokens)
            ranks.append((logits[:, None, :] > want[..., None]).sum(-1))
        out.append(torch.stack(ranks, dim=1).cpu())
    return torch.cat(out)


def analyze_two_hop(model: Model, data: TwoHopDataset, *, within: int = 10, translator: Translator | None = None,
                    lens_name: str = "logit") -> TwoHopAnalysis:  # fmt: skip
    """Correctness and bridge/answer emergence (first layer within top-``within``) for every query."""
    qs = data.queries
    if not qs:
        raise ValueError("the two-hop dataset is empty: the model knows no composable pair of one-hop facts")
    ids = torch.tensor([[_single(model, q["bridge"]), _single(model, q["answer"])] for q in qs])
    ranks = last_token_ranks(model, [q["prompt"] for q in qs], ids, translator=translator)  # (query, layer, 2)
    top = _top1(model, [q["prompt"] for q in qs])
    out = []
    for k, q in enumerate(qs):
        first = [next((layer for layer in range(ranks.shape[1]) if ranks[k, layer, j] < within), None) for j in (0, 1)]
        out.append({**q, "correct": top[k] == int(ids[k, 1]), "model_top1": model.tokenizer.decode([top[k]]),
                    "bridge_layer": first[0], "answer_layer": first[1]})  # fmt: skip
    return TwoHopAnalysis(out, within, lens_name)


@dataclass
class BackpatchResult:
    """Backpatching over a (j, i) grid on failed queries, with controls."""

    pairs: list[tuple[int, int]]
    """(source layer j, target layer i), i < j."""
    fixed: Tensor
    """(query, pair) bool: top-1 became the answer."""
    control_fixed: Tensor
    """(query, pair) bool: same, with the vector from an unrelated prompt."""
    same_layer_fixed: Tensor
    """(query, layer of the grid) bool: j -> j (no-op control)."""
    queries: list[dict[str, Any]] = field(default_factory=list)

    def fix_rate(self) -> float:
        """Fraction of queries fixed by at least one (j, i) pair (the paper's measure)."""
        return float(self.fixed.any(1).float().mean()) if self.fixed.numel() else 0.0

    def control_rate(self) -> float:
        return float(self.control_fixed.any(1).float().mean()) if self.control_fixed.numel() else 0.0

    def best_pair(self) -> tuple[tuple[int, int], float]:
        rates = self.fixed.float().mean(0)
        k = int(rates.argmax())
        return self.pairs[k], float(rates[k])

    def heatmap(self):
        """Figure: fix rate per (j, i) over the failed queries."""
        from lmscope.experiments.report import new_figure

        js, is_ = sorted({j for j, _ in self.pairs}), sorted({i for _, i in self.pairs})
        grid = torch.full((len(js), len(is_)), float("nan"))
        rates = self.fixed.float().mean(0)
        for k, (j, i) in enumerate(self.pairs):
            grid[js.index(j), is_.index(i)] = rates[k]
        fig, ax = new_figure(figsize=(1.5 + 0.45 * len(is_), 1.2 + 0.4 * len(js)))
        im = ax.imshow(grid.numpy(), origin="lower", cmap="viridis", vmin=0)
        ax.set_xticks(range(len(is_)), is_)
        ax.set_yticks(range(len(js)), js)
        ax.set_xlabel("target layer i")
        ax.set_ylabel("source layer j")
        ax.set_title(f"backpatching fix rate ({self.fixed.shape[0]} failed queries)", fontsize=9)
        fig.colorbar(im, ax=ax)
        return fig

    def to_dict(self) -> dict[str, Any]:
        (bj, bi), best = self.best_pair() if self.pairs and self.fixed.numel() else ((None, None), 0.0)
        same = float(self.same_layer_fixed.any(1).float().mean()) if self.same_layer_fixed.numel() else 0.0
        fixed_any = self.fixed.any(1).tolist()
        return {"n_failed": self.fixed.shape[0], "pairs": self.pairs, "fix_rate_any_pair": self.fix_rate(),
                "control_unrelated_any_pair": self.control_rate(), "same_layer_any": same, "best_pair": [bj, bi],
                "best_pair_rate": best, "per_pair_rate": self.fixed.float().mean(0).tolist(),
                "fixed_queries": [q["prompt"] for q, f in zip(self.queries, fixed_any, strict=True) if f]}  # fmt: skip


def grid_pairs(n_layers: int, stride: int = 4) -> list[tuple[int, int]]:
    """(j, i) with i < j on a grid of ``stride`` (j from ``stride`` up; the last layer included)."""
    layers = sorted(set(range(0, n_layers, stride)) | {n_layers - 1})
    return [(j, i) for j in layers for i in layers if i < j]


@torch.no_grad()
def _patched_top1(model: Model, prompt: str, vectors: Tensor, targets: Sequence[int], *, reuse_prefix: bool = True) -> list[int]:
    """Row r: replace the last token's resid_post at layer targets[r] by vectors[r]; the top-1 next token.

    Only the last token differs between rows, so by default the prompt's prefix is run once and its
    KV cache repeated for every row (causal attention: the prefix cannot see the patch).
    """
    n = len(targets)
    ids = model.tokenize(prompt).input_ids  # (1, seq)
    last = ids.shape[1] - 1
    plan: dict[Site | str, list[edits.Edit]] = {}
    for row, layer in enumerate(targets):
        where = torch.full((n,), -1, dtype=torch.long)
        where[row] = last
        plan.setdefault(Site("resid_post", layer), []).append(edits.replace(vectors[row], positions=where))
    if not reuse_prefix or last == 0:
        with intervene(model, plan):
            logits = model(ids.expand(n, -1))
        assert logits is not None
        return logits[:, -1].argmax(-1).tolist()
    first = model.hf(input_ids=ids[:, :last], use_cache=True)
    prefix = getattr(first, "cache", None) or first.past_key_values
    prefix.batch_repeat_interleave(n)
    cache_arg = "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"
    pos = torch.full((n, 1), last, dtype=torch.long, device=ids.device)
    with intervene(model, plan):
        mask = torch.ones(n, last + 1, dtype=torch.long, device=ids.device)
        out = model.hf(input_ids=ids[:, last:].expand(n, -1), position_ids=pos, attention_mask=mask, use_cache=True,
                       **{cache_arg: prefix})  # fmt: skip
    return out.logits[:, -1].argmax(-1).tolist()


@torch.no_grad()
def _last_states(model: Model, prompt: str) -> Tensor:
    sites = [Site("resid_post", layer) for layer in range(model.shape.n_layers)]
    with capture(model, sites) as acts:
        model(prompt)
    return torch.stack([acts[s][0, -1] for s in sites])  # (layer, d_model)


def backpatch(model: Model, queries: Sequence[dict[str, Any]], *, pairs: Sequence[tuple[int, int]] | None = None,
              control_prompt: str = "The weather today is sunny and", chunk: int = 64,
              progress: Callable[[str], None] | None = None) -> BackpatchResult:  # fmt: skip
    """Backpatch every (j, i) pair into each query; controls: j -> j and the unrelated prompt's vectors.

    A query needs "prompt" and "answer" (a word whose " word" is one token) or "answer_id".
    """
    n = model.shape.n_layers
    pairs = list(pairs) if pairs is not None else grid_pairs(n)
    if any(not (0 <= i < j < n) for j, i in pairs):
        raise ValueError(f"pairs must satisfy 0 <= i < j < {n}")
    control = _last_states(model, control_prompt)
    same_layers = sorted({j for j, _ in pairs} | {i for _, i in pairs})
    fixed, ctrl, same = [], [], []
    for n_done, q in enumerate(queries):
        if progress:
            progress(f"backpatching query {n_done + 1}/{len(queries)}")
        answer = q["answer_id"] if "answer_id" in q else _single(model, q["answer"])
        states = _last_states(model, q["prompt"])
        rows: list[tuple[Tensor, int]] = [(states[j], i) for j, i in pairs] + [(control[j], i) for j, i in pairs]
        rows += [(states[layer], layer) for layer in same_layers]
        top: list[int] = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            top += _patched_top1(model, q["prompt"], torch.stack([v for v, _ in part]), [t for _, t in part])
        hit = [t == answer for t in top]
        fixed.append(hit[: len(pairs)])
        ctrl.append(hit[len(pairs) : 2 * len(pairs)])
        same.append(hit[2 * len(pairs) :])
    as_t = lambda x, w: torch.tensor(x, dtype=torch.bool).reshape(len(queries), w)  # noqa: E731
    return BackpatchResult(pairs, as_t(fixed, len(pairs)), as_t(ctrl, len(pairs)), as_t(same, len(same_layers)), list(queries))


def save_multihop(folder: str | Path, data: TwoHopDataset, analysis: TwoHopAnalysis, patch: BackpatchResult | None) -> Path:
    """result.json + index.html (+ backpatching heatmap)."""
    return multihop_page(data, analysis, patch).write(folder)


def multihop_page(data: TwoHopDataset, analysis: TwoHopAnalysis, patch: BackpatchResult | None) -> Any:
    """The :class:`~lmscope.experiments.Result` of a two-hop analysis (and backpatching, if run)."""
    from lmscope.experiments.report import Result

    report = Result("Two-hop queries and backpatching")
    report.table("One-hop checks", ["relation", "checked", "correct", "accuracy"],
                 [[r, v["checked"], v["correct"], round(v["accuracy"], 3)] for r, v in data.one_hop.items()])  # fmt: skip
    s = analysis.summary()
    report.text("Two-hop", f"{s['n']} queries, accuracy {s['accuracy']:.3f}; {analysis.lens} lens, "
                           f"decodable = top-{analysis.within}")  # fmt: skip
    report.table("Queries", ["prompt", "answer", "model", "correct", "bridge layer", "answer layer"],
                 [[q["prompt"], q["answer"], q["model_top1"], q["correct"], q["bridge_layer"], q["answer_layer"]]
                  for q in analysis.queries])  # fmt: skip
    result: dict[str, Any] = {"one_hop": {r: {k: v for k, v in d.items() if k != "known"} for r, d in data.one_hop.items()},
                              "two_hop": s, "queries": analysis.queries}  # fmt: skip
    if patch is not None and patch.fixed.numel():
        report.figure("backpatch_heatmap", patch.heatmap(), "Fix rate per (source j, target i)")
        result["backpatching"] = patch.to_dict()
    report.data = result
    return report
