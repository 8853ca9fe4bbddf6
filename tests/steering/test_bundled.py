"""Real-effect checks on the bundled SmolLM2-135M-Instruct (few prompts, slow machine friendly)."""

from __future__ import annotations

import pytest
import torch

from lmscope.core.metrics import at_last
from lmscope.steering import builtin, extract, steer


@pytest.mark.bundled
def test_sentiment_is_readable_mid_network_and_steers(smollm) -> None:
    """Held-out separability of sentiment is high in middle layers and near chance in the first one
    (measured: ~0.5 at layer 0, ~0.99 at layers 15-20 with 60 per side); adding the vector raises
    P(" great") - P(" terrible") after a neutral review opening."""
    m = smollm
    res = extract(m, builtin("sentiment"), layers=[0, 16], max_per_side=16)
    assert res.separability[16] >= 0.85
    assert res.separability[16] > res.separability[0]
    batch = m.tokenize(["The film I watched yesterday was", "My stay at the hotel was"])
    good, bad = m.token_id(" great"), m.token_id(" terrible")

    def margin() -> float:
        lg = at_last(m(batch), batch.attention_mask).log_softmax(-1)
        return float((lg[:, good] - lg[:, bad]).mean())

    base = margin()
    with steer(m, res.vector, layers=[16], scale=4.0):
        up = margin()
    with steer(m, res.vector, layers=[16], scale=-4.0):
        down = margin()
    assert down < base < up
    assert torch.isfinite(torch.tensor([base, up, down])).all()
