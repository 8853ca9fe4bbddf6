"""The tour: every seed finding, reproduced on the bundled model, in one report.

Each recipe is one or more ``lmscope`` commands with settings small enough for a laptop CPU;
the tour runs them in order into ``OUT/<recipe>/`` and writes ``OUT/index.html`` linking every
page with the finding it checks. A finished recipe leaves ``OUT/<recipe>/tour-done.json`` and
is skipped next time, so an interrupted tour resumes where it stopped. ``--tiny FAMILY`` runs
the recipes that have a tiny mode on a tiny random model (mechanics only: those numbers mean
nothing).

    lmscope tour --out outputs/tour                 # all recipes on the bundled model
    lmscope tour --only lens,icl-rank1 --out outputs/tour
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Steps = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Recipe:
    """One seed finding and the commands that measure it."""

    name: str
    finding: str
    """The seed's claim, in one sentence."""
    steps: Steps
    """``lmscope`` argument lists; ``{dir}`` stands for the recipe's output folder."""
    tiny_ok: bool = False
    """Whether every step accepts ``--tiny`` with these settings (a mechanics-only run)."""


def _one(*argv: str) -> Steps:
    return ((*argv, "--out", "{dir}"),)


RECIPES: tuple[Recipe, ...] = (
    Recipe("lens", "Answers appear only in the last layers of the residual stream (logit lens).",
           _one("lens", "--demo")),
    Recipe("patchscope", "A hidden state can describe itself when patched into a description prompt.",
           _one("patchscope", "Albert Einstein", "Tokyo", "--preset", "description", "--layers", "0-24:4",
                "--max-new-tokens", "8")),
    Recipe("multihop", "Two-hop failures can be fixed by backpatching a later layer's state into an earlier one.",
           _one("multihop", "--limit", "24", "--max-failed", "8", "--stride", "8")),
    Recipe("steer-sentiment", "A contrastive (function) vector added during generation steers the behaviour.",
           (("steer", "extract", "--contrast", "sentiment", "--max-per-side", "24", "--out", "{dir}/sentiment.safetensors"),
            ("steer", "sweep", "--vector", "{dir}/sentiment.safetensors", "--behaviour", "sentiment", "--layers", "10",
             "--scales", "2", "4", "--n-prompts", "4", "--max-new-tokens", "16", "--n-capability", "4", "--out", "{dir}"))),
    Recipe("introspection", "Injected concept vectors steer text (Golden Gate); reporting them is much harder.",
           _one("introspect", "--layers", "10", "--strengths", "0.5", "--n-concepts", "3", "--trials", "4", "--read", "word",
                "--golden-gate", "--max-new-tokens", "16")),
    Recipe("icl-vectors", "A few-shot task vector added to a bare query makes the model do the task.",
           _one("icl", "vectors", "--tasks", "antonyms,present_past", "--layers", "12,17,21,27", "--n", "12")),
    Recipe("icl-rank1", "In-context learning equals a rank-1 update of the MLP weights.",
           _one("icl", "rank1", "--tasks", "antonyms", "--queries", "2", "--no-transfer"), tiny_ok=True),
    Recipe("ioi-patching", "IOI: the answer moves from the name positions to the final position in late layers.",
           _one("patch", "--task", "ioi", "--n", "16", "--max-examples", "6", "--variants", "resid,layers")),
    Recipe("ioi-circuit", "A pruned circuit is necessary and sufficient under mean ablation; random ones are not.",
           _one("circuit", "--task", "ioi", "--n", "16", "--max-examples", "6", "--method", "acdc-nodes",
                "--threshold", "0.05", "--n-random", "3")),
    Recipe("lre", "Relation decoding is often linear: subject state x W + b gives the object (a model of the model).",
           _one("lre", "--relations", "word_plural,country_capital", "--layers", "8", "--n-prompts", "2")),
    Recipe("neurons-ablate", "Ablating a single neuron rarely changes the output.",
           _one("neurons", "ablate", "--layer", "19", "--neurons", "1467", "--windows", "4", "--controls", "2")),
)  # fmt: skip


def run_tour(out: str | Path, *, tiny: str | None = None, only: Sequence[str] | None = None) -> Path:
    """Run the recipes (all, or those named in ``only``) and write ``out/index.html``."""
    from lmscope.cli.main import main

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    known = {r.name for r in RECIPES}
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; recipes: {sorted(known)}")
    rows: list[tuple[Recipe, str, float]] = []
    for recipe in RECIPES:
        if only and recipe.name not in only:
            continue
        folder = root / recipe.name
        marker = folder / "tour-done.json"
        if tiny and not recipe.tiny_ok:
            rows.append((recipe, "skipped (no tiny mode)", 0.0))
            continue
        if marker.exists():
            rows.append((recipe, "done earlier", float(json.loads(marker.read_text())["seconds"])))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        start, status = time.perf_counter(), "ok"
        for step in recipe.steps:
            argv = [a.replace("{dir}", str(folder)) for a in step] + (["--tiny", tiny] if tiny else [])
            print(f"[tour] {recipe.name}: lmscope {' '.join(argv)}", flush=True)
            code = main(argv)
            if code != 0:
                status = f"exit {code} in step {step[:2]}"
                break
        seconds = time.perf_counter() - start
        if status == "ok":
            marker.write_text(json.dumps({"seconds": seconds}))
        rows.append((recipe, status, seconds))
    _write_index(root, rows)
    return root


def _write_index(root: Path, rows: list[tuple[Recipe, str, float]]) -> None:
    body = "".join(
        f"<tr><td><a href='{r.name}/index.html'>{r.name}</a></td><td>{html.escape(r.finding)}</td>"
        f"<td>{html.escape(status)}</td><td>{secs:.0f} s</td></tr>"
        for r, status, secs in rows
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>lmscope tour</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse}</style><h1>lmscope tour</h1>"
        "<table><tr><th>recipe</th><th>seed finding</th><th>status</th><th>time</th></tr>" + body + "</table>"
    )
    (root / "index.html").write_text(page, encoding="utf-8")
