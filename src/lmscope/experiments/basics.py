"""Experiments every model supports, before any method family: its sites (``info``) and an activation harvest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmscope.data.corpus import CORPUS_HELP
from lmscope.experiments.report import Result
from lmscope.experiments.runner import Context
from lmscope.experiments.spec import Experiment, param
from lmscope.experiments.store import HarvestConfig


@dataclass(frozen=True)
class Info(Experiment):
    """A model's shape and every site with its tensor shape.

    lmscope info --model HuggingFaceTB/SmolLM2-135M-Instruct --layer 3
    """

    command = "info"
    about = "print a model's sites with their shapes"
    layer: int | None = param(None, "only this layer's sites")

    def run(self, model: Any, ctx: Context) -> Result:
        rows = []
        for site in model.sites():
            if site.kind == "resid_mid" and model.is_parallel:
                continue
            if self.layer is not None and site.layer not in (None, self.layer):
                continue
            rows.append([str(site), site.kind, ", ".join(model.site_shape(site))])
        page = Result(f"Sites of {model.model_id}", summary={"model": model.model_id, "n_layers": model.shape.n_layers,
                      "d_model": model.shape.d_model, "attention": model.attn_implementation, "sites": len(rows)})  # fmt: skip
        page.table("Sites", ["site", "kind", "shape"], rows)
        page.say(str(model))
        page.say(f"attention: {model.attn_implementation} (attn_pattern needs eager)")
        page.lines += [f"  {name:34s} {kind:13s} ({shape})" for name, kind, shape in rows]
        return page


@dataclass(frozen=True)
class Harvest(Experiment):
    """Stream activations of chosen sites over the corpus into a checksummed shard store in --out/store.

    Interrupt it at any time (Ctrl-C) and rerun the same command: it resumes from the last completed shard.

    lmscope harvest --sites blocks.6.hook_resid_post --tokens 200000
    """

    command = "harvest"
    about = "harvest activations over the corpus into safetensors shards (resumable)"
    sites: tuple[str, ...] = param((), "site names, e.g. blocks.6.hook_resid_post", required=True)
    tokens: int = param(HarvestConfig.n_tokens, "tokens to store per site")
    seq_len: int = param(HarvestConfig.seq_len, "window length, BOS included")
    drop_first: int = param(HarvestConfig.drop_first, "positions dropped at the start of each window")
    batch_size: int = param(HarvestConfig.batch_size, "windows per forward pass")
    shard_tokens: int = param(HarvestConfig.tokens_per_shard, "tokens per shard (RAM holds one shard per site)")
    store_dtype: str = param(HarvestConfig.dtype, "storage dtype", choices=("float32", "float16", "bfloat16"))
    split: str = param(HarvestConfig.split, "corpus split", choices=("train", "heldout"))
    seed: int = param(HarvestConfig.seed, "corpus document order")
    corpus: tuple[str, ...] = param((), CORPUS_HELP)
    overwrite: bool = param(False, "start over even if the folder holds another harvest")
    ray: str | None = param(None, "spread shards over a Ray cluster: its address, or 'local' to start one here")
    workers: int = param(2, "Ray actors, each loading the model once (with --ray)")

    def check(self) -> None:
        from lmscope.data.corpus import user_files

        if self.workers < 1:
            raise ValueError(f"harvest: --workers must be >= 1, got {self.workers}")
        user_files(self.corpus)

    def inputs(self) -> Any:
        from lmscope.data.corpus import user_inputs

        return user_inputs(self.corpus)

    def needs(self) -> dict[str, str]:
        from lmscope.data.corpus import BUILTIN

        need = {"ray": "ray"} if self.ray else {}
        if any(c not in BUILTIN for c in self.corpus):
            need["datasets"] = "datasets"
        return need

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments.store import harvest, memory_bound

        cfg = HarvestConfig(sites=list(self.sites), n_tokens=self.tokens, seq_len=self.seq_len, drop_first=self.drop_first,
                            batch_size=self.batch_size, tokens_per_shard=self.shard_tokens, dtype=self.store_dtype,
                            seed=self.seed, split=self.split, corpus=self.corpus, progress=not ctx.quiet)  # type: ignore[arg-type]  # fmt: skip
        where = f" on Ray ({self.ray}, {self.workers} workers)" if self.ray else ""
        ctx.log(f"harvesting {cfg.sites}{where} ({cfg.n_shards} shards; buffers at most "
                f"{memory_bound(model, cfg) / 2**20:.1f} MiB per process)")  # fmt: skip
        store = harvest(model, cfg, ctx.folder() / "store", overwrite=self.overwrite, ray=self.ray, workers=self.workers)
        page = Result(f"Activation harvest: {', '.join(self.sites)}",
                      summary={"tokens": self.tokens, "shards": cfg.n_shards, "dtype": self.store_dtype})  # fmt: skip
        page.artifacts["store"] = "store"
        page.say(str(store))
        return page
