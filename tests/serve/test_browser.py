"""The explorer in a real browser: headless Chromium (Debian's, installed by the Makefile) driven by
Playwright, on the bundled model. Each panel is opened, typed into and checked against the Python
API; any console error fails the test; a screenshot of each panel is written for people to look at
(``outputs/serve-screenshots/`` or ``$LMSCOPE_SCREENSHOTS``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import lmscope as ls
from lmscope.core.sites import Site
from lmscope.experiments import run
from lmscope.lenses import TunedLens, logit_lens, preset_sweep
from lmscope.lenses.experiments import LogitLens
from lmscope.saes import SAE, SAEConfig
from lmscope.saes.interop import save_saelens
from lmscope.serve import start
from lmscope.steering import SteeringVector, steer
from lmscope.steering.experiments import SteerExtract

pytestmark = [pytest.mark.bundled, pytest.mark.slow]

SHOTS = Path(os.environ.get("LMSCOPE_SCREENSHOTS", "outputs/serve-screenshots"))
SAE_SITE = "blocks.8.hook_resid_post"


def chromium() -> str:
    path = os.environ.get("LMSCOPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("LMSCOPE_NO_BROWSER"):
        pytest.skip("LMSCOPE_NO_BROWSER is set")
    pytest.fail("no Chromium: `make install` installs Debian's chromium as root (apt-get install chromium); "
                "set LMSCOPE_CHROMIUM to another Chromium, or LMSCOPE_NO_BROWSER=1 to skip the browser tests")


def show(token: str) -> str:
    """What the page prints for a token: JSON.stringify without the quotes."""
    return json.dumps(token, ensure_ascii=False)[1:-1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, smollm: ls.Model) -> Path:
    folder = tmp_path_factory.mktemp("explorer")
    run(LogitLens(prompt=("The capital of France is",), target=" Paris"), model=smollm, out=folder / "lens", quiet=True)
    run(SteerExtract(contrast="sentiment", max_per_side=16), model=smollm, out=folder / "steer-extract", quiet=True)
    g = torch.Generator().manual_seed(0)
    lens = TunedLens.identity(smollm)
    with torch.no_grad():
        for w in lens.weights:
            w.add_(0.02 * torch.randn(w.shape, generator=g))
    lens.save(folder / "tuned" / "lens.safetensors", smollm)
    d = smollm.shape.d_model
    sae = SAE(SAEConfig("topk", d, 1024, k=16, hook_name=SAE_SITE), generator=g)  # untrained: mechanics only
    save_saelens(sae, folder / "sae" / "sae")
    tiny = ls.load_tiny("llama")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"clean": f"the dog {x} the", "corrupt": f"the a {x} the", "answer": " dog",
                                         "wrong": " a"}) + "\n" for x in ("a", "the", "dog")))  # fmt: skip
    from lmscope.circuits.experiments import Circuit, Patch

    run(Patch(pairs=str(pairs), only_correct=False, max_examples=2, variants=("resid", "layers")), model=tiny,
        out=folder / "patch", quiet=True)  # fmt: skip
    run(Circuit(pairs=str(pairs), only_correct=False, max_examples=2, n_random=1), model=tiny, out=folder / "circuit", quiet=True)
    return folder


@pytest.fixture(scope="module")
def page(results: Path, smollm: ls.Model):
    from playwright.sync_api import sync_playwright

    exe = chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    server = start(str(results), smollm, timeout=120)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                                "--disable-background-networking"])  # fmt: skip
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(90_000)
        pg.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        pg.goto(server.url)
        pg.wait_for_selector("body[data-ready='1']")
        yield pg, errors
        browser.close()
    server.stop()
    assert not errors, errors


def tab(pg, name: str) -> None:
    pg.click(f"#tabs a[data-tab='{name}']")
    pg.wait_for_selector(f"#panel-{name}.active")


def test_results_list_and_pages(page, results: Path) -> None:
    pg, errors = page
    tab(pg, "results")
    pg.wait_for_selector("table.results tr[data-path]")
    paths = pg.eval_on_selector_all("table.results tr[data-path]", "rows => rows.map(r => r.dataset.path)")
    assert paths == sorted(["circuit", "lens", "patch", "steer-extract"])
    pg.click("tr[data-path='patch'] a")
    pg.wait_for_selector("[data-sweep='resid'] td.cell")
    doc = json.loads((results / "patch" / "result.json").read_text())
    grid = doc["data"]["sweeps"]["resid"]
    cells = pg.eval_on_selector_all("[data-sweep='resid'] td.cell", "cs => cs.map(c => +c.dataset.value)")
    assert cells == pytest.approx([v for row in grid["values"] for v in row], abs=1e-12)
    pg.hover("[data-sweep='resid'] td.cell >> nth=0")
    assert "normalised effect" in pg.inner_text("#lmscope-tip")
    pg.screenshot(path=str(SHOTS / "results-patch.png"), full_page=True)
    pg.goto(pg.url.split("#")[0] + "#results/circuit")
    pg.wait_for_selector("svg.circuit circle.node")
    edges = json.loads((results / "circuit" / "result.json").read_text())["data"]["circuit"]["edges_list"]
    assert pg.locator("svg.circuit line.edge").count() == len(edges)
    pg.screenshot(path=str(SHOTS / "results-circuit.png"), full_page=True)
    assert not errors


def read_lens(pg) -> list[dict]:
    return pg.eval_on_selector_all("td.lens-cell", """cs => cs.map(c => ({layer: +c.dataset.layer, pos: +c.dataset.pos,
        top: c.dataset.top, p: +c.dataset.p, rank: c.dataset.rank === undefined ? null : +c.dataset.rank,
        text: c.textContent}))""")


@pytest.mark.parametrize("kind", ["logit", "tuned"])
def test_lens_table_equals_the_python_api(page, smollm: ls.Model, results: Path, kind: str) -> None:
    pg, errors = page
    tab(pg, "lens")
    prompt, target = "The Eiffel Tower is in the city of", " Paris"
    pg.fill("#lens-prompt", prompt)
    pg.fill("#lens-target", target)
    pg.select_option("#lens-kind", "" if kind == "logit" else "tuned/lens.safetensors")
    pg.evaluate("document.getElementById('lens-out').replaceChildren()")
    pg.click("#lens-run")
    pg.wait_for_selector("td.lens-cell")
    cells = read_lens(pg)
    if kind == "logit":
        ref = logit_lens(smollm, prompt, target)
    else:
        ref = TunedLens.load(results / "tuned" / "lens.safetensors", smollm).lens(smollm, prompt, target)
    n = int(ref.mask[0].sum())
    assert len(cells) == smollm.shape.n_layers * n
    for c in cells:
        top = ref.decode(int(ref.top_ids[0, c["layer"], c["pos"], 0]))
        assert c["top"] == top and c["text"] == show(top)
        assert c["p"] == pytest.approx(float(ref.top_probs[0, c["layer"], c["pos"], 0]), abs=1e-6)
        assert c["rank"] == int(ref.target_rank[0, c["layer"], c["pos"]])
    pg.hover(f"td.lens-cell[data-layer='{smollm.shape.n_layers - 1}'][data-pos='{n - 1}']")
    assert f"rank {int(ref.target_rank[0, -1, -1])}" in pg.inner_text("#lmscope-tip")
    pg.screenshot(path=str(SHOTS / f"lens-{kind}.png"), full_page=True)
    assert not errors


def test_attention_heads_equal_hf_attention(page, smollm_eager: ls.Model) -> None:
    pg, errors = page
    tab(pg, "attention")
    prompt = "When Mary and John went to the store, John gave a drink to"
    pg.fill("#attn-prompt", prompt)
    pg.fill("#attn-layer", "5")
    pg.click("#attn-run")
    pg.wait_for_selector("canvas.thumb")
    assert pg.locator("canvas.thumb").count() == smollm_eager.shape.n_heads
    pg.click("canvas.thumb[data-head='3']")
    pg.wait_for_selector("canvas.thumb.selected[data-head='3']")
    got = pg.eval_on_selector_all("table.attn td.cell", "cs => cs.map(c => +c.dataset.value)")
    batch = smollm_eager.tokenize(prompt)
    with torch.no_grad():
        out = smollm_eager.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    ref = out.attentions[5][0, 3]
    torch.testing.assert_close(torch.tensor(got), ref.flatten().float(), atol=2e-5, rtol=0)
    pg.hover("table.attn td.cell >> nth=1")
    assert "query" in pg.inner_text("#lmscope-tip")
    pg.screenshot(path=str(SHOTS / "attention.png"), full_page=True)
    assert not errors


def generate(pg, scale: float) -> tuple[str, str]:
    pg.evaluate("document.getElementById('steer-steered').dataset.done = '0'")
    pg.evaluate(f"""(() => {{ const s = document.getElementById('steer-scale'); s.value = '{scale}';
                 s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }})()""")
    pg.wait_for_selector(f"#steer-steered[data-done='1'][data-scale='{scale:g}']")
    return pg.inner_text("#steer-unsteered"), pg.inner_text("#steer-steered")


def test_steering_playground_changes_the_generation(page, smollm: ls.Model, results: Path) -> None:
    pg, errors = page
    tab(pg, "steering")
    pg.select_option("#steer-vector", "steer-extract/vector.safetensors")
    pg.select_option("#steer-layer", "12")
    prompt = "Write one sentence about your day."
    pg.fill("#steer-prompt", prompt)
    pg.fill("#steer-tokens", "16")
    base0, steered0 = generate(pg, 0)
    assert base0.strip() and steered0 == base0
    assert base0 == smollm.generate(prompt, chat=True, max_new_tokens=16).strip()
    base, steered = generate(pg, 8)
    assert base == base0 and steered != base
    vec = SteeringVector.load(results / "steer-extract" / "vector.safetensors")
    with steer(smollm, vec, layers=[12], scale=8.0):
        assert steered == smollm.generate(prompt, chat=True, max_new_tokens=16).strip()
    assert "scale 8" in pg.inner_text("#steer-meta")
    pg.screenshot(path=str(SHOTS / "steering.png"), full_page=True)
    assert not errors


def test_patchscopes_panel(page, smollm: ls.Model) -> None:
    pg, errors = page
    tab(pg, "patchscopes")
    pg.fill("#ps-prompt", "Marie Curie")
    pg.fill("#ps-layers", "3,9,15")
    pg.click("#ps-run")
    pg.wait_for_selector("table.patchscope tr[data-layer]")
    shown = pg.eval_on_selector_all("table.patchscope tr[data-layer] td.cont", "cs => cs.map(c => c.textContent)")
    ref = preset_sweep(smollm, "identity", "Marie Curie", source_layers=[3, 9, 15], max_new_tokens=8)
    assert shown == [r.continuation for r in ref.rows]
    pg.screenshot(path=str(SHOTS / "patchscopes.png"), full_page=True)
    assert not errors


def test_sae_feature_browser(page, smollm: ls.Model, results: Path) -> None:
    pg, errors = page
    tab(pg, "sae")
    pg.select_option("#sae-path", "sae/sae")
    text = "import numpy as np"
    pg.fill("#sae-text", text)
    pg.click("#sae-run")
    pg.wait_for_selector("a.pill.fire")
    first = int(pg.get_attribute("a.pill.fire >> nth=0", "data-latent"))
    from lmscope.saes.interop import load_saelens

    sae = load_saelens(results / "sae" / "sae")
    with ls.capture(smollm, [Site("resid_post", 8)]) as acts:
        smollm(text)
    assert first == int(sae.encode(acts[Site("resid_post", 8)][0, 0].float()).argmax())
    pg.click("a.pill.fire >> nth=0")
    pg.wait_for_selector(f".latent[data-latent='{first}'] svg.histogram")
    assert pg.locator(".latent a.neighbour").count() == 8
    pg.screenshot(path=str(SHOTS / "sae.png"), full_page=True)
    nxt = pg.get_attribute(".latent a.neighbour >> nth=0", "data-latent")
    pg.click(".latent a.neighbour >> nth=0")
    pg.wait_for_selector(f".latent[data-latent='{nxt}']")
    assert not errors


def test_results_render_themselves_in_a_notebook(page, results: Path, smollm: ls.Model) -> None:
    """``_repr_html_`` is the explorer's own view, inline: drawn in the browser with no URL fetched."""
    from lmscope.experiments import Result

    pg, errors = page
    context = pg.context.browser.new_context()
    nb = context.new_page()
    nb.on("console", lambda m: errors.append(f"notebook console {m.type}: {m.text}") if m.type == "error" else None)
    nb.on("pageerror", lambda e: errors.append(f"notebook page error: {e}"))
    requests: list[str] = []
    nb.on("request", lambda r: requests.append(r.url))
    patch = Result.load(results / "patch")._repr_html_()
    lens = logit_lens(smollm, "The capital of France is", " Paris")._repr_html_()
    nb.set_content(f"<!doctype html><meta charset='utf-8'><body>{patch}{lens}</body>")
    nb.wait_for_selector(".result-view [data-sweep='resid'] td.cell")
    assert nb.locator(".result-view img.figure").count() == len(Result.load(results / "patch").figures)
    assert nb.locator("td.lens-cell").count() == smollm.shape.n_layers * 5
    nb.hover("td.lens-cell >> nth=0")
    assert "top-1" in nb.inner_text("#lmscope-tip")
    nb.screenshot(path=str(SHOTS / "notebook.png"), full_page=True)
    assert [u for u in requests if not u.startswith(("data:", "about:"))] == []
    context.close()
    assert not errors


def test_patching_panel_equals_the_patching_engine(page, smollm: ls.Model) -> None:
    from lmscope.circuits.patching import resid_by_layer_pos
    from lmscope.circuits.tasks import TaskPairs

    pg, errors = page
    tab(pg, "patching")
    pg.fill("#patch-stride", "6")
    pg.click("#patch-run")
    pg.wait_for_selector("table.patch.live td.cell")
    got = pg.eval_on_selector_all("table.patch.live td.cell", "cs => cs.map(c => +c.dataset.value)")
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    task = TaskPairs("t", [clean], [corrupt], [[smollm.token_id(" Mary")]], [[smollm.token_id(" John")]])
    ref = resid_by_layer_pos(smollm, task, layers=list(range(0, smollm.shape.n_layers, 6)))
    torch.testing.assert_close(torch.tensor(got), ref.values.flatten().float(), atol=1e-5, rtol=0)
    pg.hover("table.patch.live td.cell >> nth=0")
    assert "restored" in pg.inner_text("#lmscope-tip")
    pg.screenshot(path=str(SHOTS / "patching.png"), full_page=True)
    assert not errors
