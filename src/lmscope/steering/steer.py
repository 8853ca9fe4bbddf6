"""Steering: add a vector to layer outputs while the model runs, or remove its direction.

Activation addition (Turner et al. 2023; seed 001's "add the refusal vector and the model refuses
to list the benefits of yoga"): at each chosen layer, ``resid_post += scale * direction`` at the
chosen positions ("all", "prompt", "generated", or explicit absolute positions). A negative
scale subtracts it. Directional ablation (Arditi et al. 2024): project the unit direction out of
every layer's output at every position, so no layer can write it.

Both are :func:`lmscope.intervene` contexts, so they work inside ``model.generate`` with the KV
cache (positions are absolute) and compose with captures and other edits.

    >>> import lmscope as ls
    >>> from lmscope.steering import builtin, extract, steer
    >>> model = ls.load()
    >>> vec = extract(model, builtin("sentiment")).vector
    >>> with steer(model, vec, layers=[10], scale=4.0, positions="generated"):
    ...     print(model.generate("Tell me about your day.", chat=True, max_new_tokens=24))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor

from lmscope.core import edits
from lmscope.core.edits import Edit, Positions
from lmscope.core.hooks import intervene
from lmscope.core.model import Model
from lmscope.core.sites import Site, SiteLike
from lmscope.steering.vector import SteeringVector


def steering_edits(
    model: Model, vector: SteeringVector, *, layers: Sequence[int] | int | None = None, scale: float = 1.0,
    positions: Positions = "all",
) -> dict[SiteLike, Edit | Sequence[Edit]]:  # fmt: skip
    """The ``{Site("resid_post", l): edits.add(...)}`` map that :func:`steer` applies."""
    if vector.d_model != model.shape.d_model:
        raise ValueError(f"vector width {vector.d_model} != model d_model {model.shape.d_model}")
    use = vector.layers if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    out: dict[SiteLike, Edit | Sequence[Edit]] = {}
    for layer in use:
        if not 0 <= layer < model.shape.n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {model.shape.n_layers} layers")
        out[Site("resid_post", layer)] = edits.add(vector[layer], scale=scale, positions=positions)
    return out


@contextmanager
def steer(
    model: Model, vector: SteeringVector, *, layers: Sequence[int] | int | None = None, scale: float = 1.0,
    positions: Positions = "all",
) -> Iterator[None]:  # fmt: skip
    """Add ``scale * vector[l]`` to the output of each layer ``l`` in ``layers`` (default: all the vector has)."""
    with intervene(model, steering_edits(model, vector, layers=layers, scale=scale, positions=positions)):
        yield


def ablation_edits(model: Model, direction: Tensor, *, layers: Sequence[int] | None = None,
                   positions: Positions = "all") -> dict[SiteLike, Edit | Sequence[Edit]]:  # fmt: skip
    """``project_out(direction)`` at the output of every layer (or ``layers``)."""
    if direction.shape != (model.shape.d_model,):
        raise ValueError(f"direction has shape {tuple(direction.shape)}, expected ({model.shape.d_model},)")
    use = range(model.shape.n_layers) if layers is None else layers
    out: dict[SiteLike, Edit | Sequence[Edit]] = {
        Site("resid_post", layer): edits.project_out(direction, positions=positions) for layer in use
    }
    return out


@contextmanager
def ablate(model: Model, direction: Tensor, *, layers: Sequence[int] | None = None,
           positions: Positions = "all") -> Iterator[None]:  # fmt: skip
    """Directional ablation: remove ``direction`` from every layer's output while the block runs."""
    with intervene(model, ablation_edits(model, direction, layers=layers, positions=positions)):
        yield
