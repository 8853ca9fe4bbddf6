"""Harvesting on a Ray cluster: actors that each load the model once and write shards into one store.

The driver (the process that calls :func:`lmscope.experiments.store.harvest` with ``ray=``) reads the
corpus, cuts the token windows of each shard, and hands each shard to an actor; the actor runs the
forwards and writes the shard's files into the store folder with the same code a single-process
harvest uses (:func:`~lmscope.experiments.store.harvest_shard`), and returns the shard's manifest
entry. Only the driver writes the manifest, one committed shard at a time, so the store's format,
bytes and resume rules are the single-process ones: rerunning after a crash computes exactly the
shards the manifest lacks.

The store folder must be visible at the same path to the driver and every worker (one machine, or a
shared file system on a cluster); the driver checks each returned file's size before it commits it.
Workers rebuild the model from :attr:`~lmscope.core.model.Model.load_spec` and must find the same
weights (their weight hash is checked against the driver's before any work), and run torch with the
driver's thread count so that their arithmetic, and hence the shards' bytes, match a single-process harvest.

A worker killed mid-shard (out of memory, a lost node) is restarted by Ray and its shard redone, up
to ``retries`` times; past that the harvest stops with every committed shard kept.

    lmscope harvest --sites blocks.12.hook_resid_post --tokens 1000000 --ray local --workers 2
    lmscope harvest ... --ray 10.0.0.5:6379      # an existing cluster (ray start --head on that node)
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lmscope.core.model import Model
    from lmscope.experiments.store import HarvestConfig

IN_FLIGHT_PER_WORKER = 2
"""Shards queued per actor: one running, one waiting, so an actor never idles while the driver tokenizes."""


class HarvestWorker:
    """One Ray actor: a model, loaded once, that turns token windows into shard files."""

    def __init__(self, spec: dict[str, Any], threads: int, rank: int) -> None:
        from lmscope.core.loading import reload

        torch.set_num_threads(threads)
        offload = spec.get("offload_folder")
        self.model = reload(spec, offload_folder=None if offload is None else f"{offload}/ray-worker-{rank}-{os.getpid()}")

    def weight_hash(self) -> str:
        return self.model.weight_hash

    def shard(self, config: dict[str, Any], folder: str, index: int, ids: torch.Tensor) -> dict[str, Any]:
        from lmscope.experiments.store import HarvestConfig, harvest_shard

        return harvest_shard(self.model, HarvestConfig(**config), Path(folder), index, ids)


def _connect(address: str, workers: int, cpus: float) -> bool:
    """Join (or, for ``"local"``, start on 127.0.0.1) a Ray cluster; True if this call started it.

    ``ray.init`` installs its own SIGTERM handler in the calling process and ``ray.shutdown`` leaves it
    there; the caller's handlers are put back at once, so a harvest changes nothing of the process's signals.
    """
    import ray

    if ray.is_initialized():
        return False
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _init(ray, address, workers, cpus)
    finally:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return True


def _init(ray: Any, address: str, workers: int, cpus: float) -> None:
    if address == "local":
        ray.init(address="local", num_cpus=max(1, int(round(workers * cpus))), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)  # fmt: skip
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def harvest_on_ray(
    model: Model,
    config: HarvestConfig,
    folder: Path,
    todo: list[int],
    commit: Callable[[dict[str, Any]], None],
    *,
    address: str,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    retries: int = 2,
) -> None:
    """Compute the shards ``todo`` on ``workers`` Ray actors; ``commit(entry)`` records each one as it arrives."""
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'lmscope[scale]' (or pip install ray)") from None
    from lmscope.experiments.store import _read_verified, shard_windows

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if model.load_spec is None:
        raise ValueError("Ray workers rebuild the model from model.load_spec, and this model has none (it was not "
                         "built by lmscope.load or lmscope.load_tiny); load it with one of those")  # fmt: skip
    if not todo:
        return
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if model.device.type == "cuda" else 0.0)
    started = _connect(address, workers, cpus_per_worker)
    actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus, max_restarts=retries,
                       max_task_retries=retries)(HarvestWorker)  # fmt: skip
    actors = [actor.remote(model.load_spec, torch.get_num_threads(), r) for r in range(workers)]
    try:
        expected = model.weight_hash
        for r, h in enumerate(ray.get([a.weight_hash.remote() for a in actors])):
            if h != expected:
                raise RuntimeError(f"Ray worker {r} loaded other weights than the driver (weight hash {h[:12]}... vs "
                                   f"{expected[:12]}...): a model changed in memory after loading, or another "
                                   "checkpoint at the same path on that node")  # fmt: skip
        cfg = {**asdict(config), "progress": False}
        windows = shard_windows(model.tokenizer, config, todo)
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (shard, actor)
        load = [0] * workers
        exhausted = False
        while pending or not exhausted:
            while not exhausted and min(load) < IN_FLIGHT_PER_WORKER:
                nxt = next(windows, None)
                if nxt is None:
                    exhausted = True
                    break
                r = load.index(min(load))
                pending[actors[r].shard.remote(cfg, str(folder), *nxt)] = (nxt[0], r)
                load[r] += 1
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index, r = pending.pop(ref)
                load[r] -= 1
                try:
                    entry = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise RuntimeError(f"Ray worker {r} failed on shard {index} after {retries} retries ({type(exc).__name__}:"
                                       f" {exc}); every committed shard is kept: rerun to resume") from exc  # fmt: skip
                for info in entry["files"].values():
                    _read_verified(folder, info, check_hash=False)  # the worker's files are visible here
                commit(entry)
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()
