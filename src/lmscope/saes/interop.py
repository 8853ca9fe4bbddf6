"""Saving and loading SAEs in the SAELens layout: a folder with ``cfg.json`` + ``sae_weights.safetensors``.

Tensors: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in) and,
for ``jumprelu``, ``threshold`` (d_sae). ``cfg.json`` carries ``architecture`` (SAELens names:
standard, topk, jumprelu), ``d_in``, ``d_sae``, ``k`` for topk, ``apply_b_dec_to_input``,
``normalize_activations`` and a ``metadata`` block with ``hook_name`` (TransformerLens style) and
``model_name``; lmscope's own config and provenance go under ``metadata.lmscope``. Input scaling
is folded into the weights on save (as SAELens does), so files always say
``normalize_activations: "none"``. A BatchTopK SAE is saved as the JumpReLU it is at inference.

Loading refuses a file without its activation rule and unknown architectures (it never falls
back to ReLU: SAELens #553), and refuses weights that are missing, misshapen or non-finite.
Every cfg.json setting that changes the computation is implemented (``rescale_acts_by_decoder_norm``
is folded into the weights) or refused; files lmscope wrote carry a checksum that is verified.

    >>> import tempfile, torch
    >>> from lmscope.saes import SAE, SAEConfig
    >>> from lmscope.saes.interop import load_saelens, save_saelens
    >>> sae = SAE(SAEConfig("topk", 8, 16, k=2, hook_name="blocks.0.hook_resid_post"))
    >>> folder = save_saelens(sae, tempfile.mkdtemp())
    >>> torch.equal(load_saelens(folder).W_dec, sae.W_dec)
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.core.edits import check_finite
from lmscope.experiments.artifacts import Provenance, atomic_write_bytes, atomic_write_json, content_digest
from lmscope.saes.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu")
"""SAELens architectures lmscope reads (its inference rules for our four training rules)."""


def _folded(sae: SAE) -> dict[str, Tensor]:
    """Weights with the input scale s folded in: pre = (x - b_dec/s) @ (s W_enc) + b_enc; x' = z @ W_dec/s + b_dec/s."""
    s = sae.cfg.scaling_factor
    out = {
        "W_enc": sae.W_enc.detach() * s, "b_enc": sae.b_enc.detach().clone(),
        "W_dec": sae.W_dec.detach() / s, "b_dec": sae.b_dec.detach() / s,
    }  # fmt: skip
    if sae.cfg.architecture in ("jumprelu", "batchtopk"):
        out["threshold"] = sae.threshold.detach().clone()
    return {k: v.float().cpu().contiguous() for k, v in out.items()}


def save_saelens(sae: SAE, folder: str | Path, *, provenance: Provenance | None = None) -> Path:
    """Write ``sae`` to ``folder`` in the SAELens layout; returns the folder."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    arch = "jumprelu" if c.architecture == "batchtopk" else c.architecture
    tensors = _folded(sae)
    for name, t in tensors.items():
        check_finite(t, f"SAE weight {name}")
    ours = {**c.to_dict(), "scaling_factor": 1.0, "normalize_activations": "none", "trained_as": c.architecture,
            "trained_scaling_factor": c.scaling_factor}  # fmt: skip
    if arch == "jumprelu":
        ours["architecture"] = "jumprelu"
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "hook_name": c.hook_name, "model_name": c.model_name,
        "metadata": {"hook_name": c.hook_name, "model_name": c.model_name, "lmscope": ours,
                     "provenance": asdict(provenance) if provenance else None},
    }  # fmt: skip
    if arch == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False, activation_fn_str="topk", activation_fn_kwargs={"k": c.k})
    else:
        cfg["activation_fn_str"] = "relu"
    # The rule travels inside the weights file too, so the tensors alone are never read as ReLU; the checksum
    # covers the tensors and cfg.json, so a flipped bit in either is caught on load.
    digest = content_digest(tensors, json.dumps(cfg, sort_keys=True, default=str))
    data = save(tensors, metadata={"architecture": arch, "k": str(c.k), "hook_name": c.hook_name, "lmscope_sha256": digest})
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    atomic_write_json(folder / CFG_FILE, cfg)
    return folder


# cfg.json keys that do not change what the SAE computes, or that this loader handles below.
_INERT_KEYS = {"architecture", "d_in", "d_sae", "dtype", "device", "metadata", "model_name", "hook_name", "k",
               "activation_fn_str", "activation_fn_kwargs", "apply_b_dec_to_input", "normalize_activations",
               "reshape_activations", "rescale_acts_by_decoder_norm", "hook_head_index", "model_from_pretrained_kwargs",
               "dataset_path", "dataset_trust_remote_code", "context_size", "prepend_bos", "model_class_name",
               "hook_layer", "sae_lens_version", "sae_lens_training_version", "neuronpedia_id", "exclude_special_tokens",
               "seqpos_slice", "finetuning_scaling_factor"}


def _check_flags(cfg: dict[str, Any], path: Path) -> None:
    """Refuse every setting that would change the computation and that this loader does not implement."""
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{path}: reshape_activations={cfg['reshape_activations']!r} (per-head SAEs) is not supported; "
                         "lmscope SAEs read one site's last axis")  # fmt: skip
    if cfg.get("hook_head_index") is not None:
        raise ValueError(f"{path}: hook_head_index={cfg['hook_head_index']} is not supported; apply it at Site(..., head=h)")
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError(f"{path}: finetuning_scaling_factor is set; lmscope does not implement it")
    unknown = sorted(k for k in cfg if k not in _INERT_KEYS and cfg[k] not in (None, False, "none", 0, [], {}))
    if unknown:
        raise ValueError(f"{path}: settings lmscope does not know how to apply: {unknown}; refusing to load an SAE "
                         "whose computation might differ from what the file's author meant")  # fmt: skip


def _rule(cfg: dict[str, Any], path: Path) -> tuple[str, int | None]:
    arch = cfg.get("architecture")
    if arch is None:
        raise ValueError(
            f"{path} does not say which activation rule the SAE uses (no 'architecture'); refusing to guess ReLU. "
            f"Add \"architecture\": one of {list(SAELENS_ARCHITECTURES)} to cfg.json"
        )
    if arch not in SAELENS_ARCHITECTURES:
        raise ValueError(f"{path}: unsupported SAE architecture {arch!r}; lmscope reads {list(SAELENS_ARCHITECTURES)}")
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "topk" and k is None:
        raise ValueError(f"{path}: a topk SAE needs 'k' in cfg.json")
    return arch, None if k is None else int(k)


def _metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]).get("__metadata__", {}) or {}


def _fold_decoder_norm(t: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAELens' rescale_acts_by_decoder_norm as plain weights.

    SAELens encodes z = topk((x - b_dec) W_enc + b_enc) * n) and decodes z / n @ W_dec, with n the
    decoder row norms. With W_enc' = W_enc n, b_enc' = b_enc n and W_dec' = W_dec / n the same
    codes and reconstructions come out of an ordinary TopK SAE with unit decoder rows.
    """
    n = t["W_dec"].norm(dim=-1)  # (d_sae,)
    if bool((n == 0).any()):
        raise ValueError(f"rescale_acts_by_decoder_norm with {int((n == 0).sum())} all-zero decoder rows")
    return {**t, "W_enc": t["W_enc"] * n, "b_enc": t["b_enc"] * n, "W_dec": t["W_dec"] / n[:, None]}


def load_saelens(folder: str | Path, *, device: torch.device | str = "cpu") -> SAE:
    """Read an SAE folder in the SAELens layout (ours or SAELens' own).

    Use :func:`lmscope.saes.metrics.check_site` (or any function taking a model) to verify it fits a site.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"SAE folder {folder} lacks {p.name} (expected {CFG_FILE} + {WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc}") from exc
    arch, k = _rule(cfg, cfg_path)
    _check_flags(cfg, cfg_path)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(f"{cfg_path}: normalize_activations={norm!r} needs a scaling factor the file does not hold; "
                         "fold it into the weights first")  # fmt: skip
    if cfg.get("apply_b_dec_to_input", True) is False:
        raise ValueError(f"{cfg_path}: apply_b_dec_to_input=false is not supported")
    raw = w_path.read_bytes()
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"{w_path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    stamp = _metadata(raw).get("lmscope_sha256")
    if stamp is not None and stamp != content_digest(tensors, json.dumps(cfg, sort_keys=True, default=str)):
        raise ValueError(f"checksum mismatch in {folder}: {WEIGHTS_FILE} or {CFG_FILE} changed after lmscope wrote them")
    meta = cfg.get("metadata") or {}
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        want["threshold"] = (d_sae,)
    for name, shape in want.items():
        if name not in tensors:
            raise ValueError(f"{w_path} lacks tensor {name!r} needed by a {arch} SAE")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{w_path}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
        check_finite(tensors[name], f"SAE weight {name} in {w_path}")
    ours = meta.get("lmscope") or {}
    known = {f for f in SAEConfig.__dataclass_fields__}
    base = {k2: v for k2, v in ours.items() if k2 in known}
    base.update(architecture=arch, d_in=d_in, d_sae=d_sae, k=k, scaling_factor=1.0, normalize_activations="none",
                hook_name=meta.get("hook_name") or cfg.get("hook_name") or "",
                model_name=meta.get("model_name") or cfg.get("model_name") or "")  # fmt: skip
    if arch == "jumprelu":
        thr = tensors["threshold"]
        if bool((thr <= 0).any()):
            raise ValueError(f"{w_path}: jumprelu thresholds must be positive ({int((thr <= 0).sum())} are not)")
    if cfg.get("rescale_acts_by_decoder_norm"):
        if arch != "topk":
            raise ValueError(f"{cfg_path}: rescale_acts_by_decoder_norm is defined for topk SAEs only, not {arch}")
        tensors = _fold_decoder_norm(tensors)
    sae = SAE(SAEConfig(**base), device=device)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(tensors[name])
        if arch == "jumprelu":
            sae.log_threshold.copy_(tensors["threshold"].log())
    sae.eval()
    return sae
