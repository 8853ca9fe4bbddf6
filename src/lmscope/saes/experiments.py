"""The sparse-autoencoder family's experiments: train, evaluate, dashboards, feature steering."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmscope.data.corpus import CORPUS_HELP, user_files, user_inputs
from lmscope.experiments import Context, Experiment, Result, Strengths, param
from lmscope.saes.sae import SAEConfig
from lmscope.saes.training import TrainConfig

DEFAULT_PROMPTS = (
    "Tell me a short story.", "What did you do today?", "Describe your favourite place.", "Write a poem about the sea.",
    "Give me some advice for a job interview.", "What is the best way to learn?", "Describe a busy morning.",
    "What makes a good friend?",
)  # fmt: skip


def _chunks(model: Any, n: int, seq_len: int, split: str, corpus: tuple[str, ...] = ()) -> Any:
    import torch

    from lmscope.data.corpus import token_chunks

    return torch.stack(list(token_chunks(model.tokenizer, seq_len, n, split=split, sources=corpus)))  # type: ignore[arg-type]


def _sae(path: str, device: Any = "cpu") -> Any:
    """The SAE in ``path``, on the model's device (a GPU model gets a GPU SAE: nothing is moved per batch)."""
    from lmscope.saes.interop import load_saelens

    if not Path(path).is_dir():
        raise FileNotFoundError(f"SAE folder {path} does not exist (a SAELens layout: cfg.json + sae_weights.safetensors)")
    return load_saelens(path, device=device)


@dataclass(frozen=True)
class SAETrain(Experiment):
    """Train an SAE from an activation store (or streamed from the model); Ctrl-C and rerun resumes in --out.

    lmscope sae train --store outputs/harvest/store --site blocks.12.hook_resid_post --arch topk --d-sae 2304 --k 32
    """

    command = "sae train"
    about = "train an SAE from an activation store or streamed from the model (resumable; torchrun: data-parallel)"
    data_parallel = True
    site: str = param("", "e.g. blocks.12.hook_resid_post", required=True)
    d_sae: int = param(0, "latents", required=True)
    store: str | None = param(None, "activation store folder (else activations are streamed from the model)")
    arch: str = param("topk", "architecture", choices=("standard", "topk", "batchtopk", "jumprelu"))
    k: int = param(32, "active latents (topk, batchtopk)")
    l1: float = param(SAEConfig.l1_coeff, "L1 coefficient (standard)")
    l0: float = param(SAEConfig.l0_coeff, "L0 coefficient (jumprelu)")
    tokens: int = param(65536, "training tokens (beyond the store: epochs)")
    batch: int = param(TrainConfig.batch_size, "tokens per step")
    lr: float = param(TrainConfig.lr, "Adam learning rate")
    threshold_lr: float | None = param(None, "learning rate of the JumpReLU log-thresholds (default: --lr)")
    normalize: str = param(SAEConfig.normalize_activations, "activation normalisation",
                           choices=("none", "expected_average_only_in"))  # fmt: skip
    checkpoint_every: int = param(TrainConfig.checkpoint_every, "steps between checkpoints")
    seed: int = param(TrainConfig.seed, "initialisation and shuffling seed")
    corpus: tuple[str, ...] = param((), CORPUS_HELP + "; without --store only")

    def check(self) -> None:
        from lmscope.experiments.distributed import launched

        if self.d_sae < 1:
            raise ValueError(f"--d-sae must be a positive number of latents, got {self.d_sae}")
        user_files(self.corpus)
        if self.corpus and self.store:
            raise ValueError("--corpus applies when streaming from the model; a --store was harvested from its own corpus")
        if launched() and not self.store:
            raise ValueError("sae train under torchrun reads a shared activation store: give --store (harvest one first)")
        if self.store:
            from lmscope.experiments.store import ActivationStore

            store = ActivationStore(self.store)  # every shard checked before any work starts
            if self.site not in store.manifest["sites"]:
                raise ValueError(f"--site {self.site} is not in {self.store} (it holds {list(store.manifest['sites'])})")

    def inputs(self) -> Any:
        return user_inputs(self.corpus)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments import distributed
        from lmscope.experiments.artifacts import Provenance
        from lmscope.saes import ModelSource, StoreSource, train_sae
        from lmscope.saes.interop import save_saelens
        from lmscope.saes.training import training_identity

        if self.store:
            from lmscope.experiments.store import ActivationStore

            store = ActivationStore(self.store)
            source = StoreSource(store, self.site, seed=self.seed)
            model_id, weight_hash = store.manifest["model_id"], store.manifest["weight_hash"]
        else:
            n_chunks = max(64, self.tokens // 127 + 1)
            source = ModelSource(model, self.site, _chunks(model, n_chunks, 128, "train", self.corpus), seed=self.seed)  # type: ignore[assignment]
            model_id, weight_hash = model.model_id, model.weight_hash
        cfg = SAEConfig(self.arch, source.d_in, self.d_sae, k=self.k if self.arch in ("topk", "batchtopk") else None,
                        l1_coeff=self.l1, l0_coeff=self.l0, normalize_activations=self.normalize, hook_name=self.site,
                        model_name=model_id)  # fmt: skip
        tcfg = TrainConfig(total_tokens=self.tokens, batch_size=self.batch, lr=self.lr, seed=self.seed,
                           threshold_lr=self.threshold_lr,
                           checkpoint_every=self.checkpoint_every, progress=not ctx.quiet)  # fmt: skip
        out = ctx.folder()
        res = train_sae(source, cfg, tcfg, out_dir=out, device=model.device if model is not None else "cpu")
        prov = Provenance.of(site=self.site, store=self.store, training_identity=training_identity(source, cfg, tcfg).digest)
        prov.model_id, prov.weight_hash, prov.dataset_hash = model_id, weight_hash, source.fingerprint()
        if distributed.is_main():
            save_saelens(res.sae, out / "sae", provenance=prov)
        final = res.log[-1] if res.log else {}
        page = Result(f"SAE training: {self.arch} {self.d_sae} latents at {self.site}",
                      summary={"steps": res.steps, "tokens": res.tokens, "resumed_from": res.resumed_from, **final})  # fmt: skip
        page.artifacts["sae"] = "sae"
        if res.log:
            page.table("Training log", list(res.log[0]), [list(r.values()) for r in res.log[:: max(1, len(res.log) // 30)]])
        page.data = {"log": res.log, "train_wall_s": res.wall_s}
        page.say(f"trained {res.steps} steps on {res.tokens} tokens (resumed from step {res.resumed_from}); "
                 + ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float)))  # fmt: skip
        return page


@dataclass(frozen=True)
class SAEEval(Experiment):
    """L0, FVU, CE loss recovered, KL, dead and dense latents of an SAE on held-out text."""

    command = "sae eval"
    about = "L0, FVU, CE loss recovered, KL, dead/dense latents on held-out text"
    sae: str = param("", "SAE folder (SAELens layout)", required=True)
    windows: int = param(64, "held-out windows")
    seq_len: int = param(128, "window length")

    def check(self) -> None:
        _sae(self.sae)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.saes.metrics import evaluate_sae, frequency_figure

        sae = _sae(self.sae, model.device)
        chunks = _chunks(model, self.windows, self.seq_len, "heldout")
        ctx.log(f"evaluating on {self.windows} held-out windows of {self.seq_len} tokens")
        ev = evaluate_sae(model, sae, chunks, progress=None if ctx.quiet else ctx.log)
        page = Result(f"SAE evaluation: {sae.cfg.hook_name}", summary=ev.summary())
        page.figure("latent_frequency", frequency_figure(ev.freqs), "latent firing frequency")
        page.data = {"freqs": ev.freqs.tolist()}
        page.say(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ev.summary().items()))
        return page


@dataclass(frozen=True)
class SAEDashboard(Experiment):
    """Static HTML pages per latent (top contexts, logit effects) and a searchable index."""

    command = "sae dashboard"
    about = "static HTML pages per latent and a searchable index"
    sae: str = param("", "SAE folder (SAELens layout)", required=True)
    store: str | None = param(None, "activation store to read contexts from (else harvest --windows)")
    windows: int = param(256, "windows harvested when there is no store")
    max_tokens: int | None = param(None, "read at most this many stored tokens (whole windows)")
    latents: tuple[int, ...] | None = param(None, "latents to write (default: --n-latents spread over the density ranking)")
    n_latents: int = param(100, "latents written when --latents is not given")

    def check(self) -> None:
        _sae(self.sae)
        if self.store:
            from lmscope.experiments.store import ActivationStore

            ActivationStore(self.store)

    def run(self, model: Any, ctx: Context) -> Result:
        import torch

        from lmscope.saes.dashboard import write_dashboards
        from lmscope.saes.features import harvest_acts, latent_stats

        sae = _sae(self.sae, model.device)
        if self.store:
            from lmscope.experiments.store import ActivationStore

            store = ActivationStore(self.store)
            acts = store.load_all(sae.cfg.hook_name)  # stays float16; latent_stats converts block by block
            seq = store.manifest["tokens_per_chunk"]
            ids = store.tokens()["token_ids"].long().reshape(-1, seq)
            if self.max_tokens:
                n = max(1, self.max_tokens // seq)
                ids, acts = ids[:n], acts[: n * seq]
        else:
            acts, ids = harvest_acts(model, sae.cfg.hook_name, _chunks(model, self.windows, 128, "train"))
        stats = latent_stats(sae, acts, ids, keep_codes=True)
        latents = list(self.latents or ())
        if not latents:
            # Spread over the density ranking of live latents, so the index shows rare and common ones alike.
            live = (stats.density > 0).nonzero()[:, 0]
            ranked = live[stats.density[live].argsort(descending=True)]
            pick = torch.linspace(0, len(ranked) - 1, min(self.n_latents, len(ranked))).round().long().unique()
            latents = ranked[pick].tolist()
        folder = write_dashboards(model, sae, stats, ctx.folder() / "latents", latents)
        page = Result(f"SAE dashboards: {sae.cfg.hook_name}", summary={"latents": len(latents),
                      "live": int((stats.density > 0).sum()), "d_sae": int(stats.density.numel())})  # fmt: skip
        page.artifacts["dashboards"] = "latents/index.html"
        page.say(f"wrote {len(latents)} latent pages; open {folder / 'index.html'}")
        return page


@dataclass(frozen=True)
class SAESteer(Experiment):
    """Add or clamp one SAE latent while generating; the concept mention rate per strength vs the baseline."""

    command = "sae steer"
    about = "add or clamp a latent while generating; concept mention rate vs baseline"
    sae: str = param("", "SAE folder (SAELens layout)", required=True)
    latent: int = param(0, "latent index")
    words: tuple[str, ...] = param((), "concept words counted in the generations", required=True)
    prompt: tuple[str, ...] = param(DEFAULT_PROMPTS, "prompts (repeat the flag)", split=False)
    prompts: str | None = param(None, "prompt file (JSONL with 'prompt', or text lines)", metavar="FILE")
    strength: Strengths = param((0.0, 4.0, 8.0), "strengths (0 = the baseline)")
    mode: str = param("add", "add the decoder direction, or clamp the latent", choices=("add", "clamp"))
    max_new_tokens: int = param(32, "tokens generated per prompt")

    def check(self) -> None:
        _sae(self.sae)
        self._prompts()

    def _prompts(self) -> list[str]:
        from lmscope.data.bundled import prompt_texts

        return prompt_texts(self.prompt, self.prompts)

    def inputs(self) -> Any:
        return self._prompts()

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.saes.steering import feature_steering

        sae = _sae(self.sae, model.device)
        res = feature_steering(model, sae, self.latent, self._prompts(), list(self.words), strengths=list(self.strength),
                               mode=self.mode, max_new_tokens=self.max_new_tokens)  # fmt: skip
        page = Result(f"Steering latent {self.latent} ({self.mode})",
                      summary={f"mention_rate_at_{s:g}": r for s, r in zip(res.strengths, res.rates, strict=True)})  # fmt: skip
        page.table("Mention rate", ["strength", "rate"], [[s, r] for s, r in zip(res.strengths, res.rates, strict=True)])
        for s, texts in res.samples.items():
            page.text(f"Generations at strength {s}", "\n---\n".join(texts))
        page.data = asdict(res)
        pairs = zip(res.strengths, res.rates, strict=True)
        page.say("mention rate per strength: " + ", ".join(f"{s:g}: {r:.2f}" for s, r in pairs))
        return page
