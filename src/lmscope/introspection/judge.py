"""A model as the introspection grader: the paper's three questions asked of a chat model, answered Yes or No.

Lindsey (2025) graded answers with a language model rather than keywords. :class:`ModelJudge`
asks a chat model (any model lmscope loads; a stronger one than the model under test is the
point) the paper's criteria for each answer, and reads "Yes" against "No" from its next-token
logits (greedy, no sampling):

1. detection: does the answer say it notices an injected thought?
2. naming: does it say the thought is about the concept (or something very close)?
3. order: does it claim the detection before it first writes the concept word?

identified = 1 and 2 and 3. Questions 2 and 3 are asked only of answers that pass 1 and of
injection trials. Any callable ``judge(answer, names) -> Grade`` can be passed to
:func:`lmscope.introspection.introspection_grid` instead; the keyword :func:`grade` is the default.

    >>> import lmscope as ls
    >>> judge = ModelJudge(ls.load_tiny("llama"))   # a random model: mechanics only
    >>> judge("Yes, I detect a thought about the ocean.", ["ocean"]).detected in (True, False)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmscope.core.model import Model
from lmscope.introspection.protocol import QUESTION, Grade

_ASKED = QUESTION.split("\n\n", 1)[1]
_CONTEXT = 'An AI was asked: "{question}"\n\nIts answer was:\n"""\n{answer}\n"""\n\n'
DETECT = "Does the AI say that it detects or notices an injected thought? Reply with Yes or No only."
NAME = ("Does the AI say the injected thought is about {concept}, or something very closely related to {concept}? "
        "Reply with Yes or No only.")  # fmt: skip
ORDER = ("Does the AI say that it notices an injected thought before it first writes the word {concept}? "
         "Reply with Yes or No only.")  # fmt: skip


class ModelJudge:
    """Grade introspection answers by asking ``model`` the paper's questions (see the module docstring)."""

    def __init__(self, model: Model) -> None:
        if getattr(model.tokenizer, "chat_template", None) is None:
            raise ValueError("the judge must be a chat model (its tokenizer has no chat template)")
        self.model = model
        yes, no = set(self._first_ids(("Yes", " Yes", "yes"))), set(self._first_ids(("No", " No", "no")))
        self.yes, self.no = sorted(yes - no), sorted(no - yes)  # a shared first token (" ") tells nothing
        if not self.yes or not self.no:
            raise ValueError("the judge's tokenizer does not tell Yes from No by the first token")

    def _first_ids(self, words: Sequence[str]) -> list[int]:
        return sorted({self.model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words})

    def ask(self, questions: Sequence[str]) -> list[bool]:
        """Yes (True) or No for each question, from the judge's next-token logits after the chat prompt."""
        batch = self.model.tokenize(list(questions), chat=True)
        with torch.no_grad():
            logits = self.model(batch)
        assert logits is not None
        last = logits[torch.arange(len(questions)), batch.last_index].float().log_softmax(-1)
        yes = torch.logsumexp(last[:, self.yes], -1)
        no = torch.logsumexp(last[:, self.no], -1)
        return (yes > no).tolist()

    def __call__(self, answer: str, names: Sequence[str]) -> Grade:
        context = _CONTEXT.format(question=_ASKED, answer=answer.strip())
        (detected,) = self.ask([context + DETECT])
        concept = names[0] if names else ""
        if not concept or concept == "(none)":
            return Grade(detected, False, False)
        named, before = self.ask([context + NAME.format(concept=concept), context + ORDER.format(concept=concept)])
        return Grade(detected, named, detected and named and before)
