"""The ``lmscope`` command, generated from the experiment configs (:mod:`lmscope.cli.commands`).

Every command is one experiment class: its fields become its flags (one vocabulary: ``--layers``
takes ``6 10 14``, ``6,10,14`` or ``0-29:3`` everywhere; ``--strength`` is every strength;
``--prompts`` every prompt file), and every command takes the same ``--model``, ``--tiny``,
``--device``, ``--dtype`` and ``--out``. Defaults are the library's, because they are the same
dataclass defaults. Exit codes: 0 done, 1 the work failed, 2 bad usage or input files (found
before any model loads), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Any

from lmscope.core.version import LMSCOPE_VERSION

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPT = 1, 2, 130

COMMON: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--model", {"help": "bundled name, HF folder, .gguf file or hub id (default: the bundled SmolLM2-135M)"}),
    ("--tiny", {"metavar": "FAMILY", "help": "a tiny random model of this family instead (llama, gpt2, ...: mechanics only)"}),
    ("--device", {"help": "torch device for the model (cpu, cuda, cuda:1, mps; default cpu)"}),
    ("--dtype", {"help": "model dtype (float32 default, bfloat16, float16)"}),
    ("--device-map", {"metavar": "MAP", "help": "split the model's layers with accelerate: 'auto', or a JSON file "
                      "{module: device or 'disk'} (see docs/scale.md)"}),
    ("--offload-folder", {"metavar": "DIR", "help": "where --device-map puts the weights it sends to 'disk'"}),
    ("--out", {"help": "output folder: result.json, figures, index.html (default outputs/<command>)"}),
    ("--quiet", {"action": "store_true", "help": "no progress on stderr"}),
)  # fmt: skip


def set_threads(n: int | None = None) -> None:
    """Pin torch's CPU threads (oversubscribed threads are much slower on small machines)."""
    import torch

    threads = n or int(os.environ.get("LMSCOPE_THREADS", "0")) or min(4, os.cpu_count() or 1)
    if n is None:  # torchrun's processes on one machine share its cores
        threads = max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)


def _to_value(f: dataclasses.Field, hint: Any, raw: Any) -> Any:
    """A parsed CLI value as the field's type (lists to tuples, the layer grammar, comma lists)."""
    from lmscope.experiments.spec import parse_layers, unwrap

    if raw is None or not isinstance(raw, list):
        return raw
    if f.name.endswith("layers"):
        return parse_layers(raw)
    item = (typing.get_args(unwrap(hint)[0]) or (str,))[0]
    parts = [p for r in raw for p in (r.split(",") if f.metadata.get("split", True) else [r]) if p != ""]
    try:
        return tuple(item(p) for p in parts)
    except ValueError:
        raise ValueError(f"--{f.name.replace('_', '-')}: {raw} are not all {item.__name__} values") from None


def build_parser() -> argparse.ArgumentParser:
    """The parser, from the shipped command table (no experiment module or torch is imported)."""
    from lmscope.cli.manifest import argparse_options, read

    parser = argparse.ArgumentParser(prog="lmscope", description="Look inside language models and change what you find.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"lmscope {LMSCOPE_VERSION}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default $LMSCOPE_THREADS)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for entry in read():
        *group, name = entry["command"].split()
        where = sub
        if group:
            if group[0] not in groups:
                g = sub.add_parser(group[0], help=f"{group[0]} commands")
                groups[group[0]] = g.add_subparsers(dest=f"{group[0]}_command", metavar="ACTION", required=True)
            where = groups[group[0]]
        p = where.add_parser(name, help=entry["about"], description=entry["description"], allow_abbrev=False,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        for names, opts in [*entry["options"], *([[n], o] for n, o in COMMON)]:
            p.add_argument(*names, **argparse_options(opts))
        p.set_defaults(experiment=entry["class"])
    _serve_parser(sub)
    return parser


def _serve_parser(sub: Any) -> None:
    """``lmscope serve``: a server, not an experiment, so its flags are written here."""
    p = sub.add_parser("serve", help="a local web explorer for result folders and a live model",
                       description="Browse every result under RESULTS_DIR and explore the model live (lens, attention, "
                       "steering, Patchscopes, SAE features) at http://127.0.0.1:PORT. See docs/serve.md.",
                       allow_abbrev=False)  # fmt: skip
    p.add_argument("results", nargs="?", default="outputs", metavar="RESULTS_DIR",
                   help="the folder whose results it shows and whose files it may read (default outputs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--no-model", action="store_true", help="results only: load no model (live panels are off)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a model job may run before it is cancelled")
    p.add_argument("--max-waiting", type=int, default=4, help="jobs that may wait behind the running one")
    for name, opts in COMMON:
        if name not in ("--out", "--quiet"):
            p.add_argument(name, **opts)
    p.set_defaults(serve=True)


def _serve(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not results.is_dir():
        raise ValueError(f"{results} is not a folder; give the folder your results are in (lmscope commands write --out)")
    if not 0 <= args.port < 65536 or args.timeout <= 0 or args.max_waiting < 0:
        raise ValueError("--port must be 0..65535, --timeout > 0 and --max-waiting >= 0")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("lmscope serve needs its web server: pip install 'lmscope[serve]'") from None
    from lmscope.experiments import open_model
    from lmscope.serve import serve

    set_threads(args.threads)
    model = None
    if not args.no_model:
        model = open_model(args.model, tiny=args.tiny, device=args.device, dtype=args.dtype, device_map=args.device_map,
                           offload_folder=args.offload_folder)  # fmt: skip
    serve(str(results), model, host=args.host, port=args.port, timeout=args.timeout, max_waiting=args.max_waiting)
    return 0


def experiment_from_args(args: argparse.Namespace) -> Any:
    import importlib

    module, name = args.experiment.split(":")  # the class the table names, imported once the arguments parse
    cls = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name)
        values[f.name] = f.default if raw is None and f.default is not dataclasses.MISSING else _to_value(f, hints[f.name], raw)
    exp = cls(**values)
    exp.validate()
    return exp


def _check_out(out: Path) -> None:
    """The output folder can be made and written (checked before any model loads)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it will hold result.json, figures and index.html)")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not a writable folder")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "serve", False):
        try:
            return _serve(args)
        except KeyboardInterrupt:
            return 0
        except (ValueError, OSError) as exc:
            print(f"lmscope: usage error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if not getattr(args, "experiment", None):
        parser.print_help()
        return EXIT_USAGE
    set_threads(args.threads)
    from lmscope.experiments import open_model, run

    started = False
    try:
        exp = experiment_from_args(args)
        given = [f for f in ("model", "tiny", "device", "dtype", "device_map", "offload_folder") if getattr(args, f)]
        if not exp.uses_model and given:
            raise ValueError(f"{exp.command} loads no model (it reads files or builds its own CPU models); "
                             f"drop {', '.join('--' + f.replace('_', '-') for f in given)}")  # fmt: skip
        out = Path(args.out or Path("outputs") / exp.command.replace(" ", "-"))
        _check_out(out)
        model = open_model(args.model, tiny=args.tiny, device=args.device, dtype=args.dtype, device_map=args.device_map,
                           offload_folder=args.offload_folder) if exp.uses_model else None  # fmt: skip
        started = True  # settings, input files and the model are fine: from here on a failure is the work's (exit 1)
        result = run(exp, model=model, out=out, quiet=args.quiet)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return EXIT_INTERRUPT
    except (ValueError, TypeError, OSError, IndexError, KeyError, NotImplementedError) as exc:
        print(f"lmscope: {'error' if started else 'usage error'}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME if started else EXIT_USAGE
    from lmscope.experiments.distributed import is_main

    if is_main():  # under torchrun the other ranks computed the same result and wrote nothing
        for line in result.lines:
            print(line)
        print(f"wrote {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
