"""``lmscope sae train|eval|dashboard|steer``: sparse autoencoders from a shell.

    lmscope sae train --store runs/store12 --site blocks.12.hook_resid_post --arch topk --d-sae 2304 --k 32 \\
        --tokens 512000 --out runs/sae12            # rerun the same command to resume
    lmscope sae eval --sae runs/sae12/sae --windows 64 --out runs/sae12/eval
    lmscope sae dashboard --sae runs/sae12/sae --store runs/store12 --out runs/sae12/dash
    lmscope sae steer --sae runs/sae12/sae --latent 7 --words python code --out runs/sae12/steer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmscope.cli.common import model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sae", help="train, evaluate, explain and steer with sparse autoencoders")
    s = p.add_subparsers(dest="sae_command", metavar="STEP", required=True)
    t = s.add_parser("train", help="train an SAE from an activation store or streamed from the model")
    t.add_argument("--store", default=None, help="activation store folder (lmscope.core.store); else stream")
    t.add_argument("--site", required=True, help="e.g. blocks.12.hook_resid_post")
    t.add_argument("--arch", choices=("standard", "topk", "batchtopk", "jumprelu"), default="topk")
    t.add_argument("--d-sae", type=int, required=True)
    t.add_argument("--k", type=int, default=32)
    t.add_argument("--l1", type=float, default=5.0, help="L1 coefficient (standard)")
    t.add_argument("--l0", type=float, default=1e-3, help="L0 coefficient (jumprelu)")
    t.add_argument("--tokens", type=int, required=True, help="training tokens (beyond the store: epochs)")
    t.add_argument("--batch", type=int, default=1024)
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--normalize", choices=("none", "expected_average_only_in"), default="expected_average_only_in")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="run folder: checkpoint.safetensors, sae/ (SAELens layout), result.json")
    _model_args(t)
    t.set_defaults(func=run_train)
    e = s.add_parser("eval", help="L0, FVU, CE loss recovered, KL, dead/dense latents on held-out text")
    e.add_argument("--sae", required=True, help="SAE folder (SAELens layout)")
    e.add_argument("--windows", type=int, default=64)
    e.add_argument("--seq-len", type=int, default=128)
    e.add_argument("--out", default=None)
    _model_args(e)
    e.set_defaults(func=run_eval)
    d = s.add_parser("dashboard", help="static HTML pages per latent and a searchable index")
    d.add_argument("--sae", required=True)
    d.add_argument("--store", default=None, help="activation store to read contexts from (else harvest --windows)")
    d.add_argument("--windows", type=int, default=256)
    d.add_argument("--max-tokens", type=int, default=None, help="read at most this many stored tokens (whole windows)")
    d.add_argument("--latents", type=int, nargs="*", default=None,
                   help="latents to write (default: --n-latents spread over the density ranking)")
    d.add_argument("--n-latents", type=int, default=100)
    d.add_argument("--out", required=True)
    _model_args(d)
    d.set_defaults(func=run_dashboard)
    g = s.add_parser("steer", help="add or clamp a latent while generating; concept mention rate vs baseline")
    g.add_argument("--sae", required=True)
    g.add_argument("--latent", type=int, required=True)
    g.add_argument("--words", nargs="+", required=True, help="concept words counted in the generations")
    g.add_argument("--prompts", nargs="+", default=None)
    g.add_argument("--strengths", type=float, nargs="+", default=[0.0, 4.0, 8.0])
    g.add_argument("--mode", choices=("add", "clamp"), default="add")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--out", default=None)
    _model_args(g)
    g.set_defaults(func=run_steer)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id")
    p.add_argument("--tiny", default=None, help="a tiny random model of this family (for trying the command)")


def _model(args: argparse.Namespace):
    return model_from_args(args)


def _chunks(model, n: int, seq_len: int, split: str):
    import torch

    from lmscope.core.corpus import token_chunks

    return torch.stack(list(token_chunks(model.tokenizer, seq_len, n, split=split)))  # type: ignore[arg-type]


def run_train(args: argparse.Namespace) -> int:
    from lmscope.core.artifacts import Provenance, atomic_write_json
    from lmscope.saes import ModelSource, SAEConfig, StoreSource, TrainConfig, train_sae
    from lmscope.saes.interop import save_saelens
    from lmscope.saes.training import training_identity

    t0 = time.perf_counter()
    if args.store:
        from lmscope.core.store import ActivationStore

        store = ActivationStore(args.store)  # every shard checked before any work starts
        source = StoreSource(store, args.site, seed=args.seed)
        model_id, weight_hash = store.manifest["model_id"], store.manifest["weight_hash"]
    else:
        model = _model(args)
        n_chunks = max(64, args.tokens // 127 + 1)
        source = ModelSource(model, args.site, _chunks(model, n_chunks, 128, "train"), seed=args.seed)  # type: ignore[assignment]
        model_id, weight_hash = model.model_id, model.weight_hash
    cfg = SAEConfig(args.arch, source.d_in, args.d_sae, k=args.k if args.arch in ("topk", "batchtopk") else None,
                    l1_coeff=args.l1, l0_coeff=args.l0, normalize_activations=args.normalize, hook_name=args.site,
                    model_name=model_id)  # fmt: skip
    tcfg = TrainConfig(total_tokens=args.tokens, batch_size=args.batch, lr=args.lr, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)  # fmt: skip
    res = train_sae(source, cfg, tcfg, out_dir=args.out)
    prov = Provenance.of(site=args.site, store=args.store, training_identity=training_identity(source, cfg, tcfg).digest)
    prov.model_id, prov.weight_hash, prov.dataset_hash = model_id, weight_hash, source.fingerprint()
    folder = save_saelens(res.sae, Path(args.out) / "sae", provenance=prov)
    result = {"sae": str(folder), "steps": res.steps, "tokens": res.tokens, "resumed_from": res.resumed_from,
              "train_wall_s": res.wall_s, "total_wall_s": time.perf_counter() - t0, "final": res.log[-1] if res.log else {},
              "log": res.log}  # fmt: skip
    atomic_write_json(Path(args.out) / "result.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from lmscope.core.artifacts import atomic_write_json
    from lmscope.core.outputs import Report
    from lmscope.saes.interop import load_saelens
    from lmscope.saes.metrics import evaluate_sae, frequency_figure

    sae = load_saelens(args.sae)  # the input file first: a bad one is a usage error, before the model loads
    model = _model(args)
    t0 = time.perf_counter()
    ev = evaluate_sae(model, sae, _chunks(model, args.windows, args.seq_len, "heldout"))
    result = {**ev.summary(), "eval_wall_s": time.perf_counter() - t0}
    print(json.dumps(result, indent=1))
    if args.out:
        rep = Report(f"SAE evaluation: {sae.cfg.hook_name}")
        rep.table("Metrics (held-out text)", ["metric", "value"], [[k, v] for k, v in result.items()])
        rep.figure("latent_frequency", frequency_figure(ev.freqs), "latent firing frequency")
        rep.write(args.out, result)
        atomic_write_json(Path(args.out) / "freqs.json", ev.freqs.tolist())
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    import torch

    from lmscope.saes.dashboard import write_dashboards
    from lmscope.saes.features import harvest_acts, latent_stats
    from lmscope.saes.interop import load_saelens

    sae = load_saelens(args.sae)  # the input file first: a bad one is a usage error, before the model loads
    model = _model(args)
    if args.store:
        from lmscope.core.store import ActivationStore

        store = ActivationStore(args.store)  # every shard checked before any work starts
        acts = store.load_all(sae.cfg.hook_name)  # stays float16; latent_stats converts block by block
        tok = store.tokens()
        seq = store.manifest["tokens_per_chunk"]
        ids = tok["token_ids"].long().reshape(-1, seq)
        if args.max_tokens:
            n = max(1, args.max_tokens // seq)
            ids, acts = ids[:n], acts[: n * seq]
    else:
        acts, ids = harvest_acts(model, sae.cfg.hook_name, _chunks(model, args.windows, 128, "train"))
    stats = latent_stats(sae, acts, ids)
    latents = args.latents
    if not latents:
        # Spread over the density ranking of live latents, so the index shows rare and common ones alike.
        live = (stats.density > 0).nonzero()[:, 0]
        ranked = live[stats.density[live].argsort(descending=True)]
        pick = torch.linspace(0, len(ranked) - 1, min(args.n_latents, len(ranked))).round().long().unique()
        latents = ranked[pick].tolist()
    folder = write_dashboards(model, sae, stats, args.out, latents)
    print(f"wrote {len(latents)} latent pages; open {folder / 'index.html'}")
    return 0


def run_steer(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lmscope.core.outputs import Report
    from lmscope.saes.interop import load_saelens
    from lmscope.saes.steering import feature_steering

    sae = load_saelens(args.sae)  # the input file first: a bad one is a usage error, before the model loads
    model = _model(args)
    prompts = args.prompts or [
        "Tell me a short story.", "What did you do today?", "Describe your favourite place.", "Write a poem about the sea.",
        "Give me some advice for a job interview.", "What is the best way to learn?", "Describe a busy morning.",
        "What makes a good friend?",
    ]  # fmt: skip
    res = feature_steering(model, sae, args.latent, prompts, args.words, strengths=args.strengths, mode=args.mode,
                           max_new_tokens=args.max_new_tokens)  # fmt: skip
    result = asdict(res)
    print(json.dumps({"strengths": res.strengths, "mention_rates": res.rates}, indent=1))
    if args.out:
        rep = Report(f"Steering latent {args.latent} ({args.mode})")
        rep.table("Mention rate", ["strength", "rate"], [[s, r] for s, r in zip(res.strengths, res.rates, strict=True)])
        for s, texts in res.samples.items():
            rep.text(f"Generations at strength {s}", "\n---\n".join(texts))
        rep.write(args.out, result)
    return 0
