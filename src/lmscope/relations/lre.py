"""Linear relational embeddings (LREs): fact recall's last steps replaced by one affine map.

Hernandez et al. 2024, "Linearity of Relation Decoding in Transformer Language Models": for a
relation r (country -> capital), the map from the subject's representation s (the hidden state of
the subject's last token at layer l) to the final hidden state o at the answer position is
approximately affine, ``o ~ beta * W s + b``. W is estimated as the Jacobian do/ds averaged over a
few prompts, and b as the mean of ``o - W s`` over the same prompts; beta > 1 compensates for the
Jacobian underestimating the slope. The LRE is a "model of the model": it is

- **faithful** if ``argmax unembed(beta W s + b)`` equals the model's own answer for held-out
  subjects (the paper finds this for about half of its relations, 48%);
- **causal** if editing s by the (low-rank pseudo-)inverse, ``s + W^+ (o' - o) / beta``, makes the
  model answer another object o' (the representation of a subject s' with that object).

Assumptions here: prompts are few-shot (``n_icl`` training pairs in the template, then the
subject), the answer's first token stands for the object, the final state is the last layer's
``resid_post`` at the last prompt token (decoded by ``model.unembed``, which applies the final
norm). The Jacobian is computed exactly by autograd: the prompt's prefix (before the subject's last
token) is run once into a KV cache, then d_model copies of the suffix are run with row i's subject
state as a leaf H, and the gradient of sum_i o_i[i] with respect to H gives J row by row.

    import lmscope as ls
    from lmscope.relations import load_relation, estimate_lre, faithfulness
    model = ls.load()
    rel = load_relation("country_capital")
    lre = estimate_lre(model, rel, layer=8)
    faithfulness(model, rel, lre).faithfulness
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.inputs import Batch
from lmscope.core.prefix import Prefix
from lmscope.core.sites import Site
from lmscope.data.bundled import list_data, load_json, load_jsonl
from lmscope.experiments.artifacts import Provenance, load_artifact, save_artifact

if TYPE_CHECKING:
    from pathlib import Path

    from lmscope.core.model import Model


@dataclass
class Relation:
    """A relation: a prompt template with one "{}" for the subject and (subject, object) pairs."""

    name: str
    template: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]

    def __post_init__(self) -> None:
        if self.template.count("{}") != 1:
            raise ValueError(f"relation {self.name!r}: template needs exactly one '{{}}', got {self.template!r}")
        if len(self.train) < 2 or not self.test:
            raise ValueError(f"relation {self.name!r} needs >= 2 train and >= 1 test pairs")


def relation_names() -> list[str]:
    """Names of the built-in relations (``data/files/relations``)."""
    return sorted(p.split("/")[-1][: -len(".jsonl")] for p in list_data("relations") if p.endswith(".jsonl"))


def load_relation(name: str) -> Relation:
    """A built-in relation with its template and train/test split, or your own: a ``.jsonl`` file of
    ``{"subject", "object", "split", "template"}`` records (one template, with one ``{}``, for all)."""
    if name.endswith(".jsonl"):
        from lmscope.data.bundled import read_jsonl

        if not Path(name).is_file():
            raise FileNotFoundError(f"relation file {name} does not exist")
        rows = read_jsonl(name)
        for n, r in enumerate(rows, 1):
            missing = {"subject", "object", "split", "template"} - set(r)
            if missing:
                raise ValueError(f"{name}: record {n} lacks {sorted(missing)} (each needs subject, object, split, template)")
        templates = {r["template"] for r in rows}
        if len(templates) != 1:
            raise ValueError(f"{name}: records give {len(templates)} different templates; one relation has one template")
        pairs = {s: [(r["subject"], r["object"]) for r in rows if r["split"] == s] for s in ("train", "test")}
        return Relation(Path(name).stem, templates.pop(), pairs["train"], pairs["test"])
    names = relation_names()
    if name not in names:
        raise ValueError(f"unknown relation {name!r}; built-in relations: {names}")
    tmpl = load_json("relations/templates.json")[name]["prompt"]
    rows = load_jsonl(f"relations/{name}.jsonl")
    pairs = {s: [(r["subject"], r["object"]) for r in rows if r["split"] == s] for s in ("train", "test")}
    return Relation(name, tmpl, pairs["train"], pairs["test"])


@dataclass
class Prompting:
    """How subjects are put into prompts."""

    n_icl: int = 3
    """Training pairs written before the query ("The capital of France is Paris.")."""
    seed: int = 0


def _icl_prefix(rel: Relation, exclude: str, p: Prompting) -> str:
    rng = random.Random(f"{p.seed}-{rel.name}-{exclude}")
    shots = rng.sample([t for t in rel.train if t[0] != exclude], p.n_icl)
    return "".join(rel.template.format(s) + " " + o + ".\n" for s, o in shots)


def _prompt(model: Model, rel: Relation, subject: str, p: Prompting) -> tuple[list[int], int]:
    """Token ids of the prompt and the index of the subject's last token."""
    prefix = _icl_prefix(rel, subject, p)
    head = rel.template[: rel.template.index("{}")]
    full = prefix + rel.template.format(subject)
    upto = prefix + head + subject
    ids = model.tokenizer(full)["input_ids"]
    pre = model.tokenizer(upto)["input_ids"]
    if ids[: len(pre)] != pre:
        raise ValueError(f"subject {subject!r} does not end on a token boundary in {full!r}")
    return ids, len(pre) - 1


def _first_token(model: Model, word: str) -> int:
    return int(model.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0])


@dataclass
class LRE:
    """An estimated linear relational embedding o = beta * W s + b at one layer."""

    relation: str
    layer: int
    weight: Tensor
    """(d_model, d_model) mean Jacobian W."""
    bias: Tensor
    """(d_model,) b = mean(o - W s) over the estimation prompts."""
    beta: float = 1.0
    """Slope scale (chosen on training subjects by :func:`choose_beta`)."""
    subjects: list[str] = field(default_factory=list)
    """Subjects whose prompts estimated W and b."""

    def __call__(self, s: Tensor) -> Tensor:
        """(..., d_model) subject states -> (..., d_model) predicted final states."""
        return self.beta * s @ self.weight.T.to(s.dtype) + self.bias.to(s.dtype)

    def inverse_delta(self, target: Tensor, current: Tensor, rank: int | None = 64) -> Tensor:
        """Subject-state change W^+ (target - current) / beta, with a rank-``rank`` pseudo-inverse."""
        u, sv, vh = torch.linalg.svd(self.weight.double())
        k = len(sv) if rank is None else min(rank, len(sv))
        pinv = (vh[:k].T / sv[:k]) @ u[:, :k].T
        return ((target - current).double() @ pinv.T / self.beta).to(target.dtype)

    def save(self, path: str | Path, *, provenance: Provenance | None = None) -> Path:
        return save_artifact(path, "lre", {"weight": self.weight, "bias": self.bias},
                             meta={"relation": self.relation, "layer": self.layer, "beta": self.beta, "subjects": self.subjects},
                             provenance=provenance)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> LRE:
        a = load_artifact(path, "lre")
        m = a.meta
        return cls(m["relation"], int(m["layer"]), a.tensors["weight"], a.tensors["bias"], float(m["beta"]), list(m["subjects"]))


def jacobian(
    model: Model, ids: Sequence[int], subject_pos: int, layer: int, *, chunk: int = 192
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact Jacobian of the last layer's state at the last token w.r.t. resid_post[layer] at subject_pos.

    Returns (J (d_model, d_model), s (d_model,), o (d_model,)). ``chunk`` output rows are computed
    per batched forward/backward (memory grows with it).
    """
    d = model.shape.d_model
    L = model.shape.n_layers
    if not 0 < subject_pos < len(ids):
        raise ValueError(f"subject position {subject_pos} must be inside the prompt and after its first token")
    dev = model.device
    x = torch.tensor([list(ids)], device=dev)
    batch = Batch.unpadded(x)
    with capture(model, [Site("resid_post", L - 1)]) as acts:
        prefix = Prefix(model, batch, layers=[layer + 1])  # layer inputs and KV cache of the prompt, for the passes below
    s0 = prefix.inputs[layer + 1][0, subject_pos]  # resid_post[layer] is the input of layer + 1
    o0 = acts[Site("resid_post", L - 1)][0, -1]
    after = prefix.inputs[layer + 1][0, subject_pos + 1 :]
    rows = []
    for lo in range(0, d, chunk):
        k = min(chunk, d - lo)
        H = s0.expand(k, d).clone().requires_grad_(True)
        start = torch.cat([H[:, None], after.expand(k, -1, -1)], dim=1)  # the subject state is H; the rest as run
        stash: dict[str, Tensor] = {}

        def keep(t: Tensor, stash: dict[str, Tensor] = stash) -> Tensor:
            stash["o"] = t
            return t

        # layers up to `layer` are not run again (their output is `start`), nor the positions before the subject
        with intervene(model, {Site("resid_post", L - 1): edits.custom(keep)}):
            prefix.forward(copies=k, layer=layer + 1, position=subject_pos, logits_to_keep=1, start=start, grad=True)
        o = stash["o"][:, -1]
        sel = o[torch.arange(k), torch.arange(lo, lo + k)].sum()
        (g,) = torch.autograd.grad(sel, H)
        rows.append(g)
    return torch.cat(rows), s0, o0


def estimate_lre(
    model: Model, rel: Relation, layer: int, *, n_prompts: int = 3, prompting: Prompting | None = None, beta: float = 1.0
) -> LRE:
    """Mean Jacobian and bias over ``n_prompts`` training subjects (the paper's estimator)."""
    p = prompting or Prompting()
    if not 0 <= layer < model.shape.n_layers - 1:
        raise IndexError(f"layer must be in [0, {model.shape.n_layers - 2}] (the map goes to the last layer)")
    subjects = [s for s, _ in rel.train[:n_prompts]]
    Js, ss, os_ = [], [], []
    for subj in subjects:
        ids, pos = _prompt(model, rel, subj, p)
        J, s, o = jacobian(model, ids, pos, layer)
        Js.append(J)
        ss.append(s)
        os_.append(o)
    W = torch.stack(Js).mean(0).detach()
    b = (torch.stack(os_) - torch.stack(ss) @ W.T).mean(0).detach()
    return LRE(rel.name, layer, W, b, beta, subjects)
