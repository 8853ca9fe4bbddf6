"""The scale paths on this machine, each checked for equality and timed beside its single-process twin.

    .venv/bin/python benchmarks/scale.py                      # bundled model, about 6 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py --tokens 16256 --json outputs/scale.json

(a) harvest: one process with all the threads vs a local Ray cluster (127.0.0.1) of ``--workers`` actors with
    the threads split between them; the two stores must hold the same sha256 per shard file. Ray's start-up
    (cluster + actors loading the model) is timed apart from the shards.
(b) SAE training from that store: one process vs ``torchrun`` with 2 gloo ranks at the same global batch and
    seed; the largest weight difference is printed.
(c) a forward of 8 x 128 tokens through the bundled model with its upper half offloaded to disk by accelerate
    vs the same model in memory; outputs must be bitwise equal.

Wall times include process start-up where a variant needs processes (torchrun); the ratio column is
variant / single process. A machine with 2 cores shows what the engines cost, not what a cluster gains.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import lmscope as ls
from lmscope.core.sites import Site
from lmscope.experiments.store import HarvestConfig, harvest

SITE = "blocks.12.hook_resid_post"


def _shard_hashes(folder: Path) -> list[dict[str, str]]:
    m = json.loads((folder / "manifest.json").read_text())
    return [{k: v["sha256"] for k, v in s["files"].items()} for s in m["shards"]]


def bench_harvest(model: ls.Model, tmp: Path, tokens: int, workers: int, threads: int) -> dict[str, Any]:
    import ray

    cfg = HarvestConfig(sites=[SITE], n_tokens=tokens, tokens_per_shard=2032, progress=False)
    torch.set_num_threads(threads)
    t = time.perf_counter()
    harvest(model, cfg, tmp / "single")
    single = time.perf_counter() - t
    torch.set_num_threads(max(1, threads // workers))  # each actor gets the driver's thread count
    t = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    up = time.perf_counter() - t
    t = time.perf_counter()
    harvest(model, cfg, tmp / "ray", ray="local", workers=workers)
    on_ray = time.perf_counter() - t
    ray.shutdown()
    torch.set_num_threads(threads)
    stored = cfg.n_chunks * cfg.tokens_per_chunk
    return {"tokens": stored, "shards": cfg.n_shards, "single_s": single, "single_tok_s": stored / single,
            "ray_cluster_start_s": up, "ray_s": on_ray, "ray_tok_s": stored / on_ray, "workers": workers,
            "threads_single": threads, "threads_per_worker": max(1, threads // workers),
            "identical": _shard_hashes(tmp / "single") == _shard_hashes(tmp / "ray")}  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_ddp(store: Path, tmp: Path, threads: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    args = ["sae", "train", "--store", str(store), "--site", SITE, "--d-sae", "4608", "--k", "32", "--tokens",
            str(4096 * 24), "--batch", "4096", "--quiet", "--checkpoint-every", "0"]  # fmt: skip
    env = {**os.environ, "LMSCOPE_THREADS": str(threads), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmscope", *args, "--out", str(tmp / "one")], check=True, env=env)
    one = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1",
                    "--master-addr=127.0.0.1", f"--master-port={_port()}", "-m", "lmscope", *args,
                    "--out", str(tmp / "ddp")], check=True, env=env)  # fmt: skip
    ddp = time.perf_counter() - t
    a, b = (load_file(str(tmp / d / "sae" / "sae_weights.safetensors")) for d in ("one", "ddp"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    fvu = [json.loads((tmp / d / "result.json").read_text())["summary"].get("fvu") for d in ("one", "ddp")]
    return {"steps": 24, "batch": 4096, "one_s": one, "ddp_s": ddp, "max_weight_diff": diff, "fvu_one": fvu[0],
            "fvu_ddp": fvu[1], "train_s": [json.loads((tmp / d / "result.json").read_text())["data"]["train_wall_s"]
                                           for d in ("one", "ddp")]}  # fmt: skip


def bench_offload(model: ls.Model, tmp: Path) -> dict[str, Any]:
    from lmscope.core.loading import DEFAULT_MODEL, _dequantized_copy, bundled_gguf

    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "disk", "lm_head": "cpu",
                 **{f"model.layers.{i}": "cpu" if i < 15 else "disk" for i in range(model.shape.n_layers)}}  # fmt: skip
    split = ls.load(_dequantized_copy(bundled_gguf(DEFAULT_MODEL)), device_map=placement, offload_folder=tmp / "offload")
    from lmscope.data.corpus import token_chunks

    ids = torch.stack(list(token_chunks(model.tokenizer, 128, 8)))
    times: dict[str, list[float]] = {"memory": [], "offload": []}
    outs = {}
    for _ in range(3):
        for name, m in (("memory", model), ("offload", split)):
            t = time.perf_counter()
            with torch.inference_mode(), ls.capture(m, [Site("resid_post", 29)]) as acts:
                outs[name] = (m(ids), acts[Site("resid_post", 29)])
            times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[1] for k, v in times.items()}
    same = torch.equal(outs["memory"][0], outs["offload"][0]) and torch.equal(outs["memory"][1], outs["offload"][1])
    return {"memory_s": med["memory"], "offload_s": med["offload"], "ratio": med["offload"] / med["memory"],
            "bitwise_equal": same, "layers_on_disk": 15}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=65024, help="harvested tokens")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=int(os.environ.get("LMSCOPE_THREADS", "2")))
    p.add_argument("--only", default="harvest,ddp,offload")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = ls.load()
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "threads": args.threads,
                           "load": os.getloadavg()[0]}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        parts = args.only.split(",")
        if "harvest" in parts or "ddp" in parts:
            out["harvest"] = h = bench_harvest(model, tmp, args.tokens, args.workers, args.threads)
            print(f"harvest {h['tokens']} tokens: one process {h['single_s']:.1f} s ({h['single_tok_s']:.0f} tok/s, "
                  f"{h['threads_single']} threads); Ray {h['workers']} x {h['threads_per_worker']} threads "
                  f"{h['ray_s']:.1f} s ({h['ray_tok_s']:.0f} tok/s, ratio {h['ray_s'] / h['single_s']:.2f}) + cluster "
                  f"start {h['ray_cluster_start_s']:.1f} s; same sha256 per shard: {h['identical']}")  # fmt: skip
        if "ddp" in parts:
            out["ddp"] = r = bench_ddp(tmp / "single", tmp, args.threads)
            print(f"SAE training {r['steps']} x {r['batch']}: one process {r['one_s']:.1f} s, torchrun 2 ranks "
                  f"{r['ddp_s']:.1f} s (training loops {r['train_s'][0]:.1f} s vs {r['train_s'][1]:.1f} s); "
                  f"max |weight diff| {r['max_weight_diff']:.2e}; FVU {r['fvu_one']:.4f} vs {r['fvu_ddp']:.4f}")  # fmt: skip
        if "offload" in parts:
            out["offload"] = o = bench_offload(model, tmp)
            print(f"forward 8x128 with 15 of 30 layers on disk: {o['offload_s']:.2f} s vs {o['memory_s']:.2f} s in "
                  f"memory ({o['ratio']:.2f}x); bitwise equal: {o['bitwise_equal']}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
