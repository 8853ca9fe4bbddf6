"""Extracting steering vectors from a contrast set, and where the behaviour is linearly readable.

Seed 001 (representation engineering; Zou et al. 2023, Turner et al. 2023, Rimsky et al. 2024):
run the positive and the negative prompts, read each layer's output at the last real token
(from the attention mask), and take

- ``mean_diff``: mean(positive) - mean(negative) per layer (the "function vector");
- ``pca``: the first principal direction of the paired differences positive_i - negative_i
  (uncentred, so a consistent shift dominates; unpaired sets pair examples in a seeded shuffle),
  sign chosen so positives project higher;
- ``probe``: the weight vector of a logistic-regression probe (plain torch, L-BFGS on
  centred activations scaled by one number per layer, L2 penalty), mapped back to activation space.

Every method returns directions scaled to the same unit: the projection of the mean difference
on the direction, so ``scale=1`` shifts an activation by the average class gap along it.

Held-out separability: for each layer, project train and test activations on the train
direction, fit the threshold that best splits the train projections, and report test accuracy
(0.5 = not readable along this direction, 1.0 = perfectly separated). Assumes the behaviour is
one linear direction at the last token; a low score means that assumption fails, not that the
model lacks the concept.

    >>> import lmscope as ls
    >>> from lmscope.steering import builtin, extract
    >>> model = ls.load()
    >>> result = extract(model, builtin("sentiment"), method="mean_diff")
    >>> result.separability          # {layer: held-out accuracy}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from lmscope.core.hooks import capture
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.experiments.artifacts import Provenance
from lmscope.steering.contrast import ContrastSet, encode
from lmscope.steering.vector import SteeringVector

Method = Literal["mean_diff", "pca", "probe"]
METHODS: tuple[str, ...] = ("mean_diff", "pca", "probe")


def last_token_acts(model: Model, texts: list[str], *, templated: bool, layers: list[int] | None = None,
                    batch_size: int = 16) -> Tensor:  # fmt: skip
    """(n, layer, d_model) outputs of ``layers`` (default all) at each text's last real token.

    One forward pass per chunk of ``batch_size`` captures every layer, stopping after the deepest.
    """
    layers = list(range(model.shape.n_layers)) if layers is None else sorted(layers)
    sites = [Site("resid_post", layer) for layer in layers]
    out = []
    for start in range(0, len(texts), batch_size):
        batch = encode(model.tokenizer, texts[start : start + batch_size], templated=templated,
                       max_length=model.shape.max_positions).to(model.device)  # fmt: skip
        rows = torch.arange(batch.shape[0], device=model.device)
        with capture(model, sites, stop_early=True) as acts:
            model(batch)
        out.append(torch.stack([acts[s][rows, batch.last_index] for s in sites], 1).float().cpu())
    return torch.cat(out)


def mean_diff_directions(pos: Tensor, neg: Tensor) -> Tensor:
    """(layer, d_model) mean(pos) - mean(neg) for activations of shape (n, layer, d_model)."""
    return pos.mean(0) - neg.mean(0)


def _pairs(pos: Tensor, neg: Tensor, paired: bool, seed: int) -> Tensor:
    if paired and pos.shape[0] == neg.shape[0]:
        return pos - neg
    g = torch.Generator().manual_seed(seed)
    n = min(pos.shape[0], neg.shape[0])
    return pos[torch.randperm(pos.shape[0], generator=g)[:n]] - neg[torch.randperm(neg.shape[0], generator=g)[:n]]


def pca_directions(pos: Tensor, neg: Tensor, *, paired: bool = True, seed: int = 0) -> Tensor:
    """(layer, d_model) unit first principal direction of the differences, oriented towards positive."""
    diffs = _pairs(pos, neg, paired, seed)  # (pair, layer, d_model)
    out = []
    for layer in range(diffs.shape[1]):
        _, _, vh = torch.linalg.svd(diffs[:, layer].double(), full_matrices=False)
        u = vh[0].float()
        sign = torch.sign((pos[:, layer].mean(0) - neg[:, layer].mean(0)) @ u)
        out.append(u * (1.0 if sign == 0 else sign))
    return torch.stack(out)


def probe_directions(pos: Tensor, neg: Tensor, *, steps: int = 200, l2: float = 1e-2, seed: int = 0) -> Tensor:
    """(layer, d_model) logistic-regression weights per layer, in activation space, oriented to positive."""
    x = torch.cat([pos, neg]).double()  # (n, layer, d_model)
    y = torch.cat([torch.ones(pos.shape[0]), torch.zeros(neg.shape[0])]).double()
    # one scale per layer (not per feature) keeps the geometry, so the L2 penalty is isotropic
    mu = x.mean(0)
    sd = (x - mu).pow(2).mean((0, 2)).sqrt().clamp(min=1e-6)[:, None]  # (layer, 1)
    z = (x - mu) / sd
    out = []
    torch.manual_seed(seed)
    for layer in range(x.shape[1]):
        w = torch.zeros(x.shape[2], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
        zl = z[:, layer]

        def closure(zl: Tensor = zl, w: Tensor = w, b: Tensor = b, opt: torch.optim.LBFGS = opt) -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(zl @ w + b, y) + l2 * (w @ w)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        out.append((w.detach() / sd[layer]).float())
    return torch.stack(out)


def _gap_scaled(dirs: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Rescale each layer's direction to length = projection of the mean difference on it."""
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    gap = ((pos.mean(0) - neg.mean(0)) * unit).sum(-1, keepdim=True)
    return unit * gap


def threshold_accuracy(train_pos: Tensor, train_neg: Tensor, test_pos: Tensor, test_neg: Tensor) -> float:
    """Test accuracy of "positive if projection > t", with t the best split of the train projections."""
    scores = torch.cat([train_pos, train_neg])
    labels = torch.cat([torch.ones_like(train_pos), torch.zeros_like(train_neg)])
    order = scores.sort().values
    cands = torch.cat([order[:1] - 1, (order[1:] + order[:-1]) / 2, order[-1:] + 1])
    acc = ((scores[None] > cands[:, None]).float() == labels[None]).float().mean(1)
    t = cands[int(acc.argmax())]
    test = torch.cat([test_pos > t, test_neg <= t]).float()
    return float(test.mean())


@dataclass
class ExtractResult:
    """A steering vector and how well each layer's direction separates held-out examples."""

    vector: SteeringVector
    """Directions for every layer, gap-scaled (see module docstring)."""
    separability: dict[int, float]
    """Layer -> held-out accuracy of thresholding the projection (empty without a test split)."""
    train_acc: dict[int, float]
    """Layer -> train accuracy of the same threshold (how much the held-out number drops)."""
    n_train: tuple[int, int]
    """(positive, negative) train examples used."""
    n_test: tuple[int, int]
    control: dict[int, float] = field(default_factory=dict)
    """Layer -> held-out accuracy of the same estimator fitted on shuffled train labels (``shuffled=True``),
    the mean over ``shuffles`` draws: what the pipeline reads from a contrast that carries no signal
    (about 0.5; one draw can land far from it when the contrast lies along a high-variance direction)."""
    control_sd: dict[int, float] = field(default_factory=dict)
    """Layer -> standard deviation of the control over its draws."""

    def chosen_layer(self) -> int:
        """Layer with the highest *train* accuracy (ties: the earliest): a choice that never reads the test split."""
        if not self.train_acc:
            raise ValueError("no held-out split, so no layer accuracies")
        return max(self.train_acc, key=lambda layer: (self.train_acc[layer], -layer))

    def best_layer(self) -> int:
        """Layer with the highest held-out separability (ties: the earliest)."""
        if not self.separability:
            raise ValueError("no held-out split, so no separability to rank layers by")
        return max(self.separability, key=lambda layer: (self.separability[layer], -layer))


def directions_from_acts(pos: Tensor, neg: Tensor, method: str, *, paired: bool = True, seed: int = 0) -> Tensor:
    """(layer, d_model) gap-scaled directions by ``method`` from (n, layer, d_model) activations."""
    if method == "mean_diff":
        return mean_diff_directions(pos, neg)
    if method == "pca":
        return _gap_scaled(pca_directions(pos, neg, paired=paired, seed=seed), pos, neg)
    if method == "probe":
        return _gap_scaled(probe_directions(pos, neg, seed=seed), pos, neg)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def extract(
    model: Model,
    contrast: ContrastSet,
    *,
    method: Method = "mean_diff",
    layers: list[int] | None = None,
    max_per_side: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> ExtractResult:
    """Steering vector from the train split of ``contrast`` and per-layer separability on its test split.

    ``max_per_side`` keeps the first n examples of each side per split (small runs).
    """
    return extract_many(model, contrast, methods=[method], layers=layers, max_per_side=max_per_side,
                        batch_size=batch_size, seed=seed)[method]  # fmt: skip


def extract_many(
    model: Model,
    contrast: ContrastSet,
    *,
    methods: list[str] | tuple[str, ...] = METHODS,
    layers: list[int] | None = None,
    max_per_side: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    shuffled: bool = False,
    shuffles: int = 8,
) -> dict[str, ExtractResult]:
    """:func:`extract` for several methods from one set of activations (one pass over the prompts).

    ``shuffled`` also fits every method on ``shuffles`` balanced shuffles of the train labels (seeded
    from ``seed``; see :func:`_shuffle_labels`) and scores each on the true test labels.
    """
    if shuffled and shuffles < 1:
        raise ValueError(f"shuffles must be at least 1, got {shuffles}")
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    layers = list(range(model.shape.n_layers)) if layers is None else sorted(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.shape.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {model.shape.n_layers} layers")
    has_test = "test" in contrast.pos_split and "test" in contrast.neg_split
    train = contrast.split("train")
    test = contrast.split("test") if has_test else None
    if max_per_side is not None:
        train = train.head(max_per_side)
        test = test.head(max_per_side) if test is not None else None

    def acts(cs: ContrastSet) -> tuple[Tensor, Tensor]:
        p, n = cs.texts(model.tokenizer)
        a = last_token_acts(model, p + n, templated=cs.chat, layers=layers, batch_size=batch_size)
        return a[: len(p)], a[len(p) :]

    tp, tn = acts(train)
    ep, en = acts(test) if test is not None else (None, None)
    prov = Provenance.of(model, site="resid_post", dataset=train.records(), contrast=contrast.name,
                         contrast_meta=contrast.meta)  # fmt: skip
    draws = ([_shuffle_labels(tp, tn, train.paired, seed * 1009 + i) for i in range(shuffles)]
             if shuffled and ep is not None else [])  # fmt: skip
    out: dict[str, ExtractResult] = {}
    for method in methods:
        dirs = directions_from_acts(tp, tn, method, paired=train.paired, seed=seed)
        sep: dict[int, float] = {}
        tr_acc: dict[int, float] = {}
        control: dict[int, float] = {}
        control_sd: dict[int, float] = {}
        if ep is not None and en is not None:
            sep, tr_acc = _layer_accuracies(dirs, layers, tp, tn, ep, en)
            nulls = [_layer_accuracies(directions_from_acts(sp, sn, method, paired=train.paired, seed=seed),
                                       layers, sp, sn, ep, en)[0] for sp, sn in draws]  # fmt: skip
            if nulls:
                per_layer = {layer: torch.tensor([d[layer] for d in nulls]) for layer in layers}
                control = {layer: float(v.mean()) for layer, v in per_layer.items()}
                control_sd = {layer: float(v.std()) if len(nulls) > 1 else 0.0 for layer, v in per_layer.items()}
        meta = {"contrast": contrast.name, "separability": {str(k): v for k, v in sep.items()}}
        vec = SteeringVector({layer: dirs[i] for i, layer in enumerate(layers)}, model.shape.d_model, method, prov, meta)
        n_test = (0, 0) if ep is None or en is None else (ep.shape[0], en.shape[0])
        out[method] = ExtractResult(vec, sep, tr_acc, (tp.shape[0], tn.shape[0]), n_test, control, control_sd)
    return out


def _layer_accuracies(dirs: Tensor, layers: list[int], tp: Tensor, tn: Tensor, ep: Tensor,
                      en: Tensor) -> tuple[dict[int, float], dict[int, float]]:  # fmt: skip
    """Per layer: test and train accuracy of the best train threshold on the projection onto ``dirs``."""
    test, train = {}, {}
    for i, layer in enumerate(layers):
        u = dirs[i] / dirs[i].norm().clamp(min=1e-12)
        test[layer] = threshold_accuracy(tp[:, i] @ u, tn[:, i] @ u, ep[:, i] @ u, en[:, i] @ u)
        train[layer] = threshold_accuracy(tp[:, i] @ u, tn[:, i] @ u, tp[:, i] @ u, tn[:, i] @ u)
    return test, train


def _shuffle_labels(pos: Tensor, neg: Tensor, paired: bool, seed: int) -> tuple[Tensor, Tensor]:
    """The train activations with their labels shuffled, keeping the side sizes (and pairs, when paired).

    Balanced, not merely random: exactly half the pairs are swapped (unpaired: each new side holds the
    true positives in the same proportion), so the shuffled mean difference carries no multiple of the
    true one. A coin flip per pair leaves ``(1 - 2f)`` of it (f the swapped fraction), which a strong
    contrast turns into a control far from chance, on either side of it."""
    g = torch.Generator().manual_seed(seed)
    if paired and pos.shape[0] == neg.shape[0]:
        n = pos.shape[0]
        swap = torch.zeros(n, dtype=torch.bool)
        swap[torch.randperm(n, generator=g)[: n // 2]] = True
        swap = swap.view(-1, *([1] * (pos.dim() - 1)))
        return torch.where(swap, neg, pos), torch.where(swap, pos, neg)
    n_pos, n_neg = pos.shape[0], neg.shape[0]
    k = round(n_pos * n_pos / (n_pos + n_neg))  # true positives kept on the positive side: the overall rate
    p, q = torch.randperm(n_pos, generator=g), torch.randperm(n_neg, generator=g)
    new_pos = torch.cat([pos[p[:k]], neg[q[: n_pos - k]]])
    new_neg = torch.cat([pos[p[k:]], neg[q[n_pos - k :]]])
    return new_pos, new_neg
