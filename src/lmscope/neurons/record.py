"""Recording neurons over a corpus and reading their top-activating contexts.

:func:`record` harvests ``mlp_post`` (the MLP's hidden activation, one value per neuron) of
some layers over the installed corpus into an on-disk activation store
(:mod:`lmscope.experiments.store`: checksummed shards, resumable). :func:`top_examples` streams the
store shard by shard and keeps, per neuron, the ``k`` tokens where it is largest, returned with
the surrounding text and the token itself highlighted — the first thing to look at when asking
"what does this neuron do?" (it shows correlation only; see ``ablate.py`` for causation).

    >>> import lmscope as ls
    >>> from lmscope.neurons.record import record, top_examples
    >>> m = ls.load_tiny("llama")
    >>> store = record(m, [0], "/tmp/lmscope-doc-neurons", n_tokens=512, seq_len=32, overwrite=True, progress=False)
    >>> ex = top_examples(store, "blocks.0.mlp.hook_post", [5], tokenizer=m.tokenizer, k=3)
    >>> len(ex[5])
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core.sites import Site, SiteLike, as_site
from lmscope.experiments.store import ActivationStore, HarvestConfig, harvest

if TYPE_CHECKING:
    from lmscope.core.model import Model


def record(model: Model, layers: list[int], out: str | Path, *, n_tokens: int = 65536, seq_len: int = 128,
           kind: str = "mlp_post", dtype: str = "float16", split: str = "train", overwrite: bool = False,
           progress: bool = True, corpus: tuple[str, ...] = ()) -> ActivationStore:  # fmt: skip
    """Harvest ``kind`` (default ``mlp_post``) at ``layers`` over the corpus into the store at ``out`` (resumable)."""
    if not layers:
        raise ValueError("record needs at least one layer")
    n = model.shape.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise IndexError(f"layers {bad} out of range: the model has {n} layers")
    cfg = HarvestConfig(sites=[str(Site(kind, layer)) for layer in layers], n_tokens=n_tokens, seq_len=seq_len,
                        dtype=dtype, split=split, progress=progress, corpus=corpus)  # type: ignore[arg-type]  # fmt: skip
    return harvest(model, cfg, out, overwrite=overwrite)


@dataclass
class Example:
    """One top-activating token with its context."""

    value: float
    before: str
    token: str
    after: str
    chunk: int
    """Corpus window index."""
    position: int
    """Position of the token in its window."""

    def highlighted(self, mark: tuple[str, str] = ("[[", "]]")) -> str:
        """The context with the token wrapped in ``mark``."""
        return f"{self.before}{mark[0]}{self.token}{mark[1]}{self.after}"


def top_examples(store: ActivationStore, site: SiteLike, neurons: list[int], *, tokenizer, k: int = 10,
                 before: int = 16, after: int = 4) -> dict[int, list[Example]]:  # fmt: skip
    """Per neuron, the ``k`` tokens of the store with the largest activation, with context."""
    key = str(as_site(site))
    idx = torch.tensor(neurons)
    top_v = torch.full((0, len(neurons)), -torch.inf)
    top_i = torch.zeros((0, len(neurons)), dtype=torch.long)
    offset = 0
    for s in range(len(store.shards)):
        a = store.read_shard(key, s)[:, idx].float()
        v = torch.cat([top_v, a])
        i = torch.cat([top_i, torch.arange(offset, offset + a.shape[0])[:, None].expand_as(a)])
        kk = min(k, v.shape[0])
        top_v, j = v.topk(kk, dim=0)
        top_i = i.gather(0, j)
        offset += a.shape[0]
    toks = store.tokens()
    out: dict[int, list[Example]] = {}
    for col, neuron in enumerate(neurons):
        pairs = zip(top_v[:, col], top_i[:, col], strict=True)
        out[neuron] = [_example(toks, int(i), float(v), tokenizer, before, after) for v, i in pairs]
    return out


def _example(toks: dict[str, Tensor], i: int, value: float, tokenizer, before: int, after: int) -> Example:
    ids, chunk = toks["token_ids"], toks["chunk"]
    lo = i
    while lo > 0 and i - lo < before and chunk[lo - 1] == chunk[i]:
        lo -= 1
    hi = i
    while hi + 1 < len(ids) and hi - i < after and chunk[hi + 1] == chunk[i]:
        hi += 1

    def dec(a: int, b: int) -> str:
        return tokenizer.decode(ids[a:b].tolist()) if b > a else ""

    return Example(value, dec(lo, i), dec(i, i + 1), dec(i + 1, hi + 1), int(chunk[i]), int(toks["position"][i]))
