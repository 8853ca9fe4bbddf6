"""Turning prompts into model inputs: chat templates, padding, position ids, last tokens.

Batches are left-padded by default (what generation needs), with ``position_ids`` computed from
the attention mask so absolute-position models (GPT-2) see the same positions as unpadded
inputs. The last real token of each row always comes from the mask, never from ``[:, -1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

PaddingSide = Literal["left", "right"]


@dataclass
class Batch:
    """Token ids, mask and position ids for a batch of prompts."""

    input_ids: Tensor
    """(batch, seq) token ids."""
    attention_mask: Tensor
    """(batch, seq) 1 for real tokens, 0 for padding."""
    position_ids: Tensor
    """(batch, seq) positions counted over real tokens only."""

    @property
    def last_index(self) -> Tensor:
        """(batch,) index of each row's last real token."""
        return last_token_index(self.attention_mask)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.input_ids.shape[0], self.input_ids.shape[1])

    @classmethod
    def unpadded(cls, ids: Tensor) -> Batch:
        """A batch of (batch, seq) ids that are all real tokens (windows of a corpus, one prompt)."""
        mask = torch.ones_like(ids)
        return cls(ids, mask, position_ids_from_mask(mask))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device))

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for an HF forward pass."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def last_token_index(attention_mask: Tensor | None, seq_len: int | None = None) -> Tensor:
    """Index of the last real token per row, for left, right or no padding."""
    if attention_mask is None:
        raise ValueError("a last-token index needs the attention mask (padding is otherwise ambiguous)")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seq), got {tuple(attention_mask.shape)}")
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row of the batch has no real token (all padding)")
    seq = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(torch.long) * (seq + 1)).argmax(-1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens; padding gets 1, as HF's generate does."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def chat_text(tokenizer, prompt: str, *, system: str | None = None, add_generation_prompt: bool = True) -> str:
    """The chat-templated string for one user turn (the template writes the BOS itself)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; pass chat=False (base models take plain text)")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise TypeError("internal: expected a sequence of prompts")
    if len(prompts) == 0:
        raise ValueError("empty prompt list: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
        if p == "":
            raise ValueError(f"prompt {i} is an empty string; the model needs at least one token")


def tokenize(
    tokenizer,
    prompts: str | Sequence[str],
    *,
    chat: bool = False,
    system: str | None = None,
    padding_side: PaddingSide = "left",
    max_length: int | None = None,
) -> Batch:
    """Tokenize prompts into a padded :class:`Batch`.

    With ``chat=True`` each prompt becomes one user turn of the tokenizer's chat template, tokenized
    without adding special tokens again, so the sequence carries exactly one BOS.
    """
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    _check_prompts(items)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    texts = [chat_text(tokenizer, p, system=system) for p in items] if chat else items
    encoded = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    if max_length is not None:
        for i, ids in enumerate(encoded):
            if len(ids) > max_length:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, longer than the model's context window of {max_length}"
                )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad_rows(encoded, 0 if pad_id is None else pad_id, padding_side=padding_side)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, padding_side: PaddingSide = "left") -> Batch:
    """A :class:`Batch` from token-id rows of different lengths, padded with ``pad_id``."""
    if not rows:
        raise ValueError("no token rows to pad")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[i, span] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, span] = 1
    return Batch(input_ids, mask, position_ids_from_mask(mask))
