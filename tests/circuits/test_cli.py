"""The circuits and relations commands are registered and validate their options."""

from __future__ import annotations

import pytest

from lmscope.cli.circuits import _variants
from lmscope.cli.main import build_parser


def test_commands_are_registered_with_their_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["patch", "--task", "greater_than", "--out", "x", "--variants", "resid,heads"])
    assert args.task == "greater_than" and args.func.__name__ == "run_patch"
    args = parser.parse_args(["attribute", "--out", "x", "--exact-edges", "8"])
    assert args.exact_edges == 8 and args.func.__name__ == "run_attribute"
    args = parser.parse_args(["circuit", "--out", "x", "--method", "mask-edges", "--ablation", "resample"])
    assert args.method == "mask-edges" and args.func.__name__ == "run_circuit"
    args = parser.parse_args(["lre", "--out", "x", "--layers", "4,8"])
    assert args.layers == "4,8" and args.func.__name__ == "run_lre"
    with pytest.raises(SystemExit):
        parser.parse_args(["circuit", "--out", "x", "--method", "magic"])
    assert _variants("resid, heads") == ["resid", "heads"]
    with pytest.raises(ValueError, match="unknown variant"):
        _variants("resid,nope")
