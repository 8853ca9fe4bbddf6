"""The single-neuron family's experiments: record, top contexts, correlate, ablate, dose-response.

The built-in behaviour is "inside a Python string literal", labelled from the installed corpus.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from lmscope.data.corpus import CORPUS_HELP, user_files, user_inputs
from lmscope.experiments import Context, Experiment, Layers, Result, Strengths, new_figure, param, resolve_layers

STRINGS = ("all", "inline")


@dataclass(frozen=True)
class NeuronsRecord(Experiment):
    """Harvest mlp_post of some layers over the corpus into an activation store (resumable) in --out."""

    command = "neurons record"
    about = "harvest mlp_post of some layers over the corpus into an activation store"
    layers: Layers = param(None, "layers to record", required=True)
    tokens: int = param(65536, "tokens to store")
    seq_len: int = param(128, "window length")
    corpus: tuple[str, ...] = param((), CORPUS_HELP)

    def check(self) -> None:
        user_files(self.corpus)

    def inputs(self) -> Any:
        return user_inputs(self.corpus)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.neurons import record

        layers = resolve_layers(self.layers, model.shape.n_layers)
        store = record(model, layers, ctx.folder() / "store", n_tokens=self.tokens, seq_len=self.seq_len,
                       progress=not ctx.quiet, corpus=self.corpus)  # fmt: skip
        page = Result(f"Recorded mlp_post of layers {layers}", summary={"tokens": self.tokens, "layers": layers})
        page.artifacts["store"] = "store"
        page.say(str(store))
        return page


@dataclass(frozen=True)
class NeuronsTop(Experiment):
    """Top-activating contexts of neurons, read from a recorded store."""

    command = "neurons top"
    about = "top-activating contexts of neurons from a recorded store"
    store: str = param("", "store folder written by `neurons record` (its store/ subfolder)", required=True)
    layer: int = param(0, "layer of the neurons")
    neurons: tuple[int, ...] = param((), "neuron indices", required=True)
    k: int = param(10, "contexts per neuron")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments.store import ActivationStore
        from lmscope.neurons import top_examples

        store = ActivationStore(self.store)
        site = f"blocks.{self.layer}.mlp.hook_post"
        page = Result(f"Top contexts of L{self.layer} neurons {list(self.neurons)}")
        tops = top_examples(store, site, list(self.neurons), tokenizer=model.tokenizer, k=self.k)
        for neuron, exs in tops.items():
            page.table(f"Neuron L{self.layer}.{neuron}", ["activation", "context"], [[e.value, e.highlighted()] for e in exs])
            page.say(f"neuron L{self.layer}.{neuron}: " + " | ".join(f"{e.value:.2f} {e.highlighted()!r}" for e in exs[:3]))
        page.data = {str(n): [{"value": e.value, "context": e.highlighted()} for e in exs] for n, exs in tops.items()}
        return page


@dataclass(frozen=True)
class NeuronsCorrelate(Experiment):
    """Rank neurons by AUROC for a token label on a train split; check them on a held-out split.

    The label is "inside a Python string literal" on the standard library's code, or ``--label REGEX``
    (a token inside a match) on any corpus, e.g. ``--corpus notes.jsonl --label '"[^"]*"'``.
    """

    command = "neurons correlate"
    about = "rank neurons by AUROC for a token label: inside a string literal, or a regex on your corpus (held-out check)"
    layers: Layers = param(None, "layers to scan", required=True)
    train_windows: int = param(200, "train windows")
    heldout_windows: int = param(100, "held-out windows")
    top: int = param(10, "candidates kept")
    seq_len: int = param(128, "window length")
    strings: str = param("all", "label: inside any string literal, or only single-quoted ones", choices=STRINGS)
    label: str | None = param(None, "label tokens inside matches of this regular expression instead (any corpus)",
                              metavar="REGEX")  # fmt: skip
    corpus: tuple[str, ...] = param((), CORPUS_HELP + " (with --label)")

    def check(self) -> None:
        import re

        if self.corpus and self.label is None:
            raise ValueError("--corpus needs --label REGEX: the string-literal label is defined on the stdlib's code only")
        if self.label is not None:
            try:
                re.compile(self.label)
            except re.error as exc:
                raise ValueError(f"--label {self.label!r} is not a regular expression: {exc}") from None
        user_files(self.corpus)

    def inputs(self) -> Any:
        return user_inputs(self.corpus)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.neurons import correlate, pattern_windows, string_windows

        layers = resolve_layers(self.layers, model.shape.n_layers)
        tq = self.strings == "all"

        def windows(n: int, split: str) -> Any:
            if self.label is None:
                return string_windows(model.tokenizer, n_windows=n, seq_len=self.seq_len, split=split, triple_quoted=tq)
            return pattern_windows(model.tokenizer, self.label, n_windows=n, seq_len=self.seq_len, split=split,
                                   sources=self.corpus)  # fmt: skip

        tr, ho = windows(self.train_windows, "train"), windows(self.heldout_windows, "heldout")
        ctx.log(f"correlating layers {layers} over {self.train_windows} train windows")
        res = correlate(model, layers, tr.ids, tr.labels, ho.ids, ho.labels, top=self.top,
                        progress=None if ctx.quiet else ctx.log)  # fmt: skip
        what = "inside a string literal" if self.label is None else f"inside a match of {self.label!r}"
        page = Result(f"Neurons correlated with '{what}'")
        page.table("Candidates (ranked by |train AUROC - 0.5|)", ["layer", "neuron", "train AUROC", "train r",
                   "held-out AUROC", "held-out r"], [[c.layer, c.neuron, c.train_auroc, c.train_r, c.heldout_auroc,
                                                       c.heldout_r] for c in res.candidates])  # fmt: skip
        fig, ax = new_figure(figsize=(6, 3))
        ax.hist(res.train_auroc.numpy(), bins=100)
        ax.set_xlabel("train AUROC (all neurons)")
        page.figure("auroc_hist", fig, "AUROC of every neuron on the train split")
        page.data = {"n_train_tokens": res.n_train, "n_heldout_tokens": res.n_heldout, "positive_rate": res.positive_rate,
                     "candidates": [asdict(c) for c in res.candidates]}  # fmt: skip
        c = res.candidates[0]
        page.summary = {"top_layer": c.layer, "top_neuron": c.neuron, "train_auroc": c.train_auroc,
                        "heldout_auroc": c.heldout_auroc}  # fmt: skip
        page.say(f"top neuron L{c.layer}.{c.neuron}: train AUROC {c.train_auroc:.3f}, held-out AUROC {c.heldout_auroc:.3f}")
        return page


def _eval_windows(model: Any, windows: int, seq_len: int, strings: str, score: str) -> tuple[Any, Any, Any]:
    from lmscope.neurons import string_windows

    ho = string_windows(model.tokenizer, n_windows=windows, seq_len=seq_len, split="heldout", seed=1,
                        triple_quoted=strings == "all")  # fmt: skip
    ref = string_windows(model.tokenizer, n_windows=32, seq_len=seq_len, split="train", seed=1)
    return ho, ref, ho.labels if score == "strings" else None


def _summ(effects: list[Any]) -> dict[str, dict[str, float]]:
    out = {}
    for name in ("kl", "dlogp", "top1_change"):
        vals = [getattr(e, name) for e in effects]
        out[name] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}
    return out


@dataclass(frozen=True)
class NeuronsAblate(Experiment):
    """Zero, mean and resample ablation of neurons on held-out text, beside random neuron sets of the same size."""

    command = "neurons ablate"
    about = "zero/mean/resample ablation vs random-neuron controls"
    layer: int = param(0, "layer of the neurons")
    neurons: tuple[int, ...] = param((), "neuron indices", required=True)
    windows: int = param(16, "held-out windows to score on")
    controls: int = param(5, "random-neuron control draws")
    score: str = param("strings", "positions scored", choices=("strings", "all"))
    seq_len: int = param(128, "window length")
    strings: str = param("all", "label: inside any string literal, or only single-quoted ones", choices=STRINGS)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.neurons import ablate

        ho, ref, mask = _eval_windows(model, self.windows, self.seq_len, self.strings, self.score)
        res = ablate(model, self.layer, list(self.neurons), ho.ids, reference=ref.ids, score_mask=mask,
                     n_controls=self.controls, progress=None if ctx.quiet else ctx.log)  # fmt: skip
        rows, data = [], {"modes": {}}
        page = Result(f"Ablating L{self.layer} neurons {list(self.neurons)}")
        for mode, eff in res.effects.items():
            ctl = _summ(res.controls[mode])
            data["modes"][mode] = {"neurons": asdict(eff), "random_controls": ctl}
            rows.append([mode, eff.kl, ctl["kl"]["mean"], eff.dlogp, ctl["dlogp"]["mean"], eff.top1_change,
                         ctl["top1_change"]["mean"]])  # fmt: skip
            page.summary[f"{mode}_kl"] = eff.kl
            page.summary[f"{mode}_kl_control"] = ctl["kl"]["mean"]
            page.summary[f"{mode}_top1_change"] = eff.top1_change
            page.summary[f"{mode}_top1_change_control"] = ctl["top1_change"]["mean"]
            page.say(f"{mode}: KL {eff.kl:.4g} (random sets {ctl['kl']['mean']:.4g}), top-1 change {eff.top1_change:.3f} "
                     f"(random {ctl['top1_change']['mean']:.3f})")  # fmt: skip
        page.table("Effect vs random-neuron controls (mean of controls)", ["mode", "KL", "KL ctl", "dlogp", "dlogp ctl",
                   "top-1 change", "top-1 ctl"], rows)  # fmt: skip
        page.data = data
        return page


@dataclass(frozen=True)
class NeuronsScale(Experiment):
    """Dose-response: scale (or set) neurons across strengths; the probability of a quote token next and the KL."""

    command = "neurons scale"
    about = "dose-response of scaling or setting neurons"
    layer: int = param(0, "layer of the neurons")
    neurons: tuple[int, ...] = param((), "neuron indices", required=True)
    strength: Strengths = param((-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0), "multipliers (mode scale) or values (mode set)")
    mode: str = param("scale", "multiply the activation, or set it", choices=("scale", "set"))
    windows: int = param(16, "held-out windows to score on")
    controls: int = param(3, "random-neuron control draws")
    score: str = param("strings", "positions scored", choices=("strings", "all"))
    seq_len: int = param(128, "window length")
    strings: str = param("all", "label: inside any string literal, or only single-quoted ones", choices=STRINGS)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.neurons import dose_figure, dose_response

        ho, _, mask = _eval_windows(model, self.windows, self.seq_len, self.strings, self.score)
        quote = [i for i in range(len(model.tokenizer)) if any(q in model.tokenizer.decode([i]) for q in ("'", '"'))]
        res = dose_response(model, self.layer, list(self.neurons), ho.ids, values=self.strength, mode=self.mode,
                            score_mask=mask, token_set=quote, n_controls=self.controls,
                            progress=None if ctx.quiet else ctx.log)  # fmt: skip
        page = Result(f"Dose-response of L{self.layer} neurons {list(self.neurons)}")
        page.figure("dose_quote_prob", dose_figure(res, "token_set_prob"), "probability of a quote token next")
        page.figure("dose_kl", dose_figure(res, "kl"), "KL(clean || edited)")
        page.data = {"values": res.values, "n_quote_tokens": len(quote), "effects": [asdict(e) for e in res.effects],
                     "controls": [[asdict(e) for e in c] for c in res.controls]}  # fmt: skip
        probs = [e.token_set_prob for e in res.effects]
        page.summary = {"quote_prob_min": min(probs), "quote_prob_max": max(probs)}
        pairs = zip(res.values, probs, strict=True)
        page.say("quote-token probability per strength: " + ", ".join(f"{v:g}: {p:.3f}" for v, p in pairs))
        return page
