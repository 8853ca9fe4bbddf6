"""Concept vectors for concept injection: "Tell me about {word}" minus the mean over baseline words.

Seed 000 (Lindsey 2025, "Emergent introspective awareness in large language models",
transformer-circuits.pub/2025/introspection): a concept's vector at layer l is the activation of
the prompt "Tell me about {concept}" minus the mean activation of the same prompt over many
unrelated baseline words, so what the prompts share cancels and the concept remains.

Where to read the activation:

- ``read="last"``: the last prompt token (under the chat template, the assistant header), as in
  the paper's pseudo-code;
- ``read="word"``: the concept word's own last token. On a small model this reads the word
  itself, and steers generation towards the concept much more strongly in early-middle layers.

    >>> import lmscope as ls
    >>> from lmscope.introspection import concept_vectors, load_concepts
    >>> model = ls.load()
    >>> words = load_concepts()
    >>> cv = concept_vectors(model, ["ocean", "bread"], words.baseline[:20], read="word")
    >>> cv.vectors["ocean"].shape       # (layer, d_model)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lmscope.core.hooks import capture
from lmscope.core.inputs import chat_text, pad_rows
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.data.bundled import load_json

Read = Literal["last", "word"]


@dataclass
class ConceptWords:
    """Concepts to inject, baseline words to subtract, and synonyms that count as naming a concept."""

    concepts: list[str]
    baseline: list[str]
    synonyms: dict[str, list[str]] = field(default_factory=dict)

    def names(self, concept: str) -> list[str]:
        """The concept and its synonyms (what a grader accepts)."""
        return [concept, *self.synonyms.get(concept, [])]


def load_concepts() -> ConceptWords:
    """The built-in lists (data/files/concepts.json)."""
    d = load_json("concepts.json")
    return ConceptWords(list(d["concepts"]), list(d["baseline_words"]), {k: list(v) for k, v in d.get("synonyms", {}).items()})


def _word_token_index(tokenizer: Any, text: str, char_end: int) -> int:
    """Index of the token that holds character ``char_end - 1`` of ``text``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if a <= char_end - 1 < b:
            return i
    raise ValueError(f"no token covers character {char_end - 1} of {text!r}")


def render_concept_prompts(model: Model, words: list[str], *, template: str, chat: bool,
                           read: Read) -> tuple[list[list[int]], list[int]]:  # fmt: skip
    """Token ids of each word's prompt, and the index (in those ids) where the activation is read."""
    if "{word}" not in template:
        raise ValueError(f"template must contain '{{word}}', got {template!r}")
    if read not in ("last", "word"):
        raise ValueError(f"read must be 'last' or 'word', got {read!r}")
    ids_list, where = [], []
    prefix = template.split("{word}", 1)[0]
    for w in words:
        user = template.format(word=w)
        text = chat_text(model.tokenizer, user) if chat else user
        ids = model.tokenizer(text, add_special_tokens=not chat)["input_ids"]
        if read == "last":
            idx = len(ids) - 1
        else:
            start = text.find(user)
            if not chat and model.tokenizer(text, add_special_tokens=True)["input_ids"] != model.tokenizer(
                    text, add_special_tokens=False)["input_ids"]:  # fmt: skip
                raise ValueError("read='word' without chat needs a tokenizer that adds no special tokens")
            idx = _word_token_index(model.tokenizer, text, start + len(prefix) + len(w))
        ids_list.append(ids)
        where.append(idx)
    return ids_list, where


def read_acts(model: Model, ids_list: list[list[int]], where: list[int], layers: list[int], batch_size: int = 16) -> Tensor:
    """(n, layer, d_model) layer outputs at position ``where[i]`` of each token sequence (left-padded batches)."""
    sites = [Site("resid_post", layer) for layer in layers]
    out = []
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    for s in range(0, len(ids_list), batch_size):
        chunk, pos = ids_list[s : s + batch_size], where[s : s + batch_size]
        width = max(len(x) for x in chunk)
        batch = pad_rows(chunk, pad).to(model.device)
        idx = torch.tensor([width - len(x) + p for x, p in zip(chunk, pos, strict=True)], device=model.device)
        rows = torch.arange(len(chunk), device=model.device)
        with capture(model, sites, stop_early=True) as acts:
            model(batch)
        out.append(torch.stack([acts[site][rows, idx] for site in sites], 1).float().cpu())
    return torch.cat(out)


@dataclass
class ConceptVectors:
    """Concept vectors for several words, at several layers."""

    vectors: dict[str, Tensor]
    """Word -> (layer, d_model), rows in the order of ``layers``."""
    layers: list[int]
    read: str
    template: str

    def at(self, word: str, layer: int) -> Tensor:
        """(d_model,) the vector of ``word`` at ``layer``."""
        if word not in self.vectors:
            raise KeyError(f"no concept vector for {word!r}; have {sorted(self.vectors)}")
        if layer not in self.layers:
            raise KeyError(f"no layer {layer}; concept vectors were read at layers {self.layers}")
        return self.vectors[word][self.layers.index(layer)]

    def norms(self, layer: int) -> dict[str, float]:
        return {w: float(self.at(w, layer).norm()) for w in self.vectors}


def concept_vectors(
    model: Model,
    words: list[str],
    baseline: list[str],
    *,
    layers: list[int] | None = None,
    template: str = "Tell me about {word}",
    chat: bool = True,
    read: Read = "last",
    batch_size: int = 16,
) -> ConceptVectors:
    """Concept vector = act("Tell me about {word}") - mean over baseline words, per layer."""
    if not words or not baseline:
        raise ValueError("concept_vectors needs at least one word and one baseline word")
    overlap = sorted(set(words) & set(baseline))
    if overlap:
        raise ValueError(f"words also in the baseline list would cancel themselves: {overlap}")
    if chat and getattr(model.tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; pass chat=False")
    layers = list(range(model.shape.n_layers)) if layers is None else sorted(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.shape.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {model.shape.n_layers} layers")
    ids, where = render_concept_prompts(model, list(words) + list(baseline), template=template, chat=chat, read=read)
    acts = read_acts(model, ids, where, layers, batch_size)
    base = acts[len(words) :].mean(0)
    return ConceptVectors({w: acts[i] - base for i, w in enumerate(words)}, layers, read, template)
