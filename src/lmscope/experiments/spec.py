"""An experiment is a value: a frozen dataclass of settings plus ``run(model, ctx) -> Result``.

    @dataclass(frozen=True)
    class Sweep(Experiment):
        command = "steer sweep"
        about = "layers x strengths: behaviour and capability cost per cell"
        vector: str = param(help="a .safetensors steering vector", required=True)
        layers: Layers = param(None, help="layers to steer")
        strength: Strengths = (2.0, 4.0)

        def run(self, model, ctx):
            ...
            return Result("Steering sweep", summary={...})

Its fields are its whole configuration: the CLI is generated from them (one flag per field, one
vocabulary: ``--layers`` always takes the same layer-list grammar, ``--strength`` is every strength,
``--prompts`` every prompt file), ``lmscope reproduce`` lists experiments as values, and the identity that keys
results and resumes is the hash of the fields with the model's weights and the input data
(:meth:`Experiment.inputs`). :meth:`Experiment.check` runs before any model loads, so a bad input
file is a usage error that costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from lmscope.core.model import Model
    from lmscope.experiments.report import Result
    from lmscope.experiments.runner import Context

Layers = tuple[int, ...] | None
"""A list of layers; None means the experiment's default (usually every layer)."""
Strengths = tuple[float, ...]
"""Strengths (scales, values, multipliers) of an intervention; negative values subtract."""


def param(default: Any = MISSING, help: str = "", *, choices: Sequence[Any] | None = None, positional: bool = False,
          split: bool = True, required: bool = False, metavar: str | None = None) -> Any:  # fmt: skip
    """A field of an experiment with what the CLI needs to offer it.

    ``split``: a list of strings also splits on commas (``--tasks a,b``); set False for free text.
    ``required``: the field has no useful default (the CLI requires it; the dataclass default is a
    placeholder :meth:`Experiment.validate` refuses).
    """
    meta = {"help": help, "choices": choices, "positional": positional, "split": split, "required": required,
            "metavar": metavar}  # fmt: skip
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (or None) as the default of a list-valued experiment field")
    return field(default=None if default is MISSING else default, metadata=meta)


@dataclass(frozen=True)
class Experiment:
    """Base of every experiment config. Subclasses set :attr:`command` and :attr:`about` and define :meth:`run`."""

    command: ClassVar[str] = ""
    """How the CLI names it (``"steer sweep"``)."""
    about: ClassVar[str] = ""
    """One line for ``--help``."""
    uses_model: ClassVar[bool] = True
    """False for experiments that build their own models or only convert files."""
    data_parallel: ClassVar[bool] = False
    """True for experiments that run under ``torchrun`` (every rank runs it; rank 0 writes the folder)."""

    def check(self) -> None:
        """Refuse bad settings and input files before the model loads (raise ValueError/FileNotFoundError)."""

    def inputs(self) -> Any:
        """The input data this run reads (fingerprinted into the identity); None if the config says it all."""
        return None

    def needs(self) -> dict[str, str]:
        """Optional packages these settings need: import name -> what to install (checked before any work)."""
        return {}

    def run(self, model: Model | None, ctx: Context) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no run()")

    # -- generic ----------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Types and required fields, then :meth:`check`."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("required") and value in (None, "", ()):
                raise ValueError(f"{self.command}: {flag(f.name)} is required ({f.metadata.get('help') or f.name})")
            _check_type(self.command, f.name, value, hints[f.name])
            choices = f.metadata.get("choices")
            if choices and value is not None:
                for v in value if isinstance(value, tuple) else (value,):
                    if v not in choices:
                        raise ValueError(f"{self.command}: {flag(f.name)} {v!r} is not one of {list(choices)}")
        missing = {name: pip for name, pip in self.needs().items() if importlib.util.find_spec(name) is None}
        if missing:
            raise ValueError(f"{self.command} with these settings needs {', '.join(missing)}, which is not installed: "
                             f"pip install {' '.join(sorted(set(missing.values())))!s}")  # fmt: skip
        self.check()

    def config(self) -> dict[str, Any]:
        """The settings as JSON-able data (what ``result.json`` records and the identity hashes)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Experiment:
        return dataclasses.replace(self, **changes)


def flag(name: str) -> str:
    """The CLI flag of a field (``max_new_tokens`` -> ``--max-new-tokens``)."""
    return "--" + name.replace("_", "-")


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType):
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def _check_type(command: str, name: str, value: Any, hint: Any) -> None:
    """A field's value against its annotation (int/float/str/bool, tuples of them, Optional)."""
    hint, optional = unwrap(hint)
    if value is None and optional:
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    where = f"{command}: {flag(name)}"
    if origin is tuple:
        if not isinstance(value, tuple):
            raise TypeError(f"{where} must be a tuple of {args[0].__name__}, got {value!r}")
        for v in value:
            _check_type(command, name, v, args[0])
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} must be finite, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be an integer, got {value!r}")
    elif hint in (str, bool) and not isinstance(value, hint):
        raise TypeError(f"{where} must be a {hint.__name__}, got {value!r}")


def parse_layers(spec: str | Sequence[str]) -> tuple[int, ...] | None:
    """The one layer-list grammar: ``"6 10 14"``, ``"6,10,14"``, ``"0-29:3"``, ``"13-19"``, ``"all"`` (None).

    >>> parse_layers("0-9:3,12")
    (0, 3, 6, 9, 12)
    >>> parse_layers(["6", "10"])
    (6, 10)
    """
    text = spec if isinstance(spec, str) else ",".join(spec)
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    if parts == ["all"]:
        return None
    out: list[int] = []
    for part in parts:
        rng, _, step = part.partition(":")
        lo, dash, hi = rng.partition("-")
        try:
            if dash:
                if int(step or 1) < 1 or int(hi) < int(lo):
                    raise ValueError
                out.extend(range(int(lo), int(hi) + 1, int(step or 1)))
            elif step:
                raise ValueError
            else:
                out.append(int(rng))
        except ValueError:
            raise ValueError(f"bad layer list {text!r} at {part!r}: use 6,10,14 or 0-29:3 (from-to:step) or all") from None
    if not out:
        raise ValueError("empty layer list: give layers like 6,10,14 or 0-29:3, or all")
    return tuple(out)


def resolve_layers(layers: Sequence[int] | None, n_layers: int, default: Sequence[int] | None = None) -> list[int]:
    """``layers`` checked against the model (None: ``default``, else every layer)."""
    chosen = list(range(n_layers)) if layers is None and default is None else list(layers if layers is not None else default)
    bad = [x for x in chosen if not 0 <= x < n_layers]
    if bad:
        shown = bad if len(bad) <= 6 else [*bad[:3], "...", *bad[-2:]]
        raise ValueError(f"--layers {', '.join(map(str, shown))} out of range: the model has layers 0-{n_layers - 1}")
    return chosen
