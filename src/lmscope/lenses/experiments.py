"""The lens family's experiments: logit lens, tuned lens (train, compare), Patchscopes, two-hop queries.

    >>> from lmscope.lenses.experiments import LogitLens
    >>> LogitLens(prompt=("The capital of Poland is",), target=" Warsaw").config()["target"]
    ' Warsaw'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmscope.data.corpus import CORPUS_HELP, user_files, user_inputs
from lmscope.experiments import Context, Experiment, Layers, Result, param, resolve_layers
from lmscope.lenses.tuned_lens import TunedLensConfig

DEMO_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"), ("Japan", " Tokyo"),
    ("Russia", " Moscow"), ("Greece", " Athens"), ("Poland", " Warsaw"), ("Egypt", " Cairo"), ("Canada", " Ottawa"),
)  # fmt: skip
"""(country, capital): the demo keeps the ones the model answers correctly at its last layer."""


def _tuned(path: str | None, model: Any) -> tuple[Any, str]:
    if not path:
        return None, "logit"
    from lmscope.lenses.tuned_lens import TunedLens

    return TunedLens.load(path, model).translate, "tuned"


def _relation(name: str) -> list[tuple[str, str]]:
    """(prompt, " object") for every subject of a built-in fact table; unknown names are refused."""
    from lmscope.data.bundled import load_json, load_jsonl

    templates = load_json("relations/templates.json")
    if name not in templates:
        raise ValueError(f"unknown relation {name!r}; built-in: {sorted(templates)}")
    return [(templates[name]["prompt"].format(r["subject"]), " " + r["object"]) for r in load_jsonl(f"relations/{name}.jsonl")]


def _need_file(path: str | None, what: str) -> None:
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")


@dataclass(frozen=True)
class LogitLens(Experiment):
    """Decode every layer of the residual stream (logit lens, or a trained tuned lens with --tuned).

    lmscope lens "The capital of Poland is" --target " Warsaw"
    lmscope lens --prompts facts.jsonl          # {"prompt": ..., "target": ...} per line, or plain text lines
    lmscope lens --relation country_capital     # a built-in fact table
    lmscope lens --demo                         # capital prompts, emergence layers
    """

    command = "lens"
    about = "logit lens: decode every layer of the residual stream"
    prompt: tuple[str, ...] = param((), "prompt(s) to decode", positional=True, split=False)
    target: str | None = param(None, 'target token for rank/emergence, e.g. " Warsaw" (one token)')
    prompts: str | None = param(None, 'prompt file: JSONL of {"prompt", "target"} records or text lines', metavar="FILE")
    relation: str | None = param(None, "built-in fact table, e.g. country_capital")
    demo: bool = param(False, "the built-in capital prompts")
    only_correct: bool = param(False, "keep only prompts whose target is the model's top-1")
    limit: int | None = param(None, "use at most this many prompts")
    site: str = param("resid_post", "residual-basis kind to decode", choices=("resid_pre", "resid_mid", "resid_post",
                                                                              "attn_out", "mlp_out"))  # fmt: skip
    tuned: str | None = param(None, "decode with a trained tuned lens (.safetensors)", metavar="FILE")
    k: int = param(5, "top-k tokens kept")
    chat: bool = param(False, "wrap prompts in the chat template")

    def check(self) -> None:
        given = [bool(self.prompt), bool(self.prompts), bool(self.relation), self.demo]
        if sum(given) != 1:
            raise ValueError("give exactly one of: prompt text, --prompts FILE, --relation NAME, --demo")
        _need_file(self.tuned, "tuned lens")
        if self.relation:
            _relation(self.relation)
        self._records_from_file()

    def _records_from_file(self) -> tuple[list[str], list[str] | None] | None:
        if not self.prompts:
            return None
        from lmscope.data.bundled import read_prompts

        recs = read_prompts(self.prompts, extra=("target",))
        return [r["prompt"] for r in recs], ([r["target"] for r in recs] if "target" in recs[0] else None)

    def inputs(self) -> Any:
        return self._records_from_file()

    def records(self, model: Any) -> tuple[list[str], list[str] | None, str]:
        """Prompts, targets (or None) and where they came from."""
        if self.demo:
            return [f"The capital of {c} is" for c, _ in DEMO_CAPITALS], [t for _, t in DEMO_CAPITALS], "demo capitals"
        if self.prompts:
            prompts, targets = self._records_from_file()  # type: ignore[misc]
            return prompts, targets, self.prompts
        if self.relation:
            pairs = _relation(self.relation)
            keep = [(p, t) for p, t in pairs if len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) == 1]
            return [p for p, _ in keep], [t for _, t in keep], f"relation {self.relation} (single-token objects)"
        return list(self.prompt), (None if self.target is None else [self.target] * len(self.prompt)), "command line"

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.lenses import logit_lens

        prompts, targets, source = self.records(model)
        if self.limit is not None:
            prompts, targets = prompts[: self.limit], (None if targets is None else targets[: self.limit])
        translator, lens_name = _tuned(self.tuned, model)
        ctx.log(f"{lens_name} lens over {len(prompts)} prompts from {source}")
        res = logit_lens(model, prompts, targets, sites=self.site, k=self.k, chat=self.chat, translator=translator,
                         lens_name=lens_name)  # fmt: skip
        notes = []
        if targets is not None and (self.only_correct or self.demo):
            keep = [i for i, ok in enumerate(res.model_correct()) if ok]
            notes.append(f"{len(keep)} of {len(prompts)} prompts ({source}) are answered correctly at the last layer; kept those")
            if not keep:
                raise ValueError("the model answers none of the prompts correctly; nothing to show")
            res = res.select(keep)
        page = res.report()
        page.lines += notes
        page.summary = {"lens": lens_name, "prompts": len(res.prompts), "source": source}
        if targets is not None:
            layers = sorted(e for e in res.emergence() if e is not None)
            page.summary |= {"emerged": len(layers), "emergence_median": layers[len(layers) // 2] if layers else None,
                             "emergence_min": layers[0] if layers else None, "n_sites": len(res.sites)}  # fmt: skip
            if layers:
                page.say(f"target becomes top-1 and stays from layer {layers[0]}..{layers[-1]} (median "
                         f"{layers[len(layers) // 2]}) of {len(res.sites)} decoded sites, for {len(layers)} of "
                         f"{len(res.prompts)} prompts")  # fmt: skip
        if len(res.prompts) == 1:
            header, rows = res.layer_table(0)
            page.say(f"{lens_name} lens: {res.prompts[0]!r}; last layers' top-1: " + ", ".join(str(r[1]) for r in rows[-3:]))
        return page


@dataclass(frozen=True)
class TunedLensTrain(Experiment):
    """Train a tuned lens (Belrose et al. 2023) on the corpus; Ctrl-C and rerun resumes from the checkpoint in --out."""

    command = "tuned-lens train"
    about = "train tuned-lens translators (checkpoints and resume in --out), then compare with the logit lens"
    tokens: int = param(TunedLensConfig.train_tokens, "training tokens")
    seq_len: int = param(TunedLensConfig.seq_len, "tokens per window")
    batch_size: int = param(TunedLensConfig.batch_size, "windows per step")
    lr: float = param(TunedLensConfig.lr, "Adam peak learning rate")
    warmup: int = param(TunedLensConfig.warmup_steps, "warm-up steps")
    checkpoint_every: int = param(TunedLensConfig.checkpoint_every, "steps between checkpoints")
    exact: bool = param(False, "exact full-vocabulary KL (slow on CPU) instead of the sampled softmax")
    compare_windows: int = param(12, "held-out windows to compare on afterwards (0: skip)")
    corpus: tuple[str, ...] = param((), CORPUS_HELP)

    def check(self) -> None:
        user_files(self.corpus)

    def inputs(self) -> Any:
        return user_inputs(self.corpus)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.lenses.tuned_lens import FINAL, train_tuned_lens

        cfg = TunedLensConfig(train_tokens=self.tokens, seq_len=self.seq_len, batch_size=self.batch_size, lr=self.lr,
                              warmup_steps=self.warmup, checkpoint_every=self.checkpoint_every,
                              sampled_vocab=None if self.exact else TunedLensConfig.sampled_vocab,
                              corpus=self.corpus)  # fmt: skip
        lens = train_tuned_lens(model, cfg, out=ctx.folder(), progress=not ctx.quiet)
        if self.compare_windows:
            page = _comparison(model, lens, self.compare_windows, self.seq_len)
        else:
            page = Result("Tuned lens", summary={})
        page.title = f"Tuned lens trained on {model.model_id}"
        page.summary = {"steps": cfg.steps, "tokens": self.tokens, **page.summary}
        page.artifacts["tuned_lens"] = FINAL
        page.say(f"trained {cfg.steps} steps -> {ctx.folder() / FINAL}")
        return page


def _comparison(model: Any, lens: Any, windows: int, seq_len: int) -> Result:
    from lmscope.lenses.compare import compare_lenses

    cmp = compare_lenses(model, lens, n_windows=windows, seq_len=seq_len)
    page = cmp.report()
    wins = cmp.tuned_beats_logit()
    page.summary = {"positions_per_layer": cmp.n_tokens, "tuned_wins": sum(wins), "layers": len(wins)}
    page.say(f"tuned lens has lower KL at {sum(wins)} of {len(wins)} layers on {cmp.n_tokens} held-out positions"
             f"{'' if wins[-1] else ' (the last layer is the identity: both are exact there)'}")  # fmt: skip
    return page


@dataclass(frozen=True)
class TunedLensCompare(Experiment):
    """Logit lens vs a trained tuned lens on held-out text: KL to the output and top-1 agreement per layer."""

    command = "tuned-lens compare"
    about = "logit vs tuned lens on held-out text"
    lens: str = param("", "a tuned_lens.safetensors file", required=True, metavar="FILE")
    windows: int = param(12, "held-out windows")
    seq_len: int = param(64, "tokens per window")

    def check(self) -> None:
        _need_file(self.lens, "tuned lens")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.lenses.tuned_lens import TunedLens

        return _comparison(model, TunedLens.load(self.lens, model), self.windows, self.seq_len)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "source"


@dataclass(frozen=True)
class Patchscope(Experiment):
    """Patch a hidden state into a target prompt and read what the model says (Ghandeharioun et al. 2024).

    lmscope patchscope "Diana, Princess of Wales" --preset description --layers 0-29:3
    lmscope patchscope "The capital of France is" --preset next_token
    lmscope patchscope "Paris" --target-prompt "Tell me about x" --target-layer 4 --layers 0-20:2
    lmscope patchscope --relation country_capital --preset next_token --layers 0-29:3   # next-token curve vs the logit lens
    """

    command = "patchscope"
    about = "Patchscopes: decode a hidden state by patching it into a target prompt"
    source: tuple[str, ...] = param((), "source prompt(s); one layer sweep each", positional=True, split=False)
    prompts: str | None = param(None, "prompt file of source prompts (JSONL with 'prompt', or text lines)", metavar="FILE")
    relation: str | None = param(None, "source prompts from a built-in fact table, e.g. country_capital")
    preset: str = param("description", "target prompt preset (ignored with --target-prompt)",
                        choices=("identity", "description", "next_token"))  # fmt: skip
    target_prompt: str | None = param(None, "custom target prompt")
    layers: Layers = param(None, "source layers (default all)")
    target_layer: int | None = param(None, "fixed target layer (default: the source layer)")
    source_position: int = param(-1, "token index in the source prompt")
    target_position: int = param(-1, "token index in the target prompt")
    site: str = param("resid_post", "residual-basis kind read and written")
    max_new_tokens: int = param(16, "tokens generated per patch")
    expect: tuple[str, ...] = param((), "words a faithful description would contain (scored per layer, any source)")

    def check(self) -> None:
        if sum(map(bool, (self.source, self.prompts, self.relation))) != 1:
            raise ValueError("give source prompt text, --prompts FILE or --relation NAME (one of them)")
        self.inputs()

    def inputs(self) -> Any:
        from lmscope.data.bundled import prompt_texts

        if self.relation:
            return [p for p, _ in _relation(self.relation)]
        return prompt_texts(self.source, self.prompts)

    @property
    def next_token_inspection(self) -> bool:
        """The preset that reads the state's own next token, at the last position (compared with the logit lens)."""
        return self.target_prompt is None and self.preset == "next_token" and self.source_position == -1

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.lenses.patchscopes import PRESETS, patchscope_sweep

        layers = resolve_layers(self.layers, model.shape.n_layers)
        target = self.target_prompt if self.target_prompt is not None else PRESETS[self.preset]
        max_new = 1 if (self.target_prompt is None and self.preset == "next_token") else self.max_new_tokens
        page = Result(f"Patchscope: {target!r}")
        sweeps, hits, matches = {}, [], []
        sources = self.inputs()
        for source in ctx.progress(sources, "sources"):
            sweep = patchscope_sweep(model, source, source_layers=layers, target_layer=self.target_layer,
                                     source_position=self.source_position, target_prompt=target,
                                     target_position=self.target_position, kind=self.site, max_new_tokens=max_new)  # fmt: skip
            sub = sweep.report(f"Patchscope: {source}")
            page.sections += [(f"{source}: {h}", b) for h, b in sub.sections]
            sweeps[source] = sub.data
            matches.append(sweep.first_token_matches())
            row = sweep.rows[0]
            page.say(f"{source!r} at token {row.source_token!r}: model's next token {sweep.model_next_token!r}; "
                     f"patched into {target!r}: " + "; ".join(f"L{r.source_layer} {r.continuation!r}"
                                                               for r in sweep.rows[:: max(1, len(sweep.rows) // 4)]))  # fmt: skip
            if self.expect:
                per_word = [sweep.contains(w) for w in self.expect]
                hits += [any(col) for col in zip(*per_word, strict=True)]
        page.data = {"target_prompt": target, "layers": layers, "sources": sweeps}
        page.summary = {"sources": len(sweeps), "layers": len(layers)}
        if self.expect:
            page.summary["expect_hit_rate"] = sum(hits) / len(hits)
            page.say(f"{sum(hits)} of {len(hits)} (source, layer) patches mention one of {list(self.expect)}")
        if self.next_token_inspection:
            _next_token_curve(page, model, sources, layers, matches, self.site)
        return page


def _next_token_curve(page: Result, model: Any, sources: list[str], layers: list[int], matches: list[list[bool]],
                      kind: str) -> None:  # fmt: skip
    """Precision@1 per layer of next-token inspection (the patched first token is the model's own next token)
    beside the logit lens's (its top-1 at that layer is the model's top-1), on the same prompts and states."""
    from lmscope.experiments import new_figure
    from lmscope.lenses import logit_lens

    lens = logit_lens(model, sources, sites=kind, k=1)
    column = {site.layer: i for i, site in enumerate(lens.sites)}
    top = lens.last(lens.top_ids)[..., 0]  # (prompt, site)
    final = lens.last_final(lens.final_top_ids)[..., 0]  # (prompt,)
    patch = [sum(m[i] for m in matches) / len(matches) for i in range(len(layers))]
    logit = [float((top[:, column[layer]] == final).float().mean()) for layer in layers]
    gaps = [p - q for p, q in zip(patch, logit, strict=True)]
    rows = [[layer, round(p, 3), round(q, 3), round(p - q, 3)] for layer, p, q in zip(layers, patch, logit, strict=True)]
    page.table("Next-token precision@1 by layer", ["layer", "patchscope", "logit lens", "difference"], rows)
    fig, ax = new_figure(figsize=(7, 3.5))
    ax.plot(layers, patch, marker="o", ms=3, label="Patchscope (next-token preset)")
    ax.plot(layers, logit, marker="s", ms=3, label="logit lens")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("source layer")
    ax.set_ylabel("precision@1 vs the model's next token")
    ax.set_title(f"next-token inspection, {len(sources)} prompts")
    ax.legend()
    page.figure("next_token_precision", fig)
    page.data["next_token"] = {"layers": layers, "patchscope": patch, "logit_lens": logit}
    page.summary |= {"next_token_precision_mean": sum(patch) / len(patch), "lens_precision_mean": sum(logit) / len(logit),
                     "next_token_minus_lens": sum(gaps) / len(gaps),
                     "layers_above_lens": sum(g > 0 for g in gaps), "layers_below_lens": sum(g < 0 for g in gaps)}  # fmt: skip
    page.say(f"next-token precision@1 over {len(sources)} prompts: Patchscope mean {sum(patch) / len(patch):.2f}, "
             f"logit lens {sum(logit) / len(logit):.2f}; above the lens at {sum(g > 0 for g in gaps)} of {len(layers)} layers")


@dataclass(frozen=True)
class MultiHop(Experiment):
    """Two-hop queries from known one-hop facts: where bridge and answer emerge, and backpatching the failures."""

    command = "multihop"
    about = "two-hop queries: bridge/answer emergence and backpatching"
    within: int = param(10, '"decodable" = within the lens top-k')
    tuned: str | None = param(None, "decode with a trained tuned lens instead of the logit lens", metavar="FILE")
    max_failed: int = param(20, "backpatch at most this many failed queries (0: skip)")
    stride: int = param(4, "(j, i) grid stride for backpatching")
    limit: int | None = param(None, "use at most this many two-hop queries")

    def check(self) -> None:
        _need_file(self.tuned, "tuned lens")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.lenses.multihop import analyze_two_hop, backpatch, build_two_hop, grid_pairs, multihop_page

        data = build_two_hop(model)
        if self.limit is not None:
            data.queries = data.queries[: self.limit]
        translator, lens_name = _tuned(self.tuned, model)
        ctx.log(f"{len(data.queries)} two-hop queries; decoding with the {lens_name} lens")
        analysis = analyze_two_hop(model, data, within=self.within, translator=translator, lens_name=lens_name)
        s = analysis.summary()
        patch = None
        failed = analysis.failed()[: self.max_failed]
        summary: dict[str, Any] = {"queries": s["n"], "two_hop_accuracy": s["accuracy"]}
        if failed and self.max_failed > 0:
            pairs = grid_pairs(model.shape.n_layers, self.stride)
            ctx.log(f"backpatching {len(failed)} failed queries over {len(pairs)} (j, i) pairs (+ controls)")
            patch = backpatch(model, failed, pairs=pairs, progress=None if ctx.quiet else ctx.log)
            (bj, bi), best = patch.best_pair()
            summary |= {"backpatch_fix_rate": patch.fix_rate(), "control_fix_rate": patch.control_rate(),
                        "best_pair": [bj, bi], "best_pair_rate": best, "failed_patched": len(failed)}  # fmt: skip
        page = multihop_page(data, analysis, patch)
        page.summary = summary
        page.say(f"{s['n']} two-hop queries from known facts; two-hop accuracy {s['accuracy']:.3f}")
        if patch is not None:
            page.say(f"backpatching fixes {summary['backpatch_fix_rate']:.3f} of {len(failed)} failed queries "
                     f"(control with an unrelated prompt's vectors {summary['control_fix_rate']:.3f}; Biran et al. 2024: "
                     "up to 0.66 on larger models)")  # fmt: skip
        return page
