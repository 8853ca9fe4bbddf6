"""A sweep's best cell is chosen on dev prompts and confirmed on disjoint test prompts beside equal-norm random
vectors: the recipes' splits share no prompt, and ``confirm`` finds a planted effect and no effect at scale 0."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.steering import SteeringVector
from lmscope.steering.recipes import NEUTRAL_PROMPTS, half, recipe
from lmscope.steering.sweep import confirm


@pytest.mark.parametrize("name", ["refusal", "compliance", "refusal_logprob", "sentiment", "truthfulness", "sycophancy",
                                  "mention:ocean"])  # fmt: skip
def test_dev_and_test_prompts_are_disjoint_halves(name: str) -> None:
    dev, test = (recipe(name, n_prompts=100, split=s).data for s in ("dev", "test"))
    key = "prompts" if "prompts" in dev else "positive"
    a, b = [str(x) for x in dev[key]], [str(x) for x in test[key]]
    assert a and b and not set(a) & set(b)
    assert len(a) >= len(b) >= len(a) - 1


def test_half_refuses_an_unknown_split() -> None:
    assert half(list(NEUTRAL_PROMPTS), "dev") + half(list(NEUTRAL_PROMPTS), "test") == list(NEUTRAL_PROMPTS)
    with pytest.raises(ValueError, match="split"):
        recipe("sentiment", split="train")


def _logit_items(token: int, prompts: list[str]):
    def items(m: ls.Model) -> list[float]:
        batch = m.tokenize(prompts)
        logits = m(batch)
        return logits[torch.arange(len(prompts)), batch.last_index, token].tolist()

    return items


def test_confirm_finds_a_planted_direction_and_nothing_at_scale_zero() -> None:
    model = ls.load_tiny("llama")
    token = 7
    prompts = ["the dog", "a dog the", "the the a", "dog a", "a the dog dog", "the a the", "dog", "a a"]
    unembed = model.hf.get_output_embeddings().weight[token].detach()
    vec = SteeringVector({2: unembed / unembed.norm() * 4}, model.shape.d_model, "planted")
    got = confirm(model, vec, _logit_items(token, prompts), layer=2, scale=3.0, n_random=2)
    assert got["verdict"] == "effect" and got["vs_random"]["difference"] > 0
    assert len(got["steered"]) == len(got["random"]) == len(got["baseline"]) == len(prompts)
    zero = confirm(model, vec, _logit_items(token, prompts), layer=2, scale=0.0, n_random=1)
    assert zero["verdict"] == "no effect" and zero["vs_baseline"]["difference"] == 0.0
    assert not ls.active_hooks(model)
    with pytest.raises(ValueError, match="random control"):
        confirm(model, vec, _logit_items(token, prompts), layer=2, scale=1.0, n_random=0)
