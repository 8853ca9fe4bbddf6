"""The four SAE variants side by side: trained on the same activations, evaluated on the same held-out text.

    lmscope sae compare --site blocks.12.hook_resid_post --d-sae 4608 --k 32 --tokens 262144

One harvest (or ``--store``) feeds ReLU-L1 (``standard``), TopK, BatchTopK and JumpReLU SAEs with the
same width, optimiser and token budget; each is evaluated with :func:`~lmscope.saes.metrics.evaluate_sae`
on held-out windows (L0, FVU, CE loss recovered, KL, dead and dense latents). TopK and BatchTopK get
their sparsity from ``--k``; ReLU-L1 and JumpReLU from their coefficients (``--l1``, ``--l0``), so their
L0 is whatever those coefficients give. ``--sweep-l1`` / ``--sweep-l0`` train one ReLU-L1 / JumpReLU SAE
per coefficient and keep the one whose L0 on its own *training* batches (the mean of the last logged
steps) is closest to ``--k``, so every row is compared at about the same L0, the choice made on
training data and the row reported on held-out text. Each SAE trains in its own subfolder with
checkpoints, so an interrupted comparison resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmscope.data.corpus import CORPUS_HELP, user_files, user_inputs
from lmscope.experiments import Context, Experiment, Result, param
from lmscope.saes.sae import SAEConfig
from lmscope.saes.training import TrainConfig

ARCHS = ("standard", "topk", "batchtopk", "jumprelu")
COLUMNS = ("l0", "fvu", "ce_recovered", "kl_spliced", "dead_frac", "dense_frac")


@dataclass(frozen=True)
class SAECompare(Experiment):
    """Train ReLU-L1, TopK, BatchTopK and JumpReLU SAEs on the same activations and compare them on held-out text.

    lmscope sae compare --site blocks.12.hook_resid_post --d-sae 4608 --k 32 --tokens 262144
    """

    command = "sae compare"
    about = "the four SAE variants on the same activations: L0, FVU, CE recovered, KL, dead latents in one table"
    site: str = param("blocks.12.hook_resid_post", "where the SAEs read")
    d_sae: int = param(4608, "latents of every SAE")
    archs: tuple[str, ...] = param(ARCHS, "variants to train", choices=ARCHS)
    k: int = param(32, "active latents (topk, batchtopk)")
    l1: float = param(SAEConfig.l1_coeff, "L1 coefficient (standard)")
    l0: float = param(SAEConfig.l0_coeff, "L0 coefficient (jumprelu)")
    sweep_l1: tuple[float, ...] = param((), "L1 coefficients to sweep (standard): keep the one whose training L0 is "
                                        "closest to --k")  # fmt: skip
    sweep_l0: tuple[float, ...] = param((), "L0 coefficients to sweep (jumprelu), chosen the same way")
    tokens: int = param(131072, "training tokens per SAE (beyond the store: epochs)")
    store_tokens: int = param(65536, "tokens harvested when there is no --store")
    store: str | None = param(None, "activation store to train from (else one is harvested into --out/store)")
    batch: int = param(TrainConfig.batch_size, "tokens per step")
    lr: float = param(TrainConfig.lr, "Adam learning rate")
    threshold_lr: float | None = param(None, "learning rate of the JumpReLU log-thresholds (default: --lr)")
    normalize: str = param("expected_average_only_in", "input scaling (the L1 and L0 coefficients assume inputs "
                           "of norm sqrt(d_in))", choices=("none", "expected_average_only_in"))  # fmt: skip
    windows: int = param(32, "held-out windows to evaluate on")
    seq_len: int = param(128, "window length of the evaluation")
    seed: int = param(TrainConfig.seed, "initialisation and shuffling seed")
    corpus: tuple[str, ...] = param((), CORPUS_HELP)

    def check(self) -> None:
        if self.d_sae < 1 or self.k < 1:
            raise ValueError(f"--d-sae and --k must be positive, got {self.d_sae}, {self.k}")
        if not self.archs:
            raise ValueError("--archs is empty")
        if any(c <= 0 for c in (*self.sweep_l1, *self.sweep_l0)):
            raise ValueError("sparsity coefficients must be positive")
        user_files(self.corpus)
        if self.store:
            from lmscope.experiments.store import ActivationStore

            if self.site not in ActivationStore(self.store).sites:
                raise ValueError(f"--site {self.site} is not in {self.store}")

    def inputs(self) -> Any:
        return user_inputs(self.corpus)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments.store import ActivationStore, HarvestConfig, harvest
        from lmscope.saes.experiments import _chunks
        from lmscope.saes.interop import save_saelens
        from lmscope.saes.metrics import evaluate_sae
        from lmscope.saes.sources import StoreSource
        from lmscope.saes.training import train_sae

        out = ctx.folder()
        if self.store:
            store = ActivationStore(self.store)
        else:
            ctx.log(f"harvesting {self.store_tokens} tokens at {self.site}")
            store = harvest(model, HarvestConfig(sites=[self.site], n_tokens=self.store_tokens, corpus=self.corpus,
                                                 progress=not ctx.quiet), out / "store")  # fmt: skip
        source = StoreSource(store, self.site, seed=self.seed)
        chunks = _chunks(model, self.windows, self.seq_len, "heldout", self.corpus)
        rows: list[list[Any]] = []
        sweep_rows: list[list[Any]] = []
        artifacts: dict[str, str] = {}
        summary: dict[str, Any] = {}
        for arch in self.archs:
            coeffs = {"standard": self.sweep_l1, "jumprelu": self.sweep_l0}.get(arch) or (None,)
            trained = []
            for c in coeffs:
                l1 = self.l1 if arch != "standard" or c is None else c
                l0 = self.l0 if arch != "jumprelu" or c is None else c
                cfg = SAEConfig(arch, source.d_in, self.d_sae, k=self.k if arch in ("topk", "batchtopk") else None,
                                l1_coeff=l1, l0_coeff=l0, normalize_activations=self.normalize, hook_name=self.site,
                                model_name=model.model_id)  # fmt: skip
                tcfg = TrainConfig(total_tokens=self.tokens, batch_size=self.batch, lr=self.lr, seed=self.seed,
                                   threshold_lr=self.threshold_lr,
                                   progress=not ctx.quiet)  # fmt: skip
                folder = out / (arch if c is None else f"{arch}-{c:g}")
                ctx.log(f"training {arch}" + ("" if c is None else f" (coefficient {c:g})"))
                res = train_sae(source, cfg, tcfg, out_dir=folder, device=model.device)
                tail = res.log[-3:] or [{"l0": float("nan"), "fvu": float("nan")}]
                train_l0 = sum(r["l0"] for r in tail) / len(tail)
                train_fvu = sum(r["fvu"] for r in tail) / len(tail)
                trained.append((c, res, folder, train_l0, train_fvu))
            c, res, folder, _, _ = min(trained, key=lambda t: abs(t[3] - self.k) if t[3] == t[3] else float("inf"))
            if len(trained) > 1:
                for tc, _, _, tl0, tfvu in trained:
                    sweep_rows.append([arch, tc, round(tl0, 2), round(tfvu, 4), "chosen" if tc == c else ""])
            save_saelens(res.sae, folder / "sae")
            ev = evaluate_sae(model, res.sae, chunks).summary()
            summary[arch] = {k: ev[k] for k in (*COLUMNS, "ce_clean", "ce_spliced", "ce_zero", "tokens")}
            summary[arch]["train_s"] = round(res.wall_s, 1)
            if c is not None:
                summary[arch]["coefficient"] = c
            label = arch if c is None else f"{arch} ({c:g})"
            rows.append([label, *(round(ev[col], 4) for col in COLUMNS), round(res.wall_s, 1)])
            ctx.log(f"{label}: " + ", ".join(f"{col} {ev[col]:.4g}" for col in COLUMNS))
            artifacts[arch] = f"{folder.name}/sae"
        page = Result(f"Four SAE variants at {self.site}: {self.d_sae} latents, {self.tokens} training tokens",
                      summary=summary)  # fmt: skip
        page.table("Held-out evaluation", ["variant", *COLUMNS, "train s"], rows)
        if sweep_rows:
            page.table(f"Coefficient sweeps: the coefficient whose training L0 is closest to k={self.k} is kept",
                       ["variant", "coefficient", "train L0", "train FVU", ""], sweep_rows)  # fmt: skip
            page.data = {"sweep": sweep_rows}
        page.artifacts.update(artifacts)
        page.say(f"evaluated on {self.windows} held-out windows of {self.seq_len} tokens; k={self.k} (topk, "
                 f"batchtopk), l1={self.l1} (standard), l0={self.l0} (jumprelu)")  # fmt: skip
        for row in rows:
            page.say("  " + "  ".join(f"{c}={v}" for c, v in zip(["variant", *COLUMNS, "train_s"], row, strict=True)))
        return page
