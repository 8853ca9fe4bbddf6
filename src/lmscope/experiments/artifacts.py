"""One save/load path for every artifact (vectors, SAEs, lenses, LREs, circuits, shards).

An artifact is a safetensors file: named tensors plus a JSON header under the metadata key
``"lmscope"`` holding its kind, its own settings and its provenance (model id, weight hash,
site, dataset hash, lmscope version). No pickle: ``.pt``/``.pkl`` inputs are refused unless
``allow_pickle=True``, and then read with ``weights_only=True``. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmscope.core.edits import check_finite
from lmscope.core.version import LMSCOPE_VERSION
from lmscope.data.corpus import file_sha256 as sha256_file  # noqa: F401  (re-exported: one file hash)

if TYPE_CHECKING:
    from lmscope.core.model import Model

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")


@dataclass
class Provenance:
    """Where an artifact came from."""

    model_id: str | None = None
    weight_hash: str | None = None
    site: str | None = None
    layer: int | None = None
    dataset_hash: str | None = None
    lmscope_version: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Model | None = None, *, site: object = None, layer: int | None = None,
           dataset: object = None, **extra: Any) -> Provenance:  # fmt: skip
        """Provenance for an artifact computed from ``model`` at ``site`` on ``dataset``."""
        return cls(
            model_id=None if model is None else model.model_id,
            weight_hash=None if model is None else model.weight_hash,
            site=None if site is None else str(site),
            layer=layer,
            dataset_hash=None if dataset is None else dataset_hash(dataset),
            lmscope_version=LMSCOPE_VERSION,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            extra=extra,
        )


@dataclass
class Artifact:
    """A loaded artifact: its kind, tensors, settings and provenance."""

    kind: str
    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    provenance: Provenance


def dataset_hash(items: object) -> str:
    """sha256 of a JSON rendering of ``items`` (prompts, pairs, records)."""
    if isinstance(items, (str, bytes)):
        data = items.encode() if isinstance(items, str) else items
    else:
        data = json.dumps(list(items) if isinstance(items, Iterable) and not isinstance(items, Mapping) else items,
                          sort_keys=True, default=str).encode()  # fmt: skip
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name private to this process and thread, then rename (two writers never share it)."""
    import threading

    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, json.dumps(obj, indent=2, default=str).encode())


def save_artifact(
    path: str | os.PathLike[str],
    kind: str,
    tensors: Mapping[str, Tensor],
    *,
    meta: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
) -> Path:
    """Write ``tensors`` and a JSON header atomically to ``path`` (a ``.safetensors`` file)."""
    from safetensors.torch import save

    p = Path(path)
    if p.suffix != ".safetensors":
        raise ValueError(f"artifacts are .safetensors files, got {p}")
    for name, t in tensors.items():
        check_finite(t, f"tensor {name!r} of {kind}")
    header = {"kind": kind, "meta": dict(meta or {}), "provenance": asdict(provenance or Provenance())}
    flat = _unshared(tensors)
    text = json.dumps(header, default=str)
    data = save(flat, metadata={"lmscope": text, "lmscope_sha256": content_digest(flat, text)})
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, data)
    return p


def content_digest(tensors: Mapping[str, Tensor], header: str = "") -> str:
    """sha256 over a header string and every tensor's name, dtype, shape and bytes (in name order).

    Stored in each artifact and checked on load: a flipped bit anywhere in the tensors or the
    header is an error naming the file, never a silently different number.
    """
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unshared(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors; entries sharing memory (tied weights, views) are copied, as safetensors requires."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def load_artifact(path: str | os.PathLike[str], kind: str | None = None, *, allow_pickle: bool = False) -> Artifact:
    """Read an artifact written by :func:`save_artifact`; checks its kind when given."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if p.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"{p} is a pickle-based file; refusing to load it (pass allow_pickle=True to read "
                             "plain tensors with torch.load(weights_only=True))")  # fmt: skip
        obj = torch.load(p, map_location="cpu", weights_only=True)
        tensors = obj if isinstance(obj, dict) else {"tensor": obj}
        return Artifact(kind or "pickle", dict(tensors), {}, Provenance())
    if not p.is_file():
        raise FileNotFoundError(f"artifact file not found: {p}")
    raw = p.read_bytes()
    try:
        tensors = load(raw)
        header_meta = _safetensors_metadata(raw)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    if "lmscope" not in header_meta:
        raise ValueError(f"{p} has no lmscope header; it was not written by lmscope.save_artifact")
    if "lmscope_sha256" not in header_meta:
        raise ValueError(f"{p} carries no checksum (written by lmscope < 0.2 or edited); it cannot be verified. "
                         "Re-create it with this version")  # fmt: skip
    if content_digest(tensors, header_meta["lmscope"]) != header_meta["lmscope_sha256"]:
        raise ValueError(f"checksum mismatch in {p}: its tensors or header changed after it was written (corrupt file)")
    try:
        header = json.loads(header_meta["lmscope"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} has an unreadable lmscope header: {exc}") from exc
    if kind is not None and header["kind"] != kind:
        raise ValueError(f"{p} holds a {header['kind']!r} artifact, expected {kind!r}")
    return Artifact(header["kind"], tensors, header["meta"], Provenance(**header["provenance"]))


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or 8 + n > len(raw):
        raise ValueError("bad header length")
    return json.loads(raw[8 : 8 + n]).get("__metadata__", {}) or {}


def peek_kind(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """An lmscope artifact's kind and meta from its safetensors header alone (no tensor is read);
    ``(None, {})`` for any other or unreadable file."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                return None, {}
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        header = json.loads(meta["lmscope"])
        return str(header["kind"]), dict(header.get("meta") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """An optimizer's state as flat tensors ``opt.<param>.<name>`` (safetensors stores no 0-d tensor, so
    scalars become shape (1,)) and its param groups (JSON), for a checkpoint without pickle."""
    state = opt.state_dict()
    tensors = {}
    for pid, st in state["state"].items():
        for name, value in st.items():
            t = torch.as_tensor(value)
            tensors[f"opt.{pid}.{name}"] = t.reshape(1) if t.dim() == 0 else t
    return tensors, state["param_groups"]


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                           param_groups: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    """Restore what :func:`optimizer_tensors` wrote (Adam's ``step`` back to a scalar); other keys are ignored."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.reshape(()) if name == "step" else value
    opt.load_state_dict({"state": state, "param_groups": param_groups or opt.state_dict()["param_groups"]})
