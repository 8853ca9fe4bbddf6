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


def test_dev_and_test_halves_are_disjoint_and_split_by_concept() -> None:
    from lmscope.introspection import IntrospectionConfig
    from lmscope.introspection.grid import IntrospectionResult, dev_test_rates

    concepts = ["ocean", "bread", "fire", "dog"]
    trials = []
    for cell in ((6, 2.0), (10, 4.0)):
        for i, c in enumerate([*concepts, *concepts, None, None, None, None]):
            # planted: cell (10, 4) identifies only the test concepts (bread, dog); controls: dev ones fire
            hit = c is not None and cell == (10, 4.0) and c in ("bread", "dog")
            trials.append({"layer": cell[0], "strength": cell[1], "concept": c, "detected": hit or (c is None and i % 2 == 0),
                           "identified": hit, "named": hit})  # fmt: skip
    res = IntrospectionResult({}, trials, IntrospectionConfig(), {})
    halves = dev_test_rates(res, concepts)
    for cell in ((6, 2.0), (10, 4.0)):
        dev, test = halves[cell]["dev"], halves[cell]["test"]
        assert dev["n_injected"] == test["n_injected"] == 4 and dev["n_control"] == test["n_control"] == 2
    # dev holds ocean and fire (every other concept): the planted hits are all on test
    assert halves[(10, 4.0)]["dev"]["identification"] == 0 and halves[(10, 4.0)]["test"]["identification"] == 1
    # controls alternate: the 1st and 3rd go to dev (both detected here), the 2nd and 4th to test
    assert halves[(6, 2.0)]["dev"]["false_positive"] == 1 and halves[(6, 2.0)]["test"]["false_positive"] == 0
    one = dev_test_rates(IntrospectionResult({}, [t for t in trials if t["concept"] in (None, "ocean")], IntrospectionConfig(),
                                             {}), ["ocean"])  # fmt: skip
    assert one[(6, 2.0)]["dev"]["n_injected"] == one[(6, 2.0)]["test"]["n_injected"] == 1  # one concept: every other trial
