"""Multi-pass work timed against the forward passes it needs (issue: "fast where the work is organised").

Each function returns rows ``{"benchmark", "variant", "median_s", "ratio", "vs", "note"}``; ``run.py``
prints them with the single-pass table. Every comparison first checks that the variants compute the
same values, so a time never stands for different work.

- patching: a resid_post sweep over every layer x position of an IOI batch, with the prefix reuse,
  against the raw batched recompute (the same engine with ``reuse=False``) and nnsight's
  one-trace-per-patch loop;
- attribution patching against one forward;
- the LRE Jacobian against a row-by-row autograd loop (measured on a few rows, scaled);
- SAE evaluation, neuron ablation with controls and an ICL layer sweep against the forward
  passes they need (one clean pass, and each edited pass from the edited layer up);
- TopK SAE training against SAELens on the same activations, and against the GEMM floor;
- CLI start-up (``lmscope --help`` in a fresh process).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import peers
import torch
from timing import interleaved

import lmscope as ls
from lmscope import circuits as C
from lmscope.core.inputs import Batch
from lmscope.core.prefix import Prefix
from lmscope.core.sites import Site


def _row(bench: str, variant: str, seconds: float, base: float | None, vs: str, note: str = "",
         peak: float | None = None) -> dict[str, Any]:  # fmt: skip
    return {"benchmark": bench, "variant": variant, "median_s": seconds, "ratio": None if base is None else seconds / base,
            "vs": vs, "note": note, "peak_mb": peak}  # fmt: skip


def _ioi(model: ls.Model, n: int) -> tuple[Any, Batch, Batch]:
    """``n`` IOI prompts the model gets right, and their clean and corrupted batches."""
    task = C.filter_correct(model, C.ioi_task(model, n=4 * n, seed=0)).task.subset(range(n))
    return (task, *task.batches(model))


def patching(model: ls.Model, reps: int, n: int, with_nnsight: bool) -> list[dict[str, Any]]:
    task, clean, corrupt = _ioi(model, n)
    L, seq = model.shape.n_layers, clean.shape[1]
    specs = [C.PatchSpec(Site("resid_post", la), p) for la in range(L) for p in range(seq)]
    got: dict[str, Any] = {}

    def kept(name: str, f: Any) -> Any:  # each variant keeps its last values: compared after the timing
        return lambda: got.__setitem__(name, f())

    work = {
        "raw batched recompute": kept("raw", lambda: C.patch_sweep(model, clean, corrupt, specs, task.metric, reuse=False)),
        "raw recompute, last logits": kept("raw_last", lambda: C.patch_sweep(model, clean, corrupt, specs, task.metric,
                                                                             reuse=False, logits_to_keep=1)),
        "prefix reuse": kept("fast", lambda: C.patch_sweep(model, clean, corrupt, specs, task.metric, logits_to_keep=1)),
    }  # fmt: skip
    if with_nnsight:
        lm, why = peers.nnsight_model(model)
        if lm is not None:
            with ls.capture(model, [Site("resid_post", la) for la in range(L)]) as acts:
                model(clean)
            src = {la: acts[Site("resid_post", la)] for la in range(L)}
            loop = peers.nnsight_resid_patch_loop(lm, corrupt, src, [(s.site.layer, s.position) for s in specs], task.metric)
            work["nnsight trace per patch"] = kept("nnsight", loop)
    t = interleaved(f"patching {L}x{seq}", work, reps, warmup=0)
    raw, fast = got["raw"], got["fast"]
    for name in ("raw_last", "fast", "nnsight"):
        if name in got:
            values = got[name] if isinstance(got[name], torch.Tensor) else got[name].values
            assert torch.allclose(values, raw.values, atol=1e-4), f"{name} computed other values than the raw recompute"
    base = t.median("raw batched recompute")
    note = f"{len(specs)} patches, {n} IOI prompts, {fast.forwards} forwards with reuse vs {raw.forwards}"
    rows = [_row(t.name, v, t.median(v), base, "raw batched recompute", note, t.peak_mb.get(v)) for v in work]
    if "nnsight trace per patch" in work:
        rows.append(_row(t.name, "nnsight / prefix reuse", t.median("nnsight trace per patch") / t.median("prefix reuse"),
                         None, "speed-up"))  # fmt: skip
    return rows


def attribution(model: ls.Model, reps: int, n: int) -> list[dict[str, Any]]:
    task, clean, corrupt = _ioi(model, n)
    specs = [C.PatchSpec(Site("resid_post", la), p) for la in range(model.shape.n_layers) for p in range(clean.shape[1])]
    @torch.no_grad()
    def forward() -> object:
        return model.hf(**corrupt.model_inputs(), use_cache=False)

    t = interleaved("attribution", {"HF forward": forward, "attribution patching": lambda: C.node_attribution(
        model, clean, corrupt, specs, task.metric, logits_to_keep=1)}, reps)  # fmt: skip
    base = t.median("HF forward")
    return [_row(t.name, v, t.median(v), base, "one HF forward", f"{len(specs)} node estimates", t.peak_mb.get(v))
            for v in t.samples]  # fmt: skip


def lre(model: ls.Model, reps: int, rows: int = 8) -> list[dict[str, Any]]:
    from lmscope.core import edits
    from lmscope.relations import estimate_lre, jacobian, load_relation
    from lmscope.relations.lre import Prompting, _prompt

    rel = load_relation("country_capital")
    ids, pos = _prompt(model, rel, rel.train[0][0], Prompting())
    layer, L, d = 8, model.shape.n_layers, model.shape.d_model
    J, s, _ = jacobian(model, ids, pos, layer)
    x = torch.tensor([list(ids)])

    def graph() -> tuple[torch.Tensor, torch.Tensor]:
        H = s.clone().requires_grad_(True)
        st: dict[str, torch.Tensor] = {}

        def feed(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            t[:, pos] = H
            return t

        def keep(t: torch.Tensor) -> torch.Tensor:
            st["o"] = t
            return t

        with ls.intervene(model, {Site("resid_post", layer): edits.custom(feed), Site("resid_post", L - 1): edits.custom(keep)}):
            model(x, grad=True)
        return H, st["o"][0, -1]

    def per_row_forward() -> None:  # a forward and a backward per row
        for i in range(rows):
            H, o = graph()
            torch.autograd.grad(o[i], H)

    def per_row_retained() -> None:  # one forward, a backward per row through the kept graph
        H, o = graph()
        for i in range(rows):
            torch.autograd.grad(o[i], H, retain_graph=True)

    H, o = graph()
    got = torch.stack([torch.autograd.grad(o[i], H, retain_graph=True)[0] for i in range(rows)])
    assert torch.allclose(got, J[:rows], atol=1e-5), "batched Jacobian differs from the row-by-row one"
    t = interleaved("LRE Jacobian", {"batched (all rows)": lambda: jacobian(model, ids, pos, layer),
                                     f"per row, forward each ({rows} rows)": per_row_forward,
                                     f"per row, retained graph ({rows} rows)": per_row_retained}, reps)  # fmt: skip
    full = t.median("batched (all rows)")
    out = [_row(t.name, "batched (all rows)", full, None, "", peak=t.peak_mb.get("batched (all rows)"))]
    for v in list(t.samples)[1:]:
        scaled = t.median(v) * d / rows
        out.append(_row(t.name, v.split(" (")[0] + f" (scaled to {d} rows)", scaled, full, "batched",
                        f"speed-up {scaled / full:.1f}x"))  # fmt: skip
    t0 = time.perf_counter()
    estimate_lre(model, rel, layer, n_prompts=3)
    out.append(_row(t.name, "estimate_lre, 3 prompts", time.perf_counter() - t0, None, "", "one run"))
    return out


def _windows(model: ls.Model, n: int) -> torch.Tensor:
    from lmscope.data.corpus import token_chunks

    return torch.stack(list(token_chunks(model.tokenizer, 128, n, split="heldout")))


def evaluations(model: ls.Model, reps: int, windows: int) -> list[dict[str, Any]]:
    """Each evaluation against the passes it needs, timed as bare prefix passes in the same rounds."""
    from lmscope.icl.tasks import FORMATS, load_task, make_queries
    from lmscope.icl.vectors import ZeroShot, build_vectors, evaluate_injection
    from lmscope.neurons.ablate import ablate
    from lmscope.saes import SAE, SAEConfig
    from lmscope.saes.features import harvest_acts
    from lmscope.saes.metrics import evaluate_sae

    ids = _windows(model, windows)
    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig("topk", model.shape.d_model, 8 * model.shape.d_model, k=32, hook_name="blocks.6.hook_resid_post"),
              generator=gen)  # fmt: skip
    n_controls, modes, nlayer = 3, ("zero", "mean"), 15

    def passes(start: int, edited: int) -> None:  # one clean pass per batch, `edited` passes from `start`
        for i in range(0, ids.shape[0], 8):
            p = Prefix(model, Batch.unpadded(ids[i : i + 8]), layers=[start], positions=False)
            for _ in range(edited):
                p.forward(copies=1, layer=start)

    task = load_task("antonyms")
    q = make_queries(model, task, FORMATS["qa"], k=5, n=30, seed=0)
    layers = list(range(0, model.shape.n_layers, 3))
    vecs = build_vectors(model, task, FORMATS["qa"], layers, k=5, n_prompts=20, seed=0)

    def icl_sweep() -> None:
        runs = ZeroShot(model, q.zero_shot, layers)
        for method in ("icv", "task_vector"):
            for la in layers:
                evaluate_injection(model, runs, q.targets, method, vecs, la)

    def icl_passes() -> None:
        runs = ZeroShot(model, q.zero_shot, layers)
        for _ in ("icv", "task_vector"):
            for la in layers:
                for p in runs.prefixes:
                    p.forward(copies=1, layer=la)

    work = {
        "SAE eval (clean, spliced, zero)": lambda: evaluate_sae(model, sae, ids),
        "  its passes": lambda: passes(6, 2),
        f"neuron ablation ({len(modes)} modes x {1 + n_controls} sets)": lambda: ablate(
            model, nlayer, [1, 2, 3], ids, modes=modes, n_controls=n_controls),
        "  its passes ": lambda: passes(nlayer, len(modes) * (1 + n_controls)),
        f"ICL sweep (2 methods x {len(layers)} layers)": icl_sweep,
        "  its passes  ": icl_passes,
        "SAE dashboards (3 latents)": lambda: dashboards(model, sae, ids),
        "  its passes   ": lambda: harvest_acts(model, sae.cfg.hook_name, ids),
    }
    with torch.no_grad():
        t = interleaved("evaluations", work, reps)
    names = list(work)
    rows = []
    for task_name, floor in zip(names[::2], names[1::2], strict=True):
        rows.append(_row(t.name, task_name, t.median(task_name), t.median(floor), "its forward passes",
                         f"passes alone {t.median(floor):.2f} s", t.peak_mb.get(task_name)))  # fmt: skip
    return rows


def dashboards(model: ls.Model, sae: Any, ids: torch.Tensor) -> None:
    """What ``lmscope sae dashboard`` does without a store: harvest, latent statistics, three pages."""
    import tempfile

    from lmscope.saes.dashboard import write_dashboards
    from lmscope.saes.features import harvest_acts, latent_stats

    acts, tokens = harvest_acts(model, sae.cfg.hook_name, ids)
    stats = latent_stats(sae, acts, tokens, keep_codes=True)
    live = (stats.density > 0).nonzero()[:3, 0].tolist()
    with tempfile.TemporaryDirectory() as folder:
        write_dashboards(model, sae, stats, folder, live)


def sae_training(model: ls.Model, reps: int, tokens: int, d_sae: int, k: int) -> list[dict[str, Any]]:
    from lmscope.saes import SAEConfig, TensorSource, TrainConfig, train_sae
    from lmscope.saes.features import harvest_acts

    x = harvest_acts(model, "blocks.12.hook_resid_post", _windows(model, -(-tokens // 127)))[0][:tokens].contiguous()
    batch = 1024
    steps = x.shape[0] // batch
    batches = [x[i * batch : (i + 1) * batch] for i in range(steps)]
    d_in = x.shape[1]

    def ours() -> None:
        train_sae(TensorSource(x), SAEConfig("topk", d_in, d_sae, k=k),
                  TrainConfig(total_tokens=steps * batch, batch_size=batch, lr=4e-4, warmup_steps=10, decay_start=1.0,
                              progress=False, init_tokens=batch))  # fmt: skip

    work: dict[str, Any] = {"lmscope TopK": ours}
    try:
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer

        def theirs() -> None:
            cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=4e-4,
                                   lr_warm_up_steps=10, lr_end=4e-4, n_checkpoints=0,
                                   logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1)  # fmt: skip
            SAETrainer(cfg, TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k)), iter(batches)).fit()

        work["SAELens TopK"] = theirs
    except ImportError as exc:
        print(f"SAELens skipped: {exc}", file=sys.stderr)
    W = torch.randn(d_in, d_sae, requires_grad=False)

    def floor() -> None:  # the dense GEMMs a TopK step cannot avoid: encoder forward and its weight gradient
        for b in batches:
            g = b @ W
            b.t() @ g

    work["GEMM floor (encoder fwd + grad)"] = floor
    t = interleaved(f"SAE training ({steps * batch} tokens)", work, reps)
    n_tok = steps * batch
    rows = [_row(t.name, v, t.median(v), t.median("lmscope TopK"), "lmscope", f"{n_tok / t.median(v):,.0f} tokens/s",
                 t.peak_mb.get(v)) for v in work]  # fmt: skip
    return rows


def cli_startup(reps: int) -> list[dict[str, Any]]:
    exe = str(Path(sys.executable).with_name("lmscope"))
    times = []
    for _ in range(max(3, reps)):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_s = time.perf_counter() - t0
    return [_row("CLI", "lmscope --help", statistics.median(times), None, "", f"python -c 'import torch' takes {torch_s:.2f} s")]
