"""Scalar metrics on logits, shared by every family: logit difference, probabilities, KL, CE.

All take logits of shape (batch, vocab) unless stated (use :func:`at_last` to pick each row's
last real token from (batch, seq, vocab) logits and the attention mask).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmscope.core.inputs import last_token_index


def at_last(logits: Tensor, attention_mask: Tensor) -> Tensor:
    """(batch, seq, vocab) -> (batch, vocab) at each row's last real token."""
    idx = last_token_index(attention_mask).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]


def _ids(token_ids: Tensor | int | list[int], batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(token_ids, device=device)
    return t.expand(batch) if t.dim() == 0 else t


def logit_diff(logits: Tensor, correct: Tensor | int | list[int], wrong: Tensor | int | list[int]) -> Tensor:
    """(batch,) logit of the correct token minus logit of the wrong one."""
    b, dev = logits.shape[0], logits.device
    rows = torch.arange(b, device=dev)
    return logits[rows, _ids(correct, b, dev)] - logits[rows, _ids(wrong, b, dev)]


def token_prob(logits: Tensor, token: Tensor | int | list[int]) -> Tensor:
    """(batch,) probability of ``token`` under softmax(logits)."""
    b, dev = logits.shape[0], logits.device
    return logits.float().softmax(-1)[torch.arange(b, device=dev), _ids(token, b, dev)]


def token_logprob(logits: Tensor, token: Tensor | int | list[int]) -> Tensor:
    """(batch,) log-probability of ``token``."""
    b, dev = logits.shape[0], logits.device
    return logits.float().log_softmax(-1)[torch.arange(b, device=dev), _ids(token, b, dev)]


def token_rank(logits: Tensor, token: Tensor | int | list[int]) -> Tensor:
    """(batch,) rank of ``token`` (0 = top-1)."""
    b, dev = logits.shape[0], logits.device
    target = logits[torch.arange(b, device=dev), _ids(token, b, dev)]
    return (logits > target[:, None]).sum(-1)


def kl_div(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) per row, in nats, for logits of the same shape (..., vocab)."""
    logp = p_logits.float().log_softmax(-1)
    logq = q_logits.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def entropy(logits: Tensor) -> Tensor:
    """Entropy in nats per row."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def cross_entropy(logits: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy of (batch, seq, vocab) logits on ``input_ids``, over real tokens."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = input_ids[:, 1:].to(logits.device)
    nll = -logp.gather(-1, target[..., None])[..., 0]
    if attention_mask is None:
        return nll.mean()
    m = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(nll.device, nll.dtype)
    return (nll * m).sum() / m.sum().clamp(min=1)


def normalized(metric: Tensor, clean: Tensor | float, corrupt: Tensor | float) -> Tensor:
    """(metric - corrupt) / (clean - corrupt): 1 = clean behaviour, 0 = corrupted behaviour."""
    return (metric - corrupt) / (clean - corrupt)
