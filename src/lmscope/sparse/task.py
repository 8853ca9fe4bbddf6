"""A tiny Python-like corpus and the "close the quote" task the sparse models are studied on.

The weight-sparse paper (Gao et al., OpenAI 2025, "Weight-sparse transformers have interpretable
circuits") trains on Python code and prunes circuits for tasks such as ``single_double_quote``: after
``x = "hello`` the model must close the string with ``"`` and not ``'``. We write a miniature of that
world in-process (no downloads): lines like ``print('cat')``, ``f("dog", 'sun')``, ``d["key"] = 1``
with words from a small list, and a character-level tokenizer over them.

Task prompts end just before a closing quote; the metric compares only the two quote tokens (binary
cross-entropy and accuracy of ``logit(right) > logit(wrong)``), as in the paper. A preceding line
with a random quote type is a distractor: the model must use the *most recent* opening quote.

    >>> from lmscope.sparse.task import quote_prompts
    >>> prompts = quote_prompts(4, seed=0)
    >>> prompts[0].answer in ("'", '"')
    True
"""

from __future__ import annotations

import random
import string
from typing import Any, NamedTuple

import torch
from torch import Tensor

WORDS = ("cat", "dog", "sun", "tree", "key", "box", "red", "blue", "one", "two", "file", "name", "data", "path",
         "x", "val", "item", "text")  # fmt: skip
VARS = ("a", "b", "x", "y", "s", "t", "name", "msg")
CHARS = string.ascii_lowercase + string.digits + " =()[],.:_'\"\n"
SPECIALS = ("<pad>", "<bos>", "<eos>")


class QuotePrompt(NamedTuple):
    """One task item: ``text`` ends right before the closing quote; ``answer`` is the right quote, ``wrong`` the other."""

    text: str
    answer: str
    wrong: str


def _q(rng: random.Random) -> str:
    return rng.choice(("'", '"'))


def _line(rng: random.Random) -> tuple[str, int, str]:
    """A random line, the index of its last closing quote, and that quote's type."""
    w, w2, v, q, q2 = rng.choice(WORDS), rng.choice(WORDS), rng.choice(VARS), _q(rng), _q(rng)
    kind = rng.randrange(4)
    if kind == 0:
        line = f"{v} = {q}{w}{q}"
    elif kind == 1:
        line = f"print({q}{w}{q})"
    elif kind == 2:
        line = f"f({q}{w}{q}, {q2}{w2}{q2})"
        q = q2
    else:
        line = f"d[{q}{w}{q}] = {rng.randrange(10)}"
    return line, line.rindex(q), q


def corpus_text(n_lines: int, *, seed: int = 0) -> str:
    """``n_lines`` random lines joined by newlines (the pretraining corpus)."""
    rng = random.Random(seed)
    return "\n".join(_line(rng)[0] for _ in range(n_lines)) + "\n"


def quote_prompts(n: int, *, seed: int = 1) -> list[QuotePrompt]:
    """``n`` task prompts: an optional distractor line, then a line cut right before its closing quote."""
    rng = random.Random(10_000 + seed)
    out = []
    for _ in range(n):
        line, cut, q = _line(rng)
        prefix = _line(rng)[0] + "\n" if rng.random() < 0.5 else ""
        out.append(QuotePrompt(prefix + line[:cut], q, "'" if q == '"' else '"'))
    return out


def char_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` over :data:`CHARS` that prepends ``<bos>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def encode_chars(text: str) -> Tensor:
    """Token ids of ``text`` for :func:`char_tokenizer` (no BOS), fast, for building training batches."""
    offset = len(SPECIALS)
    table = {c: i + offset for i, c in enumerate(CHARS)}
    try:
        return torch.tensor([table[c] for c in text], dtype=torch.long)
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the tokenizer's alphabet {CHARS!r}") from exc


def lm_batches(n_batches: int, batch: int, seq_len: int, *, seed: int = 0) -> Tensor:
    """(n_batches, batch, seq_len) windows of the corpus, each starting with ``<bos>`` at a line start."""
    text = corpus_text(n_batches * batch * seq_len // 12 + 64, seed=seed)
    ids = encode_chars(text)
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + seq_len < len(text)]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.tensor(starts)[torch.randint(len(starts), (n_batches * batch,), generator=gen)]
    windows = ids[pick[:, None] + torch.arange(seq_len - 1)]  # (n_batches * batch, seq_len - 1)
    bos = torch.ones(len(pick), 1, dtype=torch.long)
    return torch.cat([bos, windows], 1).view(n_batches, batch, seq_len)


class QuoteTask(NamedTuple):
    """Task prompts ready to run: the padded ``batch`` and, per prompt, the right and wrong quote token ids."""

    batch: Any
    right: Tensor
    wrong: Tensor


def quote_task(model: Any, prompts: list[QuotePrompt]) -> QuoteTask:
    """Tokenize ``prompts`` for ``model`` (left padded, so the answer is predicted at the last position)."""
    if not prompts:
        raise ValueError("quote_task needs at least one prompt")
    batch = model.tokenize([p.text for p in prompts], chat=False)
    right = torch.tensor([model.token_id(p.answer) for p in prompts])
    wrong = torch.tensor([model.token_id(p.wrong) for p in prompts])
    return QuoteTask(batch, right, wrong)


def quote_loss(logits: Tensor, task: QuoteTask) -> tuple[Tensor, Tensor]:
    """(binary cross-entropy between the two quotes, accuracy) from full logits (batch, seq, vocab) or last-position logits."""
    last = logits[:, -1] if logits.dim() == 3 else logits
    pair = torch.stack([last.gather(1, task.right[:, None])[:, 0], last.gather(1, task.wrong[:, None])[:, 0]], 1)
    bce = -pair.float().log_softmax(1)[:, 0].mean()
    acc = (pair[:, 0] > pair[:, 1]).float().mean()
    return bce, acc
