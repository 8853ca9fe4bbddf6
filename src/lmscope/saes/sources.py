"""Where SAE training batches come from: activations in memory / on disk, or streamed from the model.

Every source answers ``batch(step, batch_size)`` deterministically (the same step always gives the
same rows), which is what makes resumed training bit-identical to an uninterrupted run:

- :class:`TensorSource`: an (tokens, d_in) tensor, e.g. a harvested activation store; each epoch
  is a seeded permutation.
- :class:`StoreSource`: streams an on-disk activation store (``lmscope.experiments.store``) that need not
  fit in RAM, through its seeded shuffled reader.
- :class:`ModelSource`: runs the model on token chunks *while training*, stopping the forward
  pass right after the SAE's site (``capture(stop_early=True)``), and shuffles inside a buffer of
  ``buffer_chunks`` chunks (the buffer is the window of tokens a batch is drawn from). On resume
  only the current buffer is recomputed.

    >>> import torch
    >>> from lmscope.saes.sources import TensorSource
    >>> src = TensorSource(torch.randn(100, 4), seed=0)
    >>> torch.equal(src.batch(3, 10), src.batch(3, 10))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from lmscope.core.edits import check_finite
from lmscope.core.hooks import capture
from lmscope.core.sites import SiteLike, as_site
from lmscope.experiments import fingerprint

if TYPE_CHECKING:
    from lmscope.core.model import Model
    from lmscope.experiments.store import ActivationStore


class ActivationSource(Protocol):
    """Anything that returns the batch for a training step (deterministically)."""

    d_in: int

    def batch(self, step: int, batch_size: int) -> Tensor:
        """(batch_size, d_in) float activations for ``step``."""
        ...

    def fingerprint(self) -> str:
        """A hash of everything that determines the batches (part of a training checkpoint's identity)."""
        ...


@dataclass
class TensorSource:
    """Batches drawn from an in-memory (tokens, d_in) tensor, one seeded permutation per epoch."""

    acts: Tensor
    """(tokens, d_in) activations (any float dtype; batches come back as float32)."""
    seed: int = 0
    """Seed of the per-epoch permutations."""

    def __post_init__(self) -> None:
        if self.acts.dim() != 2 or self.acts.shape[0] == 0:
            raise ValueError(f"activations must be a non-empty (tokens, d_in) tensor, got {tuple(self.acts.shape)}")
        check_finite(self.acts, "training activations")
        self._perm: tuple[int, Tensor] | None = None

    @property
    def d_in(self) -> int:  # type: ignore[override]
        return int(self.acts.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.acts.shape[0])

    def fingerprint(self) -> str:
        return fingerprint({"source": "tensor", "acts": self.acts, "seed": self.seed})

    def batch(self, step: int, batch_size: int) -> Tensor:
        per_epoch = self.n_tokens // batch_size
        if per_epoch == 0:
            raise ValueError(f"batch size {batch_size} is larger than the {self.n_tokens} stored tokens")
        epoch, j = divmod(step, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n_tokens, generator=gen))
        rows = self._perm[1][j * batch_size : (j + 1) * batch_size]
        return self.acts[rows].float()


class StoreSource:
    """Batches streamed from an on-disk :class:`lmscope.experiments.store.ActivationStore` (bigger than RAM).

    Step t reads batch t mod (tokens // batch) of epoch t // (tokens // batch) from the store's
    shuffled reader (its order depends only on seed and epoch), so a resumed run sees the same rows.
    """

    def __init__(self, store: ActivationStore, site: SiteLike, *, seed: int = 0, shards_in_memory: int = 4) -> None:
        self.store, self.site, self.seed, self.shards_in_memory = store, str(as_site(site)), seed, shards_in_memory
        self.d_in = int(store.manifest["d"][self.site])
        self._it: tuple[int, int, Iterator[Tensor]] | None = None  # (epoch, next j, iterator)

    def fingerprint(self) -> str:
        return fingerprint({"source": "store", "manifest": self.store.manifest["manifest_sha256"], "site": self.site,
                            "seed": self.seed, "shards_in_memory": self.shards_in_memory})  # fmt: skip

    def batch(self, step: int, batch_size: int) -> Tensor:
        per_epoch = len(self.store) // batch_size
        if per_epoch == 0:
            raise ValueError(f"batch size {batch_size} is larger than the {len(self.store)} stored tokens")
        epoch, j = divmod(step, per_epoch)
        if self._it is None or self._it[0] != epoch or self._it[1] > j:
            it = self.store.iter_batches(self.site, batch_size, seed=self.seed, epoch=epoch,
                                         shards_in_memory=self.shards_in_memory, drop_last=True)  # fmt: skip
            self._it = (epoch, 0, it)
        e, nxt, it = self._it
        while nxt < j:
            next(it)
            nxt += 1
        out = next(it).float()
        self._it = (e, j + 1, it)
        return out


class ModelSource:
    """Activations streamed from ``model`` at ``site`` over token ``chunks``, shuffled within a buffer.

    Args:
        model: the lmscope Model.
        site: where the SAE reads (its forward pass stops right after it).
        chunks: (n_chunks, seq) token ids (e.g. ``token_chunks(tokenizer, 128, n)``).
        buffer_chunks: chunks per shuffle buffer (buffer tokens = buffer_chunks * (seq - skip_first)).
        batch_chunks: chunks per forward pass.
        skip_first: leading positions of each chunk left out (the attention-sink token).
        seed: shuffle seed.
    """

    def __init__(self, model: Model, site: SiteLike, chunks: Tensor, *, buffer_chunks: int = 64, batch_chunks: int = 8,
                 skip_first: int = 1, seed: int = 0) -> None:  # fmt: skip
        if chunks.dim() != 2 or chunks.shape[1] <= skip_first:
            raise ValueError(f"chunks must be (n, seq) with seq > skip_first, got {tuple(chunks.shape)}")
        self.model, self.site, self.chunks = model, as_site(site), chunks
        self.buffer_chunks = min(buffer_chunks, chunks.shape[0])
        self.batch_chunks, self.skip_first, self.seed = batch_chunks, skip_first, seed
        self.d_in = model.site_width(self.site)
        self._buf: tuple[int, Tensor] | None = None
        self.forward_passes = 0

    def fingerprint(self) -> str:
        return fingerprint({"source": "model", "weights": self.model.weight_hash, "site": str(self.site),
                            "chunks": self.chunks, "buffer_chunks": self.buffer_chunks, "batch_chunks": self.batch_chunks,
                            "skip_first": self.skip_first, "seed": self.seed})  # fmt: skip

    @property
    def buffer_tokens(self) -> int:
        return self.buffer_chunks * (self.chunks.shape[1] - self.skip_first)

    def _fill(self, window: int) -> Tensor:
        n_windows = self.chunks.shape[0] // self.buffer_chunks
        w = window % n_windows
        part = self.chunks[w * self.buffer_chunks : (w + 1) * self.buffer_chunks]
        rows = []
        for i in range(0, part.shape[0], self.batch_chunks):
            with capture(self.model, [self.site], stop_early=True, device="cpu") as acts:
                self.model(part[i : i + self.batch_chunks])
            a = acts[self.site][:, self.skip_first :]
            rows.append(a.reshape(-1, a.shape[-1]).float())
            self.forward_passes += 1
        buf = torch.cat(rows)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + window)
        return buf[torch.randperm(buf.shape[0], generator=gen)]

    def batch(self, step: int, batch_size: int) -> Tensor:
        per_window = self.buffer_tokens // batch_size
        if per_window == 0:
            raise ValueError(f"batch size {batch_size} exceeds the shuffle buffer ({self.buffer_tokens} tokens)")
        window, j = divmod(step, per_window)
        if self._buf is None or self._buf[0] != window:
            self._buf = (window, self._fill(window))
        return self._buf[1][j * batch_size : (j + 1) * batch_size]
