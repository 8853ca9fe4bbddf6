"""RELIABILITY D19: golden values, stored with the versions that produced them, checked both ways within a tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

import lmscope as ls

GOLDEN = Path(__file__).parent / "golden" / "bundled_logits.json"


def _observed(model: ls.Model, prompt: str) -> dict[str, float]:
    with ls.capture(model, ["blocks.14.hook_resid_post"]) as acts:
        logits = model(prompt)
    last = logits[0, -1]
    return {"top_token_id": int(last.argmax()), "top_logit": float(last.max()), "logsumexp": float(last.logsumexp(-1)),
            "resid14_norm_last": float(acts["blocks.14.hook_resid_post"][0, -1].norm())}  # fmt: skip


def _mismatches(observed: dict[str, float], golden: dict) -> list[str]:
    bad = []
    for key, expected in golden["values"].items():
        tol = golden["tolerance"].get(key, 0)
        if abs(observed[key] - expected) > tol:  # symmetric: too high and too low both fail
            bad.append(f"{key}: observed {observed[key]}, golden {expected} +- {tol}")
    return bad


def test_bundled_model_matches_its_golden_values(smollm: ls.Model) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert smollm.weight_hash == golden["weight_hash"], "the bundled weights changed; regenerate the golden file"
    now = {"torch": torch.__version__, "transformers": transformers.__version__, "lmscope": ls.__version__}
    bad = _mismatches(_observed(smollm, golden["prompt"]), golden)
    assert bad == [], f"golden values made with {golden['versions']}, running {now}: {bad}"


def test_the_golden_check_has_teeth(smollm: ls.Model) -> None:
    golden = json.loads(GOLDEN.read_text())
    seen = _observed(smollm, golden["prompt"])
    for sign in (+1, -1):
        moved = {**golden, "values": {**golden["values"], "top_logit": golden["values"]["top_logit"] + sign * 2e-3}}
        assert _mismatches(seen, moved) != []
