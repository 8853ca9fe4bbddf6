"""The explorer's HTTP API against the library's own results (tiny llama; the browser tests use the bundled model)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import lmscope as ls
from lmscope.core.sites import Site
from lmscope.lenses import logit_lens, preset_sweep
from lmscope.saes.interop import load_saelens
from lmscope.serve import start
from lmscope.steering import SteeringVector, steer

PROMPT = "the dog saw the cat"


@pytest.fixture
def server(results: Path, tiny_llama: ls.Model):
    running = start(str(results), tiny_llama, timeout=20)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        yield client, running
    running.stop()


def post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    return client.post(path, json=body)


def test_lens_answers_what_logit_lens_returns(server, tiny_llama: ls.Model) -> None:
    client, _ = server
    target = tiny_llama.tokenizer.decode([7])
    doc = post(client, "/api/lens", {"prompt": PROMPT, "target": None}).json()
    ref = logit_lens(tiny_llama, PROMPT, k=5)
    n = int(ref.mask[0].sum())
    assert doc["layers"] == ref.labels() and len(doc["tokens"]) == n
    for layer in range(tiny_llama.shape.n_layers):
        for pos in range(n):
            assert doc["top"][layer][pos] == [ref.decode(t) for t in ref.top_ids[0, layer, pos].tolist()]
            assert doc["p"][layer][pos] == pytest.approx(ref.top_probs[0, layer, pos].tolist(), abs=1e-6)
    assert doc["rank"] is None
    del target


def test_lens_target_rank_matches(server, tiny_llama: ls.Model) -> None:
    client, _ = server
    target = " dog"
    tiny_llama.token_id(target)  # one token in the tiny vocabulary
    doc = post(client, "/api/lens", {"prompt": PROMPT, "target": target}).json()
    ref = logit_lens(tiny_llama, PROMPT, target, k=5)
    assert doc["rank"] == ref.target_rank[0].tolist()


def test_attention_is_hf_own_attention_weights(server, tiny_llama: ls.Model) -> None:
    client, _ = server
    doc = post(client, "/api/attention", {"prompt": PROMPT, "layer": 1}).json()
    batch = tiny_llama.tokenize(PROMPT)
    with torch.no_grad():
        out = tiny_llama.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    ref = out.attentions[1][0]
    got = torch.tensor(doc["pattern"])
    assert got.shape == ref.shape and doc["heads"] == tiny_llama.shape.n_heads
    torch.testing.assert_close(got, ref.float(), atol=1e-5, rtol=0)
    assert tiny_llama.attn_implementation == "eager"


def test_attention_on_an_sdpa_model_switches_to_eager_and_back(results: Path) -> None:
    model = ls.load_tiny("llama", attn_implementation="sdpa")
    running = start(str(results), model, timeout=20)
    try:
        doc = httpx.post(f"{running.url}/api/attention", json={"prompt": PROMPT, "layer": 0}, timeout=30).json()
        rows = torch.tensor(doc["pattern"]).sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-4, rtol=0)
        assert model.attn_implementation == "sdpa"
    finally:
        running.stop()


def stream(client: httpx.Client, body: dict) -> list[dict]:
    events = []
    with client.stream("POST", "/api/steer", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_steering_streams_the_same_text_as_generate_under_steer(server, tiny_llama: ls.Model, results: Path) -> None:
    client, _ = server
    body = {"prompt": PROMPT, "vector": "steer/vector.safetensors", "layer": 1, "scale": 6.0, "max_new_tokens": 8,
            "chat": False}
    events = stream(client, body)
    done = events[-1]
    assert done["done"] and "error" not in done
    for which in ("unsteered", "steered"):
        assert "".join(e["text"] for e in events if e.get("which") == which) == done[which]
    vec = SteeringVector.load(results / "steer" / "vector.safetensors")
    assert done["unsteered"] == tiny_llama.generate(PROMPT, max_new_tokens=8)
    with steer(tiny_llama, vec, layers=[1], scale=6.0):
        assert done["steered"] == tiny_llama.generate(PROMPT, max_new_tokens=8)
    assert done["steered"] != done["unsteered"]
    assert done["vector_norm"] == pytest.approx(float(vec[1].norm()))
    again = stream(client, {**body, "scale": 0.0})  # the unsteered side comes from the cache; scale 0 changes nothing
    assert again[0].get("cached") and again[-1]["steered"] == again[-1]["unsteered"] == done["unsteered"]
    assert not ls.active_hooks(tiny_llama)


def test_patchscope_answers_what_preset_sweep_returns(server, tiny_llama: ls.Model) -> None:
    client, _ = server
    doc = post(client, "/api/patchscope", {"prompt": PROMPT, "preset": "identity", "layers": [0, 1], "max_new_tokens": 4}).json()
    ref = preset_sweep(tiny_llama, "identity", PROMPT, source_layers=[0, 1], max_new_tokens=4)
    assert doc["rows"] == json.loads(json.dumps(ref.to_dict()))["rows"]


def test_sae_panels_match_the_sae(server, tiny_llama: ls.Model, results: Path) -> None:
    client, _ = server
    sae = load_saelens(results / "sae-train" / "sae")
    doc = post(client, "/api/sae/fires", {"sae": "sae-train/sae", "text": PROMPT}).json()
    site = Site("resid_post", 1)
    with ls.capture(tiny_llama, [site]) as acts:
        tiny_llama(PROMPT)
    z = sae.encode(acts[site][0].float())
    assert doc["l0"] == (z > 0).sum(-1).tolist()
    for pos, fires in enumerate(doc["fires"]):
        top = z[pos].topk(len(fires))
        assert [f["latent"] for f in fires] == top.indices.tolist()
        assert [f["act"] for f in fires] == pytest.approx(top.values.tolist(), abs=1e-5)
    latent = doc["fires"][0][0]["latent"]
    page = post(client, "/api/sae/latent", {"sae": "sae-train/sae", "latent": latent}).json()
    w = torch.nn.functional.normalize(sae.W_dec.float(), dim=-1)
    cos = w @ w[latent]
    cos[latent] = -2
    assert [n["latent"] for n in page["neighbours"]] == cos.topk(8).indices.tolist()
    assert sum(page["histogram"]["counts"]) + page["histogram"]["zeros"] == page["tokens_seen"]
    assert 0 < page["density"] <= 1 and page["contexts"]
    assert max(page["contexts"][0]["values"]) == pytest.approx(page["max"], rel=1e-4)


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/api/lens", {"prompt": ""}, 400, "type a prompt"),
    ("/api/lens", {"prompt": "x " * 400}, 400, "at most"),
    ("/api/lens", {"prompt": PROMPT, "target": " dog cat"}, 400, "one token"),
    ("/api/attention", {"prompt": PROMPT, "layer": 99}, 400, "layer must be"),
    ("/api/attention", {"prompt": PROMPT, "layer": "1"}, 400, "layer must be"),
    ("/api/steer", {"prompt": PROMPT, "vector": "steer/vector.safetensors", "layer": 0, "scale": 1}, 400, "no direction"),
    ("/api/steer", {"prompt": PROMPT, "vector": "steer/vector.safetensors", "layer": 1, "scale": "big"}, 400, "scale"),
    ("/api/steer", {"prompt": PROMPT, "vector": "../../etc/passwd", "layer": 1, "scale": 1}, 403, "outside"),
    ("/api/steer", {"prompt": PROMPT, "vector": "weights.pt", "layer": 1, "scale": 1}, 400, "pickle"),
    ("/api/sae/latent", {"sae": "sae-train/sae", "latent": -1}, 400, "latent must be"),
    ("/api/sae/fires", {"sae": "nowhere", "text": PROMPT}, 400, "lacks cfg.json"),
    ("/api/patchscope", {"prompt": PROMPT, "preset": "nope"}, 400, "preset"),
    ("/api/lens", {"prompt": PROMPT, "tuned": "steer/vector.safetensors"}, 400, "steering_vector"),
])  # fmt: skip
def test_bad_requests_get_a_clear_error(server, results: Path, path: str, body: dict, status: int, words: str) -> None:
    client, _ = server
    (results / "weights.pt").write_bytes(b"\x80\x04not really a pickle")
    r = post(client, path, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert post(client, "/api/lens", {"prompt": PROMPT}).status_code == 200  # the server is still fine


def test_bodies_must_be_small_json_objects(server) -> None:
    client, _ = server
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post("/api/lens", content=b"prompt=x", headers=form).status_code == 400
    assert client.post("/api/lens", content=b"[1]", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/api/lens", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    big = json.dumps({"prompt": "x" * 70_000}).encode()
    r = client.post("/api/lens", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "bytes" in r.json()["error"]


@pytest.mark.parametrize("path", ["/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2f..%2fetc%2fpasswd", "/files//etc/passwd",
                                  "/api/result?path=..", "/api/result?path=/etc", "/api/result?path=patch/../../"])
def test_no_request_reads_outside_the_results_folder(server, path: str) -> None:
    client, _ = server
    r = client.get(path)
    assert r.status_code in (403, 404), r.text
    assert "root:" not in r.text


def test_files_and_results_are_served(server) -> None:
    client, _ = server
    rows = client.get("/api/results").json()
    assert [r["path"] for r in rows] == ["broken", "patch"]
    doc = client.get("/api/result", params={"path": "patch"}).json()
    assert doc["data"]["sweeps"]["resid"]["values"][0] == [0.1, 0.9] and doc["has_page"]
    page = client.get("/files/patch/index.html")
    assert page.status_code == 200 and "sandbox" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/../app.py").status_code == 404


def test_a_foreign_host_header_is_refused(server) -> None:
    client, _ = server
    assert client.get("/api/info", headers={"host": "attacker.example:8765"}).status_code == 403
    assert client.get("/api/info").status_code == 200


def test_no_model_means_results_only(results: Path) -> None:
    running = start(str(results))
    try:
        r = httpx.post(f"{running.url}/api/lens", json={"prompt": "x"})
        assert r.status_code == 400 and "no model" in r.json()["error"]
        assert httpx.get(f"{running.url}/api/info").json()["model"] is None
    finally:
        running.stop()


def test_a_long_job_times_out_and_a_full_queue_is_refused(results: Path, tiny_llama: ls.Model) -> None:
    running = start(str(results), tiny_llama, timeout=1.0, max_waiting=1)
    app_jobs = running.server.config.app.state.jobs
    gate = threading.Event()
    try:
        blocker = app_jobs.submit("blocker", lambda cancel: gate.wait(10))
        while app_jobs.status()["running"] != "blocker":
            time.sleep(0.01)
        with httpx.Client(base_url=running.url, timeout=30) as client:
            results_box: list[httpx.Response] = []
            waiter = threading.Thread(target=lambda: results_box.append(post(client, "/api/lens", {"prompt": PROMPT})))
            waiter.start()
            while not app_jobs.status()["waiting"]:
                time.sleep(0.01)
            r = post(client, "/api/lens", {"prompt": PROMPT})
            assert r.status_code == 503 and "busy" in r.json()["error"]
            waiter.join()
            assert results_box[0].status_code == 504 and "limit" in results_box[0].json()["error"]
            assert client.get("/api/queue").json()["running"] == "blocker"
            gate.set()
            blocker.future.result(5)
            while app_jobs.status()["waiting"]:
                time.sleep(0.01)
            assert app_jobs.status()["cancelled"] == 1  # the timed-out lens never ran
            assert post(client, "/api/lens", {"prompt": PROMPT}).status_code == 200
    finally:
        gate.set()
        running.stop()


def test_a_client_leaving_mid_stream_stops_the_job_and_leaves_no_hook(server, tiny_llama: ls.Model) -> None:
    client, running = server
    jobs = running.server.config.app.state.jobs
    body = {"prompt": PROMPT, "vector": "steer/vector.safetensors", "layer": 1, "scale": 3.0, "max_new_tokens": 64,
            "chat": False}
    with client.stream("POST", "/api/steer", json=body) as r:
        for line in r.iter_lines():
            if '"steered"' in line:
                break  # leave while the steered side is being generated
    deadline = time.monotonic() + 20
    while jobs.status()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert jobs.status()["running"] is None
    assert not ls.active_hooks(tiny_llama)
    ref = logit_lens(tiny_llama, PROMPT)
    doc = post(client, "/api/lens", {"prompt": PROMPT}).json()  # unsteered again
    assert doc["p"][-1][-1] == pytest.approx(ref.top_probs[0, -1, -1].tolist(), abs=1e-6)


def test_concurrent_clients_get_the_answers_they_would_get_alone(server, tiny_llama: ls.Model) -> None:
    client, running = server
    prompts = ["the dog saw", "a cat and a dog", "the the the", "dog"]
    alone = {p: post(client, "/api/lens", {"prompt": p}).json()["p"] for p in prompts}
    got: dict[str, list] = {}

    def ask(p: str) -> None:
        with httpx.Client(base_url=running.url, timeout=60) as c:
            got[p] = c.post("/api/lens", json={"prompt": p}).json()["p"]

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    steer_thread = threading.Thread(target=stream, args=(client, {"prompt": PROMPT, "vector": "steer/vector.safetensors",
                                                                  "layer": 1, "scale": 9.0, "max_new_tokens": 16}))  # fmt: skip
    steer_thread.start()
    for t in threads:
        t.start()
    for t in [*threads, steer_thread]:
        t.join()
    for p in prompts:  # a steering job running alongside never leaks into a lens request
        assert torch.tensor(got[p]) == pytest.approx(torch.tensor(alone[p]), abs=1e-6)


def test_patching_answers_what_the_patching_engine_returns(server, tiny_llama: ls.Model) -> None:
    from lmscope.circuits.patching import resid_by_layer_pos
    from lmscope.circuits.tasks import TaskPairs

    client, _ = server
    body = {"clean": "the dog saw the", "corrupt": "the a saw the", "answer": " dog", "wrong": " a", "stride": 1}
    doc = post(client, "/api/patch", body).json()
    task = TaskPairs("t", [body["clean"]], [body["corrupt"]], [[tiny_llama.token_id(" dog")]], [[tiny_llama.token_id(" a")]])
    ref = resid_by_layer_pos(tiny_llama, task)
    assert doc["rows"] == [f"L{r}" for r in ref.rows] and doc["cols"] == ref.cols
    torch.testing.assert_close(torch.tensor(doc["values"]), ref.values.float(), atol=1e-6, rtol=0)
    bad = post(client, "/api/patch", {**body, "corrupt": "the a saw the the"})
    assert bad.status_code == 400 and "same length" in bad.json()["error"]
