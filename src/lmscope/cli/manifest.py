"""The command table the CLI is built from, kept in ``manifest.json`` so that ``lmscope --help`` and
argument errors import no torch.

The table is generated from the experiment classes (:mod:`lmscope.cli.commands`): each command's
name, help, the class to import once the arguments parse, and its
argparse options. ``tests/cli/test_manifest.py`` fails when the file and the classes disagree;
regenerate it with::

    .venv/bin/python -m lmscope.cli.manifest
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("manifest.json")
_TYPES = {"int": int, "float": float, "str": str}


def build() -> list[dict[str, Any]]:
    """The table, from the experiment classes (imports every family)."""
    from lmscope.cli.commands import COMMANDS

    table = []
    for cls in COMMANDS:
        hints = typing.get_type_hints(cls)
        options = []
        for f in dataclasses.fields(cls):
            names, opts = _field_options(f, hints[f.name])
            if "type" in opts:
                opts["type"] = opts["type"].__name__
            if opts.get("action") is argparse.BooleanOptionalAction:
                opts["action"] = "bool"
            options.append([names, {k: v for k, v in opts.items() if v is not None}])
        table.append({"command": cls.command, "class": f"{cls.__module__}:{cls.__qualname__}", "about": cls.about,
                      "description": (cls.__doc__ or cls.about).strip(), "options": options})  # fmt: skip
    return table


def _field_options(f: dataclasses.Field, hint: Any) -> tuple[list[str], dict[str, Any]]:
    """argparse names and options for one experiment field."""
    from lmscope.experiments.spec import unwrap

    meta = f.metadata
    hint = unwrap(hint)[0]
    origin = typing.get_origin(hint)
    opts: dict[str, Any] = {"help": meta.get("help") or None, "dest": f.name}
    if meta.get("choices") and origin is not tuple:
        opts["choices"] = list(meta["choices"])
    if origin is tuple:
        if meta.get("choices"):  # checked item by item after the comma split (Experiment.validate)
            opts["help"] = f"{opts['help']} (of {', '.join(map(str, meta['choices']))})"
        opts["nargs"] = "+"
        opts["metavar"] = meta.get("metavar") or ("LAYERS" if f.name.endswith("layers") else f.name.upper())
        if f.name.endswith("layers"):
            opts["help"] = (opts["help"] or "layers") + " (6 10 14, 6,10,14, 0-29:3 or all)"
    elif hint is bool:
        opts["action"] = argparse.BooleanOptionalAction
    else:
        opts["type"] = hint
        opts["metavar"] = meta.get("metavar")
    if meta.get("positional"):
        opts.pop("dest")
        opts["nargs"] = "*" if origin is tuple else "?"
        opts.pop("metavar", None)
        return [f.name], opts
    if meta.get("required") and not meta.get("positional"):
        opts["required"] = True
    return ["--" + f.name.replace("_", "-")], opts


def read() -> list[dict[str, Any]]:
    """The table as shipped with the package."""
    return json.loads(resources.files("lmscope.cli").joinpath("manifest.json").read_text())


def argparse_options(opts: dict[str, Any]) -> dict[str, Any]:
    """A table entry's options as argparse keywords."""
    out = dict(opts)
    if "type" in out:
        out["type"] = _TYPES[out["type"]]
    if out.get("action") == "bool":
        out["action"] = argparse.BooleanOptionalAction
    return out


if __name__ == "__main__":
    PATH.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {PATH}")
