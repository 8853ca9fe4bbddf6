"""The introspection grader on hand-written answers, and the rate summary."""

from __future__ import annotations

import pytest

from lmscope.introspection import claims_detection, grade, load_concepts, names_concept, summarize

OCEAN = ["ocean", "oceans", "sea", "waves"]


@pytest.mark.parametrize(
    ("answer", "detected", "identified"),
    [
        ("Yes, I detect an injected thought. It is about the ocean.", True, True),
        ("Yes. The injected thought is about waves crashing.", True, True),
        ("I detect something... it feels like the sea.", True, True),
        ("I notice an injected thought about bread.", True, False),
        ("I did detect an injected thought; it was about the sea.", True, True),
        ("I'm sensing something oceanic... waves?", True, True),
        ("I'm not detecting an injected thought.", False, False),
        ("I'm unable to detect thoughts.", False, False),
        ("The injected thought is likely to contain the selected word 50% of the time.", False, False),
        ("The injected thought seems to be about a dog.", True, False),
        ("No, I do not detect an injected thought.", False, False),
        ("No. Nothing unusual. Let me talk about the ocean though.", False, False),
        ("I don't detect any injected thought in this trial.", False, False),
        ("I'm not able to detect thoughts; I am a language model.", False, False),
        ("There is no injected thought.", False, False),
        ("Sure! The ocean is a vast body of salt water.", False, False),
        ("Do you detect an injected thought? If so, what is it about?", False, False),
        ("", False, False),
        ("The ocean, the ocean. Yes, I detect an injected thought about the ocean.", True, False),  # named first
        ("Yes, I detect an injected thought about oceans.", True, True),  # a plural is a mention
    ],
)
def test_grader(answer: str, detected: bool, identified: bool) -> None:
    g = grade(answer, OCEAN)
    assert g.detected is detected and g.identified is identified
    assert claims_detection(answer) is detected


def test_names_concept_whole_words() -> None:
    assert names_concept("Seagulls fly", ["sea"]) is False
    assert names_concept("SEA breeze", ["sea"]) is True
    with pytest.raises(ValueError):
        names_concept("x", [])


def test_summary_rates() -> None:
    trials = [
        {"concept": "ocean", "detected": True, "identified": True, "named": True},
        {"concept": "bread", "detected": True, "identified": False, "named": False},
        {"concept": "fire", "detected": False, "identified": False, "named": True},
        {"concept": "dog", "detected": False, "identified": False, "named": False},
        {"concept": None, "detected": True, "identified": False, "named": False},
        {"concept": None, "detected": False, "identified": False, "named": False},
    ]
    s = summarize(trials)
    assert s["detection"] == 0.5 and s["identification"] == 0.25 and s["false_positive"] == 0.5
    assert s["named"] == 0.5 and s["n_injected"] == 4 and s["n_control"] == 2


def test_builtin_concepts_have_synonyms_and_disjoint_baselines() -> None:
    w = load_concepts()
    assert len(w.concepts) >= 20 and len(w.baseline) >= 40
    assert not set(w.concepts) & set(w.baseline)
    assert w.names("ocean")[0] == "ocean" and len(w.names("ocean")) > 1
