"""Running an experiment value: the model it asks for, progress, identity, provenance, its folder.

    >>> from lmscope.experiments import run          # doctest: +SKIP
    >>> result = run(LogitLens(prompt=("The capital of Poland is",)), model=model, out="outputs/lens")

:func:`run` validates the settings (before any model loads), computes the :class:`Identity`
(settings, weight hash, input data, version), hands the experiment a :class:`Context` (its output
folder and the one progress mechanism), stamps the returned :class:`Result` with the config,
identity and provenance and writes its folder.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lmscope.core.version import LMSCOPE_VERSION
from lmscope.experiments.identity import Identity, identity
from lmscope.experiments.report import Result

if TYPE_CHECKING:
    from lmscope.core.model import Model
    from lmscope.experiments.spec import Experiment

T = TypeVar("T")


@dataclass
class Context:
    """What an experiment gets besides its settings and the model: where to write, how to report progress."""

    out: Path | None = None
    """The experiment's folder (None: keep results in memory only)."""
    quiet: bool = False
    started: float = field(default_factory=time.perf_counter)

    def folder(self) -> Path:
        """The output folder, created; experiments that must write files (checkpoints, artifacts) need one."""
        if self.out is None:
            raise ValueError("this experiment writes files (checkpoints or artifacts): give it an output folder (--out)")
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out

    def log(self, message: str) -> None:
        """A progress line on stderr (timestamped from the start of the run)."""
        if not self.quiet:
            print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def progress(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """Iterate ``items`` with a progress bar on stderr (the one mechanism every long loop uses)."""
        from lmscope.experiments.progress import bar

        with bar(total, desc, items=items, enabled=not self.quiet) as b:
            yield from b

    def callback(self, desc: str) -> Any:
        """A ``progress=`` callable for library functions that report (step, total) or messages."""

        def report(*args: Any) -> None:
            self.log(f"{desc}: " + " ".join(str(a) for a in args))

        return report


def open_model(model: str | None = None, *, tiny: str | None = None, device: str | None = None,
               dtype: str | None = None, device_map: str | None = None, offload_folder: str | None = None) -> Model:  # fmt: skip
    """The model a command asks for: ``tiny`` (a tiny random model of that family) or ``model`` (default: bundled).

    ``device_map``: ``"auto"`` or a JSON file mapping module names to devices (``"disk"`` with ``offload_folder``).
    """
    import json

    import torch

    from lmscope.core.loading import load
    from lmscope.core.tiny import load_tiny

    dt = None
    if dtype is not None:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise ValueError(f"--dtype {dtype!r} is not a floating torch dtype; use float32, bfloat16 or float16")
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps): {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA device")
    if tiny is not None and model is not None:
        raise ValueError("give --model or --tiny, not both")
    placement: Any = device_map
    if device_map is not None:
        if tiny is not None:
            raise ValueError("--device-map splits a model loaded from files; a --tiny model is built in memory")
        if device is not None:
            raise ValueError("give --device or --device-map, not both (a device map places every module itself)")
        if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            path = Path(device_map)
            if not path.is_file():
                raise ValueError(f"--device-map {device_map!r}: not 'auto' and no such JSON file")
            try:
                placement = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"--device-map {path} is not valid JSON ({exc})") from None
            if not isinstance(placement, dict) or not all(isinstance(k, str) for k in placement):
                raise ValueError(f"--device-map {path} must hold one JSON object {{module name: device}}")
    elif offload_folder is not None:
        raise ValueError("--offload-folder only applies with --device-map")
    if tiny:
        m = load_tiny(tiny, dtype=dt or torch.float32)
    else:
        m = load(model, dtype=dt or torch.float32, device_map=placement, offload_folder=offload_folder)
    if device is not None:
        m.hf.to(device)
        if m.load_spec is not None:
            m.load_spec = {**m.load_spec, "device": device}
    return m


def provenance(model: Model | None, seconds: float) -> dict[str, Any]:
    import torch
    import transformers

    from lmscope.experiments.distributed import world

    return {
        "model_id": None if model is None else model.model_id,
        "weight_hash": None if model is None else model.weight_hash,
        "device": None if model is None else str(model.device),
        "dtype": None if model is None else str(model.dtype).removeprefix("torch."),
        "lmscope": LMSCOPE_VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(), "ranks": world()[1],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 2),
    }  # fmt: skip


def experiment_identity(experiment: Experiment, model: Model | None) -> Identity:
    """What ``experiment`` on ``model`` is computed from (its settings, the weights if it uses them, its input data)."""
    return identity(experiment.config(), model=model if experiment.uses_model else None, data=experiment.inputs())


def run(experiment: Experiment, *, model: Model | None = None, out: str | Path | None = None,
        quiet: bool = False) -> Result:  # fmt: skip
    """Run ``experiment`` on ``model`` and write its folder to ``out`` (if given); returns its :class:`Result`."""
    from lmscope.experiments import distributed

    experiment.validate()
    if experiment.uses_model and model is None:
        raise ValueError(f"{experiment.command} needs a model: pass model= (lmscope.load() or lmscope.load_tiny())")
    if distributed.launched():
        if not experiment.data_parallel:
            raise ValueError(f"{experiment.command} does not run data-parallel: start it without torchrun "
                             "(under torchrun every process would do the whole work and write the same folder)")  # fmt: skip
        distributed.init_from_env(model.device if model is not None else "cpu")
    ctx = Context(out=None if out is None else Path(out), quiet=quiet or not distributed.is_main())
    ident = experiment_identity(experiment, model)
    result = experiment.run(model if experiment.uses_model else None, ctx)
    result.command = experiment.command
    result.config = experiment.config()
    result.identity = ident.to_dict()
    result.provenance = provenance(model if experiment.uses_model else None, time.perf_counter() - ctx.started)
    if out is not None and distributed.is_main():
        result.write(out)
    return result
