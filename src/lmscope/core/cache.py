"""ActivationCache: the activations captured in one ``with capture(...)`` block."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from lmscope.core.sites import Site, SiteLike, as_site


class ActivationCache(Mapping[Site, Tensor]):
    """A read-only mapping Site -> tensor, indexable by Site or by hook name.

    ``grads`` holds gradients of captured sites when the capture asked for them.
    """

    def __init__(self) -> None:
        self._acts: dict[Site, Tensor] = {}
        self.grads: dict[Site, Tensor] = {}

    def __getitem__(self, site: SiteLike) -> Tensor:
        key = as_site(site)
        try:
            return self._acts[key]
        except KeyError:
            have = ", ".join(str(s) for s in self._acts) or "nothing"
            raise KeyError(f"{key} was not captured (captured: {have}); did the forward pass run?") from None

    def __iter__(self) -> Iterator[Site]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{s}: {tuple(t.shape)}" for s, t in self._acts.items())
        return f"ActivationCache({shapes})"

    def stack(self, sites: list[SiteLike]) -> Tensor:
        """Stack several sites' tensors on a new leading axis (e.g. all layers' resid_post)."""
        return torch.stack([self[s] for s in sites])

    def _store(self, site: Site, value: Tensor, *, append: bool) -> None:
        if append and site in self._acts and site.kind != "attn_pattern":
            # A KV-cache continuation: extend along the sequence axis.
            self._acts[site] = torch.cat([self._acts[site], value], dim=1)
        else:
            self._acts[site] = value
