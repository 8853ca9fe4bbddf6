"""An on-disk activation store: harvest sites over a corpus into checksummed safetensors shards.

SAE training, tuned-lens fitting and neuron statistics need millions of activations, more than
fit in RAM. :func:`harvest` runs the model over fixed-length token windows
(:func:`lmscope.data.corpus.token_chunks`), captures the chosen sites with
``capture(..., stop_early=True)`` (the forward stops after the deepest harvested site) and
streams them to disk. :class:`ActivationStore` reads them back, verifying checksums, and yields
shuffled batches that visit every token exactly once per epoch.

Layout of a store folder::

    manifest.json                                  settings, provenance, and one entry per completed shard
    tokens/shard_00000.safetensors                 token ids, position in window, window index (n_tokens,)
    blocks.6.hook_resid_post/shard_00000.safetensors   the site's activations (n_tokens, d)

**Resuming.** A shard holds ``chunks_per_shard`` whole windows, run in forward batches that never
straddle shards, so a shard's bytes do not depend on where a run started or which process ran it.
Each file is written to a temporary name and renamed; the manifest (the completed shards, in index
order) is rewritten atomically only after all of a shard's files are in place. An interrupted
harvest therefore leaves complete shards plus orphan files of shards in flight (one for a single
process, up to two per worker on Ray), which the next run overwrites; rerunning the same call
computes exactly the shards the manifest lacks and produces byte-identical files to an
uninterrupted run. Nothing is lost or counted twice.

**Memory bound.** Per site, at most ``tokens_per_shard`` tokens are buffered (one preallocated
tensor) before flushing; serializing a shard file makes one more copy of that site's buffer.
The in-flight forward batch adds its captured activations. :func:`memory_bound` returns the sum:
``sum_sites(tokens_per_shard * width * itemsize) + max_site(tokens_per_shard * width * itemsize)
+ batch_size * seq_len * sum_sites(width) * 4`` bytes (plus the model and tokenizer, not counted).

    >>> import lmscope as ls
    >>> from lmscope.experiments.store import HarvestConfig, harvest, ActivationStore
    >>> model = ls.load_tiny("llama")
    >>> cfg = HarvestConfig(sites=["blocks.1.hook_resid_post"], n_tokens=2048, seq_len=64, progress=False)
    >>> store = harvest(model, cfg, "/tmp/lmscope-doc-store", overwrite=True)
    >>> x = next(store.iter_batches("blocks.1.hook_resid_post", batch_size=256))
    >>> tuple(x.shape)
    (256, 64)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmscope.core.edits import check_finite
from lmscope.core.hooks import capture
from lmscope.core.sites import Site, as_site
from lmscope.core.version import LMSCOPE_VERSION
from lmscope.data.corpus import SOURCES, Split, describe_corpus, token_chunks, user_files
from lmscope.experiments.artifacts import atomic_write_bytes, atomic_write_json
from lmscope.experiments.identity import Identity, StaleResume, check_resume, identity

if TYPE_CHECKING:
    from lmscope.core.model import Model

FORMAT = "lmscope.activation_store"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_TOKENS_DIR = "tokens"


@dataclass
class HarvestConfig:
    """What to harvest, from how much text, into what shards."""

    sites: list[str]
    """Site names (``"blocks.6.hook_resid_post"``) or Sites; per-head and pattern sites are refused."""
    n_tokens: int = 65536
    """Tokens to store per site (rounded up to whole windows)."""
    seq_len: int = 128
    """Window length fed to the model, BOS included."""
    drop_first: int = 1
    """Positions dropped from each window before storing (the BOS / attention-sink position is atypical)."""
    batch_size: int = 8
    """Windows per forward pass (the last batch of a shard may be smaller)."""
    tokens_per_shard: int = 16384
    """Approximate stored tokens per shard; rounded down to whole windows (at least one)."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    seed: int = 0
    """Corpus document order."""
    split: Split = "train"
    """Corpus split (``"heldout"`` for evaluation stores)."""
    corpus: tuple[str, ...] = SOURCES
    """Corpus sources: named ones (``stdlib``, ``python-doc``, ``pydoc-topics``) and/or user text files
    (``.txt``, ``.jsonl``, ``.parquet``; see :mod:`lmscope.data.corpus`)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if isinstance(self.sites, (str, Site)):
            self.sites = [self.sites]  # type: ignore[list-item]
        sites = [as_site(s) for s in self.sites]
        if not sites:
            raise ValueError("harvest needs at least one site")
        for s in sites:
            if s.head is not None or s.kind in ("attn_pattern", "logits"):
                raise ValueError(f"{s} cannot be harvested: store whole sites with one vector per token (not heads, "
                                 "patterns or logits)")  # fmt: skip
        self.sites = list(dict.fromkeys(str(s) for s in sites))
        self.corpus = (self.corpus,) if isinstance(self.corpus, str) else tuple(self.corpus) or SOURCES
        user_files(self.corpus)  # a missing or unreadable-kind file is refused before any work
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        if not 0 <= self.drop_first < self.seq_len:
            raise ValueError(f"drop_first must be in [0, seq_len={self.seq_len}), got {self.drop_first}")
        for name in ("n_tokens", "seq_len", "batch_size", "tokens_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def tokens_per_chunk(self) -> int:
        """Stored tokens per window."""
        return self.seq_len - self.drop_first

    @property
    def chunks_per_shard(self) -> int:
        return max(1, min(self.tokens_per_shard // self.tokens_per_chunk, self.n_chunks))

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_tokens / self.tokens_per_chunk)

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_chunks / self.chunks_per_shard)


def _site_widths(model: Model, sites: list[str]) -> dict[str, int]:
    widths = {}
    for name in sites:
        site = as_site(name)
        if site.kind in ("attn_z", "q", "k", "v"):
            n = model.shape.n_kv_heads if site.kind in ("k", "v") else model.shape.n_heads
            widths[name] = n * model.shape.d_head  # heads flattened: (tokens, head * d_head)
        else:
            widths[name] = model.site_width(site)
    return widths


RUNTIME_OVERHEAD = 12 * 2**20
"""Bytes the allocator and interpreter keep beyond the tensors a harvest holds (malloc arenas, tokenizer
state, Python objects); measured on CPU with glibc, and part of the stated bound."""


def memory_bound(model: Model, config: HarvestConfig) -> int:
    """Bytes of RAM a harvest may hold beyond the model itself (see the module docstring).

    One shard buffer per site, the serialized bytes of the largest shard file (written from memory),
    the captured activations of one batch (float32, stored and cloned), the forward pass's own working
    set for one batch (residual, MLP and attention tensors of one layer, a few alive at once) and
    :data:`RUNTIME_OVERHEAD`.
    """
    item = _DTYPES[config.dtype].itemsize
    per_site = [config.chunks_per_shard * config.tokens_per_chunk * w * item for w in _site_widths(model, config.sites).values()]
    tokens = config.batch_size * config.seq_len
    in_flight = 2 * tokens * sum(_site_widths(model, config.sites).values()) * 4
    s = model.shape
    working = 4 * (tokens * (4 * s.d_model + 3 * s.d_mlp) + config.batch_size * s.n_heads * config.seq_len**2) * 4
    return sum(per_site) + max(per_site) + in_flight + working + RUNTIME_OVERHEAD


def _shard_file(site_or_tokens: str, index: int) -> str:
    return f"{site_or_tokens}/shard_{index:05d}.safetensors"


def _write_tensors(folder: Path, rel: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    import hashlib

    from safetensors.torch import save

    data = save(tensors)
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return {"file": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _settings(model: Model, config: HarvestConfig) -> dict[str, Any]:
    """Everything that determines the shards' bytes; a resumed harvest must match it exactly."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_id": model.model_id,
        "weight_hash": model.weight_hash,
        "sites": list(config.sites),
        "d": _site_widths(model, config.sites),
        "dtype": config.dtype,
        "seq_len": config.seq_len,
        "drop_first": config.drop_first,
        "batch_size": config.batch_size,
        "tokens_per_chunk": config.tokens_per_chunk,
        "chunks_per_shard": config.chunks_per_shard,
        "tokens_per_shard": config.chunks_per_shard * config.tokens_per_chunk,
        "target_tokens": config.n_chunks * config.tokens_per_chunk,
        "corpus": describe_corpus(split=config.split, seed=config.seed, sources=config.corpus),
        "lmscope_version": LMSCOPE_VERSION,
    }


def harvest_identity(settings: dict[str, Any]) -> Identity:
    """The identity a harvest resumes under: its settings, the model's weights, the corpus, the version."""
    config = {k: v for k, v in settings.items() if k not in ("model_id", "weight_hash", "corpus", "lmscope_version")}
    return identity(config, weights=settings.get("weight_hash"), data=settings.get("corpus"))


def _resume_state(folder: Path, settings: dict[str, Any], overwrite: bool) -> list[dict[str, Any]]:
    """Completed shard entries of an earlier run of the same work (verified), or [].

    The same check as every resume (:func:`~lmscope.experiments.identity.check_resume`): other
    settings, weights, corpus or version are refused, naming what changed (``overwrite=True`` starts over).
    """
    path = folder / "manifest.json"
    if overwrite or not path.exists():
        return []
    old = read_manifest(folder)
    try:
        check_resume(old.get("identity"), harvest_identity(settings), folder)
    except StaleResume as exc:
        raise StaleResume(f"{exc} (or pass overwrite=True / --overwrite to start over)") from None
    shards = old.get("shards", [])
    for entry in shards:
        for info in entry["files"].values():
            _read_verified(folder, info)
    return shards


def _manifest(settings: dict[str, Any], shards: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    body = {
        **settings,
        "identity": harvest_identity(settings).to_dict(),
        "total_tokens": sum(s["n_tokens"] for s in shards),
        "n_shards": len(shards),
        "complete": complete,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards": shards,
    }
    return {**body, "manifest_sha256": _manifest_digest(body)}


def _manifest_digest(body: dict[str, Any]) -> str:
    import hashlib

    canonical = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """A store's manifest after checking it is JSON, carries its own checksum, agrees with itself and
    names only files inside ``folder``; every failure names the file and what is wrong."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no activation store at {folder} (manifest.json missing)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the store's manifest is corrupt") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lmscope activation store manifest (format != {FORMAT!r})")
    missing = [k for k in ("shards", "sites", "d", "dtype", "complete", "manifest_sha256") if k not in m]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it was edited, truncated or written by an older lmscope")
    if m["manifest_sha256"] != _manifest_digest(m):
        raise ValueError(f"{path} does not match its own checksum: it was edited or corrupted after it was written")
    shards = m["shards"]
    if m.get("n_shards") != len(shards) or m.get("total_tokens") != sum(s["n_tokens"] for s in shards):
        raise ValueError(f"{path}: n_shards/total_tokens disagree with the shard list")
    if m["complete"] and "target_tokens" in m and sum(s["n_tokens"] for s in shards) != m["target_tokens"]:
        raise ValueError(f"{path} says complete, but its shards hold {sum(s['n_tokens'] for s in shards)} tokens "
                         f"of the {m.get('target_tokens')} asked for")  # fmt: skip
    root = folder.resolve()
    for entry in shards:
        for info in entry["files"].values():
            target = (folder / info["file"]).resolve()
            if Path(info["file"]).is_absolute() or not target.is_relative_to(root):
                raise ValueError(f"{path} points outside its folder ({info['file']!r}); refusing to read it")
    return m


def harvest(
    model: Model,
    config: HarvestConfig,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    on_shard: Callable[[int], None] | None = None,
    ray: str | None = None,
    workers: int = 2,
) -> ActivationStore:
    """Harvest ``config.sites`` over the corpus into ``out``; resumes an interrupted run of the same config.

    ``on_shard(index)`` is called after each shard is committed (progress reporting; an exception
    there stops the harvest with every committed shard kept). ``ray`` (a cluster address, or
    ``"local"`` to start one on this machine) spreads the shards over ``workers`` Ray actors
    (:mod:`lmscope.experiments.ray_harvest`); the store is the same either way, and either kind of run
    resumes the other's.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    settings = _settings(model, config)
    shards = _resume_state(folder, settings, overwrite)
    todo = [i for i in range(config.n_shards) if i not in {s["index"] for s in shards}]
    bar = _progress(config, settings["target_tokens"], sum(s["n_tokens"] for s in shards))
    try:
        if ray is not None:
            from lmscope.experiments.ray_harvest import harvest_on_ray

            def commit(entry: dict[str, Any]) -> None:
                _commit(folder, settings, shards, entry, config, on_shard)
                if bar is not None:
                    bar.update(entry["n_tokens"])

            harvest_on_ray(model, config, folder, todo, commit, address=ray, workers=workers)
        else:
            buffers = {s: torch.empty(config.chunks_per_shard * config.tokens_per_chunk, w, dtype=_DTYPES[config.dtype])
                       for s, w in settings["d"].items()}  # fmt: skip
            for index, ids in shard_windows(model.tokenizer, config, todo):
                entry = harvest_shard(model, config, folder, index, ids, buffers=buffers,
                                      on_batch=None if bar is None else bar.update)  # fmt: skip
                _commit(folder, settings, shards, entry, config, on_shard)
    finally:
        if bar is not None:
            bar.close()
    # the last commit marked the store complete; a finished store is not rewritten (a new timestamp would
    # change its fingerprint, and with it the identity of everything trained from it)
    return ActivationStore(folder)


def shard_windows(tokenizer: Any, config: HarvestConfig, todo: list[int]) -> Iterator[tuple[int, Tensor]]:
    """``(index, ids)`` for each shard in ``todo`` (ascending): its (windows, seq_len) token ids, read in one pass."""
    if not todo:
        return
    cps, wanted = config.chunks_per_shard, set(todo)
    first = min(todo) * cps
    chunks = token_chunks(tokenizer, config.seq_len, config.n_chunks - first, seed=config.seed, split=config.split,
                          start=first, sources=config.corpus)  # fmt: skip
    for index in range(min(todo), config.n_shards):
        n_here = min(cps, config.n_chunks - index * cps)
        windows = [next(chunks) for _ in range(n_here)]
        if index in wanted:
            yield index, torch.stack(windows)


def harvest_shard(model: Model, config: HarvestConfig, folder: Path, index: int, ids: Tensor, *,
                  buffers: dict[str, Tensor] | None = None,
                  on_batch: Callable[[int], Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run shard ``index``'s windows ``ids`` through the model and write its files; returns its manifest entry.

    A shard is computed in forward batches that never straddle shards, so its bytes do not depend on
    which process computes it or where a run started.
    """
    dtype, tpc, keep = _DTYPES[config.dtype], config.tokens_per_chunk, config.drop_first
    n_here, first = ids.shape[0], index * config.chunks_per_shard
    sites = [as_site(s) for s in config.sites]
    if buffers is None:
        widths = _site_widths(model, config.sites)
        buffers = {s: torch.empty(n_here * tpc, w, dtype=dtype) for s, w in widths.items()}
    for lo in range(0, n_here, config.batch_size):
        batch = ids[lo : lo + config.batch_size].to(model.device)
        with capture(model, sites, stop_early=True, device="cpu") as acts:
            model(batch)
        for name, site in zip(config.sites, sites, strict=True):
            act = acts[site][:, keep:].reshape(batch.shape[0] * tpc, -1)  # (batch * kept, width)
            stored = act.to(dtype)  # checked after the cast: float16 overflows to inf above 65504
            check_finite(stored, f"activations at {name} stored as {config.dtype}"
                         + ("" if act.dtype == dtype else f" (max |x| {float(act.abs().max()):.4g}; choose a "
                            "wider --dtype such as bfloat16 or float32)"))  # fmt: skip
            buffers[name][lo * tpc : lo * tpc + act.shape[0]] = stored
        if on_batch is not None:
            on_batch(batch.shape[0] * tpc)
    n_tok = n_here * tpc
    files = {
        _TOKENS_DIR: _write_tensors(folder, _shard_file(_TOKENS_DIR, index), {
            "token_ids": ids[:, keep:].reshape(-1).to(torch.int32),
            "position": torch.arange(keep, config.seq_len, dtype=torch.int32).repeat(n_here),
            "chunk": torch.arange(first, first + n_here, dtype=torch.int64).repeat_interleave(tpc),
        })
    }  # fmt: skip
    for name in config.sites:
        files[name] = _write_tensors(folder, _shard_file(name, index), {"acts": buffers[name][:n_tok]})
    return {"index": index, "n_tokens": n_tok, "first_chunk": first, "n_chunks": n_here, "files": files}


def _commit(folder: Path, settings: dict[str, Any], shards: list[dict[str, Any]], entry: dict[str, Any],
            config: HarvestConfig, on_shard: Callable[[int], None] | None) -> None:  # fmt: skip
    """Record a shard whose files are in place: the manifest lists completed shards in index order."""
    if any(s["index"] == entry["index"] for s in shards):
        raise RuntimeError(f"shard {entry['index']} was committed twice")
    shards.append(entry)
    shards.sort(key=lambda s: s["index"])
    atomic_write_json(folder / "manifest.json", _manifest(settings, shards, len(shards) == config.n_shards))
    if on_shard is not None:
        on_shard(entry["index"])


def _progress(config: HarvestConfig, total: int, done: int) -> Any:
    if not config.progress:
        return None
    from lmscope.experiments.progress import bar

    return bar(total, "harvest", initial=done, unit="tok", unit_scale=True)


def _read_verified(folder: Path, info: dict[str, Any], *, check_hash: bool = True) -> bytes:
    """A shard file's bytes after checking it exists, has the recorded size and (unless told not to) sha256."""
    import hashlib

    path = folder / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"activation shard missing: {path}")
    data = path.read_bytes()
    if len(data) != info["bytes"]:
        raise ValueError(f"activation shard {path} is truncated or corrupt: {len(data)} bytes, manifest says {info['bytes']}")
    if not check_hash:
        return data
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise ValueError(f"checksum mismatch for activation shard {path}: sha256 {digest[:16]}..., "
                         f"manifest says {info['sha256'][:16]}...")  # fmt: skip
    return data


@dataclass
class ActivationStore:
    """Read a harvested store: checksummed shards, shuffled batches, every token once per epoch."""

    path: Path
    verify: bool = True
    """Check every shard's size and sha256 when opening. Either way each file's sha256 is checked the first time
    this store reads it; later reads of the same file check its size only (hashing every epoch is wasted I/O)."""
    manifest: dict[str, Any] = field(init=False)
    _hashed: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.manifest = read_manifest(self.path)
        for entry in self.shards:
            for info in entry["files"].values():
                if self.verify:
                    _read_verified(self.path, info)
                    self._hashed.add(info["file"])
                elif not (self.path / info["file"]).is_file():
                    raise FileNotFoundError(f"activation shard missing: {self.path / info['file']}")

    def __repr__(self) -> str:
        m = self.manifest
        return f"ActivationStore({str(self.path)!r}, {m['model_id']}, sites={m['sites']}, tokens={len(self)}, {m['dtype']})"

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def complete(self) -> bool:
        """False for an interrupted harvest (readable, but holds fewer tokens than asked for)."""
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        """Stored tokens (per site)."""
        return sum(s["n_tokens"] for s in self.shards)

    def _site_key(self, site: str | Site) -> str:
        name = str(as_site(site))
        if name not in self.manifest["sites"]:
            raise KeyError(f"{name} is not in this store; it holds {self.manifest['sites']}")
        return name

    def read_shard(self, site: str | Site, index: int) -> Tensor:
        """One shard's (n_tokens, d) activations of ``site``, checksum verified."""
        return self._load(self._site_key(site), index)["acts"]

    def _load(self, key: str, index: int) -> dict[str, Tensor]:
        from safetensors.torch import load

        info = self.shards[index]["files"][key]
        data = _read_verified(self.path, info, check_hash=info["file"] not in self._hashed)
        self._hashed.add(info["file"])
        return load(data)

    def tokens(self) -> dict[str, Tensor]:
        """Per stored token: ``token_ids``, ``position`` in its window and ``chunk`` (window index), in store order."""
        parts = [self._load(_TOKENS_DIR, i) for i in range(len(self.shards))]
        return {k: torch.cat([p[k] for p in parts]) for k in ("token_ids", "position", "chunk")}

    def load_all(self, site: str | Site, *, max_bytes: int = 2 << 30) -> Tensor:
        """Every token's activation of ``site`` as one (n_tokens, d) tensor, in store order (small stores)."""
        key = self._site_key(site)
        size = len(self) * self.manifest["d"][key] * _DTYPES[self.manifest["dtype"]].itemsize
        if size > max_bytes:
            raise MemoryError(f"load_all({key}) needs {size / 2**20:.0f} MiB > max_bytes={max_bytes / 2**20:.0f} MiB; "
                              "stream with iter_batches() instead")  # fmt: skip
        return torch.cat([self._load(key, i)["acts"] for i in range(len(self.shards))])

    def iter_batches(
        self,
        site: str | Site,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        shards_in_memory: int = 4,
        drop_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Iterator[Tensor]:
        """Yield (batch_size, d) batches; each stored token appears exactly once per epoch.

        Shuffling permutes the shard order, then mixes ``shards_in_memory`` shards at a time with a
        row permutation (memory: that many shards of one site). The order depends only on
        (seed, epoch). Rows left over after a group carry into the next; the last batch is smaller
        unless ``drop_last``.
        """
        key = self._site_key(site)
        if batch_size < 1 or shards_in_memory < 1:
            raise ValueError(f"batch_size and shards_in_memory must be >= 1, got {batch_size}, {shards_in_memory}")
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        n = len(self.shards)
        order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
        carry: Tensor | None = None
        for g in range(0, n, shards_in_memory):
            parts = [self._load(key, i)["acts"] for i in order[g : g + shards_in_memory]]
            rows = torch.cat(parts)
            if shuffle:
                rows = rows[torch.randperm(rows.shape[0], generator=gen)]
            if carry is not None:
                rows = torch.cat([carry, rows])
            full = rows.shape[0] // batch_size * batch_size
            for lo in range(0, full, batch_size):
                batch = rows[lo : lo + batch_size]
                yield batch if dtype is None else batch.to(dtype)
            carry = rows[full:] if full < rows.shape[0] else None
        if carry is not None and not drop_last:
            yield carry if dtype is None else carry.to(dtype)


def config_of(store: ActivationStore) -> dict[str, Any]:
    """The harvest settings recorded in a store's manifest (without the shard list)."""
    return {k: v for k, v in store.manifest.items() if k not in ("shards", "manifest_sha256")}


__all__ = ["ActivationStore", "HarvestConfig", "config_of", "harvest", "memory_bound"]
