"""Feature steering: turn one SAE latent up while the model generates, and count concept mentions.

Two recipes (Templeton et al. 2024, "Golden Gate Claude"):

- ``add``: add ``strength`` times the latent's decoder direction to the site at every position;
- ``clamp``: encode the site, set the latent to ``strength`` and put back the change
  (the rest of the activation, including the SAE's error, is untouched).

The effect is measured as a **mention rate**: the fraction of generations that contain any of
the concept's words (case-insensitive, whole words), for the steered run against the same
prompts unsteered.

    >>> from lmscope.saes.steering import mention_rate
    >>> mention_rate(["I love the bridge.", "hello"], ["bridge"])
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmscope.core import edits
from lmscope.core.edits import Edit
from lmscope.core.hooks import intervene
from lmscope.core.sites import SiteLike
from lmscope.data.text import mention_rate
from lmscope.saes.metrics import check_site, clamp_latent
from lmscope.saes.sae import SAE

if TYPE_CHECKING:
    from lmscope.core.model import Model


def steer_latent(model: Model, sae: SAE, latent: int, prompts: Sequence[str], *, strength: float, mode: str = "add",
                 site: SiteLike | None = None, max_new_tokens: int = 32, chat: bool = True,
                 do_sample: bool = False, seed: int | None = 0) -> list[str]:  # fmt: skip
    """Generations with ``latent`` added (``mode="add"``) or clamped (``mode="clamp"``) at the SAE's site."""
    target = check_site(model, sae, site)
    if not 0 <= latent < sae.cfg.d_sae:
        raise IndexError(f"latent {latent} out of range for d_sae={sae.cfg.d_sae}")
    edit: Edit
    if mode == "add":
        direction = (sae.W_dec[latent] / sae.cfg.scaling_factor).detach()
        edit = edits.add(direction, scale=strength)
    elif mode == "clamp":
        edit = clamp_latent(sae, latent, strength)
    else:
        raise ValueError(f"mode must be 'add' or 'clamp', got {mode!r}")
    with intervene(model, {target: edit}):
        out = model.generate(list(prompts), max_new_tokens=max_new_tokens, chat=chat, do_sample=do_sample, seed=seed)
    return list(out)


@dataclass
class SteeringResult:
    """Mention rates of a concept with and without steering one latent."""

    latent: int
    words: list[str]
    mode: str
    strengths: list[float]
    """Strengths tried (0 is the unsteered baseline)."""
    rates: list[float]
    """Mention rate at each strength."""
    samples: dict[str, list[str]] = field(default_factory=dict)
    """Generations per strength (keys are str(strength))."""


def feature_steering(model: Model, sae: SAE, latent: int, prompts: Sequence[str], words: Sequence[str], *,
                     strengths: Sequence[float] = (0.0, 4.0, 8.0), mode: str = "add", max_new_tokens: int = 32,
                     chat: bool = True, do_sample: bool = False) -> SteeringResult:  # fmt: skip
    """Mention rate of ``words`` in generations from ``prompts`` across steering ``strengths``."""
    rates, samples = [], {}
    for s in strengths:
        if s == 0 and mode == "add":
            texts = list(model.generate(list(prompts), max_new_tokens=max_new_tokens, chat=chat, do_sample=do_sample, seed=0))
        else:
            texts = steer_latent(model, sae, latent, prompts, strength=s, mode=mode, max_new_tokens=max_new_tokens,
                                 chat=chat, do_sample=do_sample)  # fmt: skip
        rates.append(mention_rate(texts, words))
        samples[str(s)] = texts
    return SteeringResult(latent, list(words), mode, list(strengths), rates, samples)
