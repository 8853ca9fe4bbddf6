"""The steering family's experiments: extract a vector, apply it while generating, sweep it, export it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmscope.experiments import Context, Experiment, Layers, Result, Strengths, param

POSITIONS = ("all", "prompt", "generated")


def load_vector(path: str, d_model: int | None = None) -> Any:
    """A steering vector from lmscope's .safetensors or a llama.cpp control-vector .gguf."""
    from lmscope.steering import SteeringVector

    if not Path(path).is_file():
        raise FileNotFoundError(f"steering vector {path} does not exist")
    return SteeringVector.from_gguf(path, d_model=d_model) if path.endswith(".gguf") else SteeringVector.load(path)


@dataclass(frozen=True)
class SteerExtract(Experiment):
    """A steering vector per layer from a contrast set, with held-out separability per layer.

    lmscope steer extract --contrast sentiment --method all
    lmscope steer extract --file my_pairs.jsonl --positive-key good --negative-key bad
    """

    command = "steer extract"
    about = "steering vector from a contrast set, with per-layer held-out separability"
    contrast: str | None = param(None, "built-in set: harmful_harmless, sentiment, truthfulness, sycophancy, concept_topic")
    file: str | None = param(None, "your JSONL contrast file", metavar="FILE")
    positive_key: str = param("positive", "key of the positive side in --file")
    negative_key: str = param("negative", "key of the negative side in --file")
    question_key: str | None = param(None, "key of a shared question in --file")
    fmt: str | None = param(None, "question sets: completion or ab", choices=("plain", "completion", "ab"))
    chat: bool | None = param(None, "apply the chat template")
    concept: str | None = param(None, "concept_topic: only this concept")
    method: str = param("mean_diff", "direction estimator", choices=("mean_diff", "pca", "probe", "all"))
    max_per_side: int | None = param(None, "first n examples per side and split")
    shuffled: bool = param(False, "also fit each method on shuffled train labels (the control), scored on the test split")
    shuffles: int = param(8, "with --shuffled: balanced label shuffles averaged in the control")

    def contrast_set(self) -> Any:
        from lmscope.steering import builtin, load_contrast

        if bool(self.contrast) == bool(self.file):
            raise ValueError("give --contrast NAME (built-in) or --file FILE (yours), one of them")
        if self.contrast:
            return builtin(self.contrast, fmt=self.fmt, chat=self.chat, concept=self.concept)  # type: ignore[arg-type]
        return load_contrast(self.file, positive_key=self.positive_key, negative_key=self.negative_key,  # type: ignore[arg-type]
                             question_key=self.question_key, fmt=self.fmt or "plain", chat=bool(self.chat))  # fmt: skip

    def check(self) -> None:
        if self.shuffles < 1:
            raise ValueError(f"--shuffles must be at least 1, got {self.shuffles}")
        self.contrast_set()

    def inputs(self) -> Any:
        cs = self.contrast_set()
        return [cs.name, [(e.prompt, e.completion) for e in cs.positive], [(e.prompt, e.completion) for e in cs.negative]]

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.steering import extract_many
        from lmscope.steering.recipes import separability_figure

        cs = self.contrast_set()
        methods = ["mean_diff", "pca", "probe"] if self.method == "all" else [self.method]
        ctx.log(f"extracting {methods} from {cs.name}")
        results = extract_many(model, cs, methods=methods, max_per_side=self.max_per_side, shuffled=self.shuffled,
                               shuffles=self.shuffles)
        page = Result(f"Steering vector: {cs.name}")
        out = ctx.folder()
        for method, r in results.items():
            name = "vector.safetensors" if len(methods) == 1 else f"vector_{method}.safetensors"
            r.vector.save(out / name)
            page.artifacts[f"vector_{method}"] = name
            if r.separability:
                best = r.best_layer()
                page.summary[f"{method}_best_layer"] = best
                page.summary[f"{method}_best_separability"] = r.separability[best]
                chosen = r.chosen_layer()
                page.summary |= {f"{method}_chosen_layer": chosen, f"{method}_chosen_separability": r.separability[chosen]}
                if r.control:
                    page.summary[f"{method}_chosen_control"] = r.control[chosen]
                    page.summary[f"{method}_chosen_control_sd"] = r.control_sd[chosen]
                    page.say(f"{method}: layer {chosen} chosen on train accuracy: test {r.separability[chosen]:.2f}, "
                             f"shuffled-label control {r.control[chosen]:.2f} (sd {r.control_sd[chosen]:.2f} over "
                             f"{self.shuffles} shuffles)")  # fmt: skip
                page.say(f"{method}: {r.n_train} train / {r.n_test} test examples per side, best layer {best} "
                         f"({r.separability[best]:.2f} held-out separability) -> {out / name}")  # fmt: skip
            else:
                page.say(f"{method}: {r.n_train} examples per side (no test split: no separability) -> {out / name}")
        if any(r.separability for r in results.values()):
            layers = sorted(results[methods[0]].separability)
            ctl = [m for m in methods if results[m].control]
            page.table("Held-out separability per layer", ["layer", *methods, *(f"{m} shuffled" for m in ctl)],
                       [[layer, *(results[m].separability[layer] for m in methods),
                         *(results[m].control[layer] for m in ctl)] for layer in layers])  # fmt: skip
            page.figure("separability", separability_figure(results, f"{cs.name}: held-out separability"))
        page.data = {m: {"separability": r.separability, "train_acc": r.train_acc, "control": r.control,
                         "control_sd": r.control_sd, "n_train": r.n_train, "n_test": r.n_test}
                     for m, r in results.items()}  # fmt: skip
        return page


def _prompts(prompt: tuple[str, ...], prompts: str | None) -> list[str]:
    from lmscope.data.bundled import prompt_texts

    if bool(prompt) == bool(prompts):
        raise ValueError("give prompt text (--prompt, repeatable) or --prompts FILE, one of them")
    return prompt_texts(prompt, prompts)


@dataclass(frozen=True)
class SteerApply(Experiment):
    """Generate with a vector added (or its direction ablated), beside the unsteered baseline.

    lmscope steer apply --vector outputs/steer-extract/vector.safetensors --layers 14 --strength 6 --prompt "Hi"
    lmscope steer apply --vector v.safetensors --ablate --layers 14 --prompts harmful.txt
    """

    command = "steer apply"
    about = "generate with a vector added (or its direction ablated) beside the baseline"
    vector: str = param("", ".safetensors artifact or llama.cpp .gguf control vector", required=True, metavar="FILE")
    prompt: tuple[str, ...] = param((), "a prompt (repeat the flag for more)", split=False)
    prompts: str | None = param(None, "prompt file (JSONL with 'prompt', or text lines)", metavar="FILE")
    layers: Layers = param(None, "layers to steer (default: every layer the vector has)")
    strength: float = param(4.0, "multiplier of the vector (negative subtracts)")
    positions: str = param("all", "where to add it", choices=POSITIONS)
    ablate: bool = param(False, "project the direction of the one --layers out of every layer instead")
    chat: bool = param(True, "apply the chat template")
    max_new_tokens: int = param(48, "tokens generated per prompt")

    def check(self) -> None:
        _prompts(self.prompt, self.prompts)
        if self.ablate and (not self.layers or len(self.layers) != 1):
            raise ValueError("--ablate needs exactly one --layers whose direction is removed everywhere")
        load_vector(self.vector)

    def inputs(self) -> Any:
        return [_prompts(self.prompt, self.prompts), load_vector(self.vector).directions]

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.steering import ablate, steer

        prompts = _prompts(self.prompt, self.prompts)
        vec = load_vector(self.vector, model.shape.d_model)
        base = model.generate(prompts, chat=self.chat, max_new_tokens=self.max_new_tokens)
        if self.ablate:
            with ablate(model, vec[self.layers[0]]):  # type: ignore[index]
                new = model.generate(prompts, chat=self.chat, max_new_tokens=self.max_new_tokens)
            how = f"direction of layer {self.layers[0]} ablated at every layer"  # type: ignore[index]
        else:
            with steer(model, vec, layers=self.layers, scale=self.strength, positions=self.positions):
                new = model.generate(prompts, chat=self.chat, max_new_tokens=self.max_new_tokens)
            how = f"layers {list(self.layers or vec.layers)} strength {self.strength} positions {self.positions}"
        changed = sum(b != s for b, s in zip(base, new, strict=True))
        page = Result(f"Steered generation: {how}", summary={"prompts": len(prompts), "changed": changed})
        page.table("Generations", ["prompt", "baseline", "steered"], [list(r) for r in zip(prompts, base, new, strict=True)])
        page.data = {"how": how, "generations": [{"prompt": p, "baseline": b, "steered": s}
                                                 for p, b, s in zip(prompts, base, new, strict=True)]}  # fmt: skip
        for p, b, s in zip(prompts, base, new, strict=True):
            page.say(f"=== {p}\n--- baseline:\n{b}\n--- steered ({how}):\n{s}\n")
        return page


@dataclass(frozen=True)
class SteerSweep(Experiment):
    """Layers x strengths on dev prompts: the behaviour and its capability cost (perplexity, facts) per cell; the best
    cell within 2x perplexity then measured on disjoint test prompts beside equal-norm random vectors; resumable.

    lmscope steer sweep --vector v.safetensors --behaviour sentiment --layers 6,10,14 --strength 2 4 8
    """

    command = "steer sweep"
    about = "layers x strengths on dev prompts; the best cell on test prompts vs random vectors (resumable)"
    vector: str = param("", ".safetensors or .gguf steering vector", required=True, metavar="FILE")
    behaviour: str = param("", "refusal, refusal_logprob, compliance, sentiment, truthfulness, sycophancy, mention:WORD",
                           required=True)  # fmt: skip
    layers: Layers = param(None, "layers to steer (default: every layer the vector has)")
    strength: Strengths = param((2.0, 4.0, 8.0), "strengths (negative values subtract the vector)")
    positions: str = param("all", "where to add it", choices=POSITIONS)
    n_prompts: int = param(12, "behaviour prompts per cell (dev) and for the chosen cell's test measurement")
    max_new_tokens: int = param(32, "tokens generated per prompt")
    n_capability: int = param(12, "neutral texts and factual questions for the capability cost")
    fmt: str = param("completion", "truthfulness/sycophancy scoring", choices=("completion", "ab"))
    n_random: int = param(2, "equal-norm random vectors measured at the chosen cell on the test prompts")

    def needs(self) -> dict[str, str]:
        return {"vaderSentiment": "'lmscope[metrics]'"} if self.behaviour == "sentiment" else {}

    def check(self) -> None:
        from lmscope.steering.recipes import recipe

        load_vector(self.vector)
        recipe(self.behaviour, n_prompts=self.n_prompts, max_new_tokens=self.max_new_tokens, fmt=self.fmt)
        if self.n_random < 1:
            raise ValueError(f"--n-random must be at least 1 (the test measurement's control), got {self.n_random}")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.steering import Capability, sweep
        from lmscope.steering.recipes import recipe
        from lmscope.steering.sweep import confirm

        vec = load_vector(self.vector, model.shape.d_model)
        r = recipe(self.behaviour, n_prompts=self.n_prompts, max_new_tokens=self.max_new_tokens, fmt=self.fmt, split="dev")
        out = ctx.folder()
        res = sweep(model, vec, r.fn, layers=list(self.layers or vec.layers), scales=list(self.strength),
                    positions=self.positions, capability=Capability.default(self.n_capability, self.n_capability),
                    behaviour_name=r.name, checkpoint=out / "checkpoint.json", behaviour_data=r.data,
                    progress=None if ctx.quiet else ctx.log)  # fmt: skip
        res.meta["description"] = r.description
        page = res.report(goal=r.goal)
        best = res.best(r.goal)
        page.summary = {"dev_baseline": res.baseline.behaviour, "baseline_perplexity": res.baseline.perplexity,
                        "best_layer": None if best is None else best.layer, "best_strength": None if best is None else best.scale,
                        "dev_best": None if best is None else best.behaviour,
                        "best_perplexity_ratio": None if best is None else best.perplexity / res.baseline.perplexity}  # fmt: skip
        if best is None or r.goal * (best.behaviour - res.baseline.behaviour) <= 0:
            page.summary |= {"test_steered": None, "test_baseline": None, "test_random": None, "verdict": "no effect"}
            page.say(f"{r.description}\nbaseline {res.baseline.behaviour:.3f}; no cell within 2x perplexity moves it the "
                     "right way on the dev prompts: no effect")  # fmt: skip
            return page
        t = recipe(self.behaviour, n_prompts=self.n_prompts, max_new_tokens=self.max_new_tokens, fmt=self.fmt, split="test")
        if not ctx.quiet:
            ctx.log(f"chosen on dev: layer {best.layer} strength {best.scale}; measuring it on the test prompts")
        held = confirm(model, vec, t.items, layer=best.layer, scale=best.scale, goal=r.goal, positions=self.positions,
                       n_random=self.n_random)  # fmt: skip
        vr, vb = held["vs_random"], held["vs_baseline"]
        page.summary |= {"test_steered": vr["mean"], "test_baseline": vb["control_mean"], "test_random": vr["control_mean"],
                         "test_vs_random": vr["difference"], "test_vs_random_ci": list(vr["difference_ci"]),
                         "test_vs_baseline": vb["difference"], "test_vs_baseline_ci": list(vb["difference_ci"]),
                         "verdict": held["verdict"]}  # fmt: skip
        page.data = {**(page.data or {}), "test": held, "test_description": t.description}
        page.table(f"Chosen on dev, measured on test ({t.description})",
                   ["", "mean", "difference", "95% CI", "verdict"],
                   [["steered", vr["mean"], "", "", ""],
                    ["unsteered", vb["control_mean"], vb["difference"], _ci(vb["difference_ci"]), vb["verdict"]],
                    [f"equal-norm random x{self.n_random}", vr["control_mean"], vr["difference"], _ci(vr["difference_ci"]),
                     vr["verdict"]]])  # fmt: skip
        page.say(f"{r.description}\ndev: baseline {res.baseline.behaviour:.3f}, layer {best.layer} strength {best.scale} -> "
                 f"{best.behaviour:.3f} (ppl x{best.perplexity / res.baseline.perplexity:.2f}, facts {best.fact_acc:.2f} vs "
                 f"{res.baseline.fact_acc:.2f})\ntest: steered {vr['mean']:.3f}, unsteered {vb['control_mean']:.3f}, "
                 f"random {vr['control_mean']:.3f}; vs random {vr['difference']:+.3f} {_ci(vr['difference_ci'])}: "
                 f"{held['verdict']}")  # fmt: skip
        return page


def _ci(ci: Any) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


@dataclass(frozen=True)
class SteerExport(Experiment):
    """Write a llama.cpp control vector (.gguf) from an lmscope steering vector (no model needed)."""

    command = "steer export"
    about = "write a llama.cpp control vector (.gguf)"
    uses_model = False
    vector: str = param("", "lmscope .safetensors steering vector", required=True, metavar="FILE")
    layers: Layers = param(None, "layers to export (default: every layer the vector has; layer 0 is refused)")
    strength: float = param(1.0, "multiplier baked into the file")
    model_hint: str = param("llama", "controlvector.model_hint (llama.cpp's architecture name)")

    def check(self) -> None:
        vec = load_vector(self.vector)
        if 0 in (self.layers or vec.layers):
            rest = [layer for layer in vec.layers if layer != 0]
            raise ValueError(f"{self.vector} would export a direction for layer 0, which llama.cpp's control-vector format "
                             f"cannot hold (direction.N is added after block N, and block 0's input is not reachable); "
                             f"pass --layers {','.join(map(str, rest))} to export the others")  # fmt: skip
        missing = sorted(set(self.layers or ()) - set(vec.layers))
        if missing:
            raise ValueError(f"--layers {missing}: {self.vector} has no direction there (it has layers {vec.layers})")

    def inputs(self) -> Any:
        return load_vector(self.vector).directions

    def run(self, model: Any, ctx: Context) -> Result:
        vec = load_vector(self.vector)
        layers = list(self.layers or vec.layers)
        path = vec.select(layers).to_gguf(ctx.folder() / "control_vector.gguf", model_hint=self.model_hint, scale=self.strength)
        page = Result("llama.cpp control vector", summary={"layers": layers, "strength": self.strength})
        page.artifacts["control_vector"] = path.name
        page.say(f"wrote {path}: direction.N for layers {layers} (strength {self.strength}); llama.cpp: --control-vector {path}")
        return page


@dataclass(frozen=True)
class SteerOrganism(Experiment):
    """A refusal model organism, and the refusal-direction experiment on it (Arditi et al. 2024).

    The bundled model refuses almost nothing, so this trains one that does: a LoRA (rank 8, attention
    output and MLP down projections of every layer) that refuses the harmful training requests and
    keeps the model's own answers to harmless ones. Then, on the organism: the refusal direction's
    separability by layer; the layer and scale chosen on dev prompts for adding it (harmless requests
    refused), subtracting it and ablating it (harmful requests answered); each reported on held-back
    test prompts beside an equal-size random control, with intervals and a verdict. Training
    checkpoints and resumes; the adapter is saved with its provenance.

    lmscope steer organism
    lmscope steer organism --steps 8 --layers 12 15 --strength 2 --n-random 1
    """

    command = "steer organism"
    about = "train a model that refuses (LoRA), then add, subtract and ablate its refusal direction with controls"
    steps: int = param(48, "LoRA training steps (8 examples each)")
    rank: int = param(8, "LoRA rank")
    lr: float = param(2e-3, "LoRA learning rate (AdamW)")
    layers: Layers = param(None, "candidate layers for the direction (default: every third from 1/5 to 2/3 of the depth)")
    strength: Strengths = param((1.0, 2.0, 4.0), "multiples of the mean difference to add or subtract")
    max_new_tokens: int = param(24, "tokens generated per judged answer")
    n_random: int = param(2, "random controls per intervention")
    max_perplexity_ratio: float = param(1.5, "dev choices keep neutral-text perplexity within this factor")
    seed: int = param(0, "LoRA initialisation, batch order and random controls")
    save_model: bool = param(False, "also write the merged organism as a Hugging Face folder (model/) for other commands")

    def _configs(self) -> Any:
        from lmscope.steering.organism import OrganismConfig
        from lmscope.steering.refusal import RefusalConfig

        org = OrganismConfig(rank=self.rank, lr=self.lr, steps=self.steps, seed=self.seed)
        ref = RefusalConfig(layers=tuple(self.layers) if self.layers else None, scales=tuple(self.strength),
                            max_new_tokens=self.max_new_tokens, n_random=self.n_random,
                            max_perplexity_ratio=self.max_perplexity_ratio, seed=self.seed)  # fmt: skip
        return org, ref

    def check(self) -> None:
        if not self.strength or any(s <= 0 for s in self.strength):
            raise ValueError("--strength must be positive multiples (subtraction uses their negatives)")
        if self.n_random < 1:
            raise ValueError("--n-random must be >= 1: every effect is reported beside its control")
        self._configs()

    def inputs(self) -> Any:
        from lmscope.steering.organism import organism_data

        return organism_data()

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments.artifacts import atomic_write_json
        from lmscope.steering.organism import train_organism
        from lmscope.steering.refusal import refusal_page, run_refusal

        org_cfg, ref_cfg = self._configs()
        out = ctx.folder()
        log = None if ctx.quiet else ctx.log
        organism = train_organism(model, org_cfg, out_dir=out / "organism", progress=log)
        organism.lora.save(out / "adapter.safetensors", model, meta={"config": self.config(), "data": "refusal/organism.json"})
        data = run_refusal(model, organism.lora, ref_cfg, log=log)
        data["training"] = {"loss": organism.log, "examples": organism.examples, "seconds": organism.seconds,
                            "resumed_from_step": organism.resumed_from}  # fmt: skip
        atomic_write_json(out / "refusal.json", data)  # kept even if drawing the page fails
        page = refusal_page(data)
        page.artifacts["measurements"] = "refusal.json"
        page.artifacts["adapter"] = "adapter.safetensors"
        if self.save_model:
            with organism.lora.merged(model):
                model.hf.save_pretrained(out / "model", safe_serialization=True)
                model.tokenizer.save_pretrained(out / "model")
            page.artifacts["model"] = "model"
        return page
