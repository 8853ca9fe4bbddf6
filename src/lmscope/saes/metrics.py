"""How good is an SAE? Reconstruction, sparsity, and what splicing it into the model costs.

- **L0**: average number of active latents per token.
- **FVU** (fraction of variance unexplained): sum ||x - x'||^2 / sum ||x - mean(x)||^2.
- **CE loss recovered**: replace the site's activation by the SAE's reconstruction during the
  forward pass ("splice") and compare the next-token cross-entropy with the clean model and with
  the site zero-ablated: (CE_zero - CE_spliced) / (CE_zero - CE_clean); 1 = as good as the model.
- **KL when spliced**: KL(clean || spliced) of the next-token distributions, per token.
- **Dead / dense latents**: never active on the evaluation tokens / active on more than
  ``dense_threshold`` of them; the latent-frequency histogram shows the whole distribution.

Splicing is an ordinary lmscope edit (:func:`splice`); with ``with_error=True`` the SAE's error
term is added back, so the model's logits are unchanged (a test holds this to 1e-5) — the
starting point for attributing behaviour to latents.

    >>> import lmscope as ls, torch
    >>> from lmscope.saes import SAE, SAEConfig
    >>> from lmscope.saes.metrics import evaluate_sae
    >>> model = ls.load_tiny("llama")
    >>> sae = SAE(SAEConfig("topk", model.shape.d_model, 64, k=4, hook_name="blocks.0.hook_resid_post"))
    >>> ev = evaluate_sae(model, sae, torch.randint(0, 100, (2, 16)), skip_first=0)
    >>> 0 <= ev.l0 <= 4
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.edits import Edit
from lmscope.core.hooks import capture, intervene
from lmscope.core.inputs import Batch
from lmscope.core.metrics import cross_entropy, kl_div
from lmscope.core.prefix import Prefix, start_layer
from lmscope.core.sites import Site, SiteLike, as_site
from lmscope.saes.sae import SAE

if TYPE_CHECKING:
    from lmscope.core.model import Model


def check_site(model: Model, sae: SAE, site: SiteLike | None = None) -> Site:
    """The site an SAE applies to; errors if widths or hook names disagree, warns on another model id."""
    cfg = sae.cfg
    if site is None:
        if not cfg.hook_name:
            raise ValueError("this SAE records no hook_name; pass the site it should be applied to")
        site = cfg.hook_name
    site = as_site(site)
    width = model.site_width(site)
    if cfg.d_in != width:
        raise ValueError(f"SAE d_in={cfg.d_in} but site {site} of {model.model_id} has width {width}")
    if cfg.hook_name and as_site(cfg.hook_name) != site:
        raise ValueError(f"SAE was trained at {cfg.hook_name} but is being applied at {site}")
    if cfg.model_name and cfg.model_name != model.model_id:
        warnings.warn(f"SAE was trained on {cfg.model_name!r}, applying it to {model.model_id!r}", stacklevel=2)
    return site


@dataclass
class SAEEdit(edits.Custom):
    """An edit made from an SAE: it knows the width and hook it was trained at, and refuses other sites."""

    d_in: int = 0
    hook_name: str = ""

    def expected_width(self) -> int | None:
        return self.d_in

    def validate(self, width: int, site_name: str, *, dtype: torch.dtype | None = None) -> None:
        super().validate(width, site_name, dtype=dtype)
        if self.hook_name and as_site(self.hook_name) != as_site(site_name):
            raise ValueError(f"this SAE was trained at {self.hook_name} but the edit is applied at {site_name}; "
                             f"use the SAE's own site (or check_site(model, sae, site) to see why)")  # fmt: skip


def _sae_edit(sae: SAE, fn: Any, positions: Any) -> SAEEdit:
    return SAEEdit(fn=fn, positions=positions, d_in=sae.cfg.d_in, hook_name=sae.cfg.hook_name)


def splice(sae: SAE, *, with_error: bool = False, positions: Any = "all") -> Edit:
    """An edit that replaces a site's activation by the SAE's reconstruction (plus its error if asked)."""
    sae.eval()

    def fn(x: Tensor) -> Tensor:
        with torch.no_grad():
            recon = sae.decode(sae.encode(x)).to(x.dtype)
        if not with_error:
            return recon
        # recon + error, summed in float64: with the massive activations of attention-sink tokens a
        # float32 sum is off by ~1e-3 there; in float64 it rounds back to x exactly.
        r = recon.double()
        return (r + (x.double() - r)).to(x.dtype)

    return _sae_edit(sae, fn, positions)


def clamp_latent(sae: SAE, latent: int, value: float, *, positions: Any = "all") -> Edit:
    """An edit that sets one latent to ``value`` and keeps the SAE's error term (the Golden Gate recipe)."""
    if not 0 <= latent < sae.cfg.d_sae:
        raise IndexError(f"latent {latent} out of range for d_sae={sae.cfg.d_sae}")
    sae.eval()

    def fn(x: Tensor) -> Tensor:
        with torch.no_grad():
            z = sae.encode(x)
            delta = (value - z[..., latent])[..., None] * sae.W_dec[latent] / sae.cfg.scaling_factor
        return x + delta.to(x.dtype)

    return _sae_edit(sae, fn, positions)


@dataclass
class SAEEval:
    """What :func:`evaluate_sae` measures (all averages over the evaluation tokens)."""

    l0: float
    """Active latents per token."""
    fvu: float
    """Fraction of variance unexplained."""
    ce_clean: float
    """Next-token cross-entropy of the unmodified model (nats)."""
    ce_spliced: float
    """Cross-entropy with the reconstruction spliced in."""
    ce_zero: float
    """Cross-entropy with the site zero-ablated (the floor)."""
    ce_recovered: float
    """(ce_zero - ce_spliced) / (ce_zero - ce_clean)."""
    kl_spliced: float
    """Mean KL(clean || spliced) per token (nats)."""
    dead_frac: float
    """Latents never active on the evaluation tokens."""
    dense_frac: float
    """Latents active on more than ``dense_threshold`` of tokens."""
    tokens: int
    """Tokens the SAE was evaluated on."""
    freqs: Tensor
    """(d_sae,) firing frequency of every latent."""

    def summary(self) -> dict[str, float]:
        """The scalar fields, for JSON."""
        return {k: v for k, v in self.__dict__.items() if k != "freqs"}


@torch.no_grad()
def evaluate_sae(
    model: Model,
    sae: SAE,
    chunks: Tensor,
    *,
    site: SiteLike | None = None,
    batch_size: int = 8,
    skip_first: int = 1,
    dense_threshold: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> SAEEval:
    """Measure an SAE on token ``chunks`` (n, seq) at its site.

    The reconstruction and the zero-ablation replace positions >= ``skip_first`` (the SAE is not
    trained on the attention-sink token); CE and KL are averaged over every next-token prediction.
    """
    site = check_site(model, sae, site)
    start = start_layer(site, model.shape.n_layers)
    sae.eval()
    positions: Any = "all" if skip_first == 0 else list(range(skip_first, chunks.shape[1]))
    freq = torch.zeros(sae.cfg.d_sae)
    x_sum = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    sums = {"err": 0.0, "x2": 0.0, "l0": 0.0}
    n = 0
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n_batches = 0
    for i in range(0, chunks.shape[0], batch_size):
        ids = chunks[i : i + batch_size].to(model.device)
        # the clean pass, kept: the spliced and zero-ablated passes start at the site's layer from it
        with capture(model, [site]) as acts:
            prefix = Prefix(model, Batch.unpadded(ids), layers=[start], positions=False)
        clean = prefix.logits
        x = acts[site][:, skip_first:].reshape(-1, sae.cfg.d_in).float()
        z = sae.encode(x)
        recon = sae.decode(z)
        sums["err"] += float((x - recon).pow(2).sum())
        x_sum += x.double().sum(0).cpu()
        sums["x2"] += float(x.double().pow(2).sum())
        sums["l0"] += float((z > 0).sum())
        n += x.shape[0]
        freq += (z > 0).sum(0).float().cpu()
        with intervene(model, {site: splice(sae, positions=positions)}):
            spliced = prefix.forward(copies=1, layer=start)
        with intervene(model, {site: edits.zero(positions=positions)}):
            zero = prefix.forward(copies=1, layer=start)
        ce["clean"] += float(cross_entropy(clean, ids))
        ce["spliced"] += float(cross_entropy(spliced, ids))
        ce["zero"] += float(cross_entropy(zero, ids))
        ce["kl"] += float(kl_div(clean, spliced).mean())
        n_batches += 1
        if progress:
            progress(f"evaluated {min(i + batch_size, chunks.shape[0])}/{chunks.shape[0]} windows")
    total_var = sums["x2"] - float((x_sum**2).sum()) / n
    cc, cs, cz = (ce[k] / n_batches for k in ("clean", "spliced", "zero"))
    freqs = freq / n
    return SAEEval(
        l0=sums["l0"] / n, fvu=sums["err"] / total_var, ce_clean=cc, ce_spliced=cs, ce_zero=cz,
        ce_recovered=(cz - cs) / (cz - cc) if cz != cc else float("nan"), kl_spliced=ce["kl"] / n_batches,
        dead_frac=float((freqs == 0).float().mean()), dense_frac=float((freqs > dense_threshold).float().mean()),
        tokens=n, freqs=freqs,
    )  # fmt: skip


def frequency_figure(freqs: Tensor, title: str = "latent firing frequency"):
    """Histogram of log10 firing frequency (dead latents counted at the left edge)."""
    from lmscope.experiments.report import new_figure

    fig, ax = new_figure(figsize=(6, 3.2))
    n_tokens_floor = float(freqs[freqs > 0].min()) if bool((freqs > 0).any()) else 1e-6
    logf = torch.log10(freqs.clamp(min=n_tokens_floor / 10)).numpy()
    ax.hist(logf, bins=60, color="#4c72b0")
    ax.set_xlabel("log10 firing frequency (leftmost bar: dead)")
    ax.set_ylabel("latents")
    ax.set_title(title)
    return fig
