"""SteeringVector: one direction per layer, with provenance, arithmetic and file formats.

A steering vector lives at the output of decoder layers (``resid_post``). Vectors add and
subtract layer by layer (a layer missing on one side counts as zero), scale by a number and
normalise to unit length per layer. They save as lmscope safetensors artifacts and export to the
control-vector GGUF files llama.cpp reads (``--control-vector``), as repeng and llama.cpp's
``cvector-generator`` write them:

- ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model type, e.g.
  "llama"), ``controlvector.layer_count`` (int32, number of directions);
- one F32 1-D tensor ``direction.N`` of width n_embd per layer; llama.cpp adds ``direction.N`` to
  the output of its 0-based block N, which is the output of HF decoder layer N. llama.cpp refuses
  ``direction.0``, so a vector with a layer-0 direction cannot be exported (error).

    >>> import torch
    >>> from lmscope.steering.vector import SteeringVector
    >>> v = SteeringVector({3: torch.ones(4)}, d_model=4)
    >>> (2 * v - v).directions[3].tolist()
    [1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmscope.core.edits import check_finite
from lmscope.experiments.artifacts import Provenance, load_artifact, save_artifact

KIND = "steering_vector"


@dataclass
class SteeringVector:
    """Directions (each ``(d_model,)``) keyed by decoder layer, added at that layer's ``resid_post``."""

    directions: dict[int, Tensor]
    d_model: int
    method: str = "custom"
    """How it was made: mean_diff, pca, probe, concept, gguf, custom."""
    provenance: Provenance = field(default_factory=Provenance)
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form settings (contrast set, format, separability per layer)."""

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a steering vector needs at least one layer")
        clean: dict[int, Tensor] = {}
        for layer, v in self.directions.items():
            if not isinstance(layer, int) or layer < 0:
                raise ValueError(f"layers are non-negative ints, got {layer!r}")
            t = torch.as_tensor(v).detach().float().cpu()
            if t.shape != (self.d_model,):
                raise ValueError(f"direction for layer {layer} has shape {tuple(t.shape)}, expected ({self.d_model},)")
            check_finite(t, f"direction for layer {layer}")
            clean[layer] = t
        self.directions = dict(sorted(clean.items()))

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    def __getitem__(self, layer: int) -> Tensor:
        if layer not in self.directions:
            raise KeyError(f"no direction for layer {layer}; this vector has layers {self.layers}")
        return self.directions[layer]

    def select(self, layers: list[int] | int) -> SteeringVector:
        """Only some layers."""
        wanted = [layers] if isinstance(layers, int) else list(layers)
        return self._with({layer: self[layer] for layer in wanted})

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.directions.items()}

    def _with(self, directions: dict[int, Tensor], method: str | None = None) -> SteeringVector:
        return SteeringVector(directions, self.d_model, method or self.method, self.provenance, dict(self.meta))

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented  # type: ignore[return-value]
        if other.d_model != self.d_model:
            raise ValueError(f"cannot combine vectors of width {self.d_model} and {other.d_model}")
        out = {layer: v.clone() for layer, v in self.directions.items()}
        for layer, v in other.directions.items():
            out[layer] = out[layer] + sign * v if layer in out else sign * v
        return self._with(out, method="arithmetic")

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, k: float) -> SteeringVector:
        if not isinstance(k, (int, float)):
            return NotImplemented  # type: ignore[return-value]
        return self._with({layer: v * float(k) for layer, v in self.directions.items()})

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __truediv__(self, k: float) -> SteeringVector:
        return self * (1.0 / k)

    def normalize(self) -> SteeringVector:
        """Unit length at every layer (a zero direction is an error)."""
        for layer, v in self.directions.items():
            if float(v.norm()) == 0.0:
                raise ValueError(f"cannot normalise: the direction for layer {layer} is zero")
        return self._with({layer: v / v.norm() for layer, v in self.directions.items()})

    # ---- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.safetensors`` artifact (tensors ``direction.N``, provenance in the header)."""
        tensors = {f"direction.{layer}": v for layer, v in self.directions.items()}
        meta = {"d_model": self.d_model, "method": self.method, "layers": self.layers, **self.meta}
        return save_artifact(path, KIND, tensors, meta=meta, provenance=self.provenance)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a vector written by :meth:`save`."""
        art = load_artifact(path, KIND)
        dirs = {int(name.split(".", 1)[1]): t for name, t in art.tensors.items()}
        meta = dict(art.meta)
        d_model = int(meta.pop("d_model"))
        method = str(meta.pop("method", "custom"))
        meta.pop("layers", None)
        return cls(dirs, d_model, method, art.provenance, meta)

    def to_gguf(self, path: str | os.PathLike[str], *, model_hint: str, scale: float = 1.0) -> Path:
        """Export as a llama.cpp control vector (``direction.N`` = HF layer N's output; layer 0 is refused)."""
        import gguf

        if 0 in self.directions:
            raise ValueError("llama.cpp rejects direction.0 (it steers block outputs from layer 1 on); "
                             "drop layer 0 with .select(...) before exporting")  # fmt: skip
        p = Path(path)
        if p.suffix != ".gguf":
            raise ValueError(f"control vectors are .gguf files, got {p}")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".partial")
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_int32("controlvector.layer_count", len(self.directions))
        for layer, v in self.directions.items():
            writer.add_tensor(f"direction.{layer}", (v * scale).numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, p)
        return p

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], *, d_model: int | None = None) -> SteeringVector:
        """Import a llama.cpp control vector, with llama.cpp's checks (F32, 1-D, one width, no layer 0)."""
        import gguf

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"control vector file not found: {p}")
        try:
            reader = gguf.GGUFReader(str(p))
        except Exception as exc:  # the reader raises several types on bad files
            raise ValueError(f"{p} is not a readable GGUF file: {exc}") from exc
        arch = _field_str(reader, "general.architecture")
        if arch != "controlvector":
            raise ValueError(f"{p} has general.architecture={arch!r}, not 'controlvector'")
        dirs: dict[int, Tensor] = {}
        for t in reader.tensors:
            if not t.name.startswith("direction."):
                continue
            try:
                layer = int(t.name.split(".", 1)[1])
            except ValueError as exc:
                raise ValueError(f"{p}: bad tensor name {t.name!r}") from exc
            if layer <= 0:
                raise ValueError(f"{p}: invalid direction layer index {layer} (llama.cpp needs >= 1)")
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                raise ValueError(f"{p}: {t.name} has type {t.tensor_type.name}, llama.cpp needs F32")
            if len(t.shape) != 1:
                raise ValueError(f"{p}: {t.name} has {len(t.shape)} dimensions, llama.cpp needs 1")
            dirs[layer] = torch.tensor(np.array(t.data, dtype=np.float32)).reshape(-1)
        if not dirs:
            raise ValueError(f"{p} holds no direction.N tensors")
        widths = {v.shape[0] for v in dirs.values()}
        if len(widths) != 1:
            raise ValueError(f"{p}: directions have different widths {sorted(widths)}")
        width = widths.pop()
        if d_model is not None and width != d_model:
            raise ValueError(f"{p}: directions have width {width} but the model's d_model is {d_model}")
        hint = _field_str(reader, "controlvector.model_hint")
        return cls(dirs, width, "gguf", Provenance(extra={"gguf": str(p), "model_hint": hint}), {"model_hint": hint})


def _field_str(reader: Any, key: str) -> str | None:
    f = reader.get_field(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")

