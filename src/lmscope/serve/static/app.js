// The explorer page: tabs, requests to the local server, and the views from views.js.
(function () {
  "use strict";
  const V = window.lmscopeViews, el = V.el, $ = (id) => document.getElementById(id);
  let info = null;

  function error(msg) { $("error").textContent = msg || ""; }
  async function call(path, body) {
    error("");
    const r = await fetch(path, body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const doc = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(doc.error || `HTTP ${r.status}`);
    return doc;
  }
  async function busy(button, out, work) {
    button.disabled = true; if (out) out.classList.add("busy");
    try { await work(); } catch (e) { error(e.message); } finally { button.disabled = false; if (out) out.classList.remove("busy"); }
  }
  const clear = (node) => { node.replaceChildren(); return node; };

  // ---- tabs ------------------------------------------------------------------------------------
  function route() {
    const [tab, ...rest] = (location.hash.slice(1) || "results").split("/");
    for (const s of document.querySelectorAll(".panel")) s.classList.toggle("active", s.id === `panel-${tab}`);
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === tab);
    if (tab === "results") rest.length ? openResult(decodeURIComponent(rest.join("/"))) : listResults();
  }
  window.addEventListener("hashchange", route);

  // ---- queue -------------------------------------------------------------------------------------
  async function poll() {
    try {
      const q = await (await fetch("/api/queue")).json();
      $("queue").textContent = `queue: ${q.running ? `running ${q.running} (${q.running_s}s)` : "idle"}` +
        (q.waiting.length ? `, ${q.waiting.length} waiting` : "") + ` · ${q.done} done`;
    } catch (e) { $("queue").textContent = "queue: server unreachable"; }
  }

  // ---- results -----------------------------------------------------------------------------------
  async function listResults() {
    const out = clear($("results-list")); clear($("result-page"));
    const rows = await call("/api/results").catch((e) => { error(e.message); return []; });
    if (!rows.length) { out.append(el("p", { text: "no results under this folder yet: run an lmscope command with --out inside it" })); return; }
    const t = el("table", { class: "results" }, [el("tr", {}, ["result", "command", "title", "model", "identity", "verdict", "key numbers"].map((h) => el("th", { text: h })))]);
    for (const r of rows) {
      const nums = Object.entries(r.summary || {}).map(([k, v]) => `${k}: ${V.fmt(v)}`).join("; ");
      t.append(el("tr", { "data-path": r.path }, [el("td", {}, [el("a", { href: `#results/${encodeURIComponent(r.path)}`, text: r.path })]),
        el("td", { text: r.command || "" }), el("td", { text: r.error || r.title || "" }), el("td", { text: (r.provenance && r.provenance.model_id) || "" }),
        el("td", { text: (r.identity || "").slice(0, 16) }),
        el("td", { text: r.verdict || "" }), el("td", { text: nums })]));
    }
    out.append(t);
  }
  async function openResult(path) {
    clear($("results-list"));
    const page = clear($("result-page"));
    try {
      const doc = await call(`/api/result?path=${encodeURIComponent(path)}`);
      doc.figure_urls = (doc.figure_files || []).map((f) => `/files/${f.split("/").map(encodeURIComponent).join("/")}`);
      page.append(el("p", {}, [el("a", { href: "#results", text: "← all results" }), " · ",
        doc.has_page ? el("a", { href: `/files/${doc.path.split("/").map(encodeURIComponent).join("/")}/index.html`, target: "_blank", text: "the experiment's own page" }) : ""]));
      V.result(page, doc);
    } catch (e) { error(e.message); }
  }

  // ---- lens --------------------------------------------------------------------------------------
  $("lens-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = $("lens-out");
    busy($("lens-run"), out, async () => {
      const doc = await call("/api/lens", { prompt: $("lens-prompt").value, target: $("lens-target").value || null, tuned: $("lens-kind").value || null });
      lensDoc = doc;
      V.lens(clear(out), doc, $("lens-colour").value);
    });
  });
  let lensDoc = null;
  $("lens-colour").addEventListener("change", () => { if (lensDoc) V.lens(clear($("lens-out")), lensDoc, $("lens-colour").value); });

  // ---- attention ---------------------------------------------------------------------------------
  let attnDoc = null;
  function drawAttention(head) { V.attention(clear($("attn-out")), attnDoc, head, drawAttention); }
  $("attn-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("attn-run"), $("attn-out"), async () => {
      attnDoc = await call("/api/attention", { prompt: $("attn-prompt").value, layer: +$("attn-layer").value });
      drawAttention(0);
    });
  });

  // ---- steering (streamed) -------------------------------------------------------------------------
  let vectors = [];
  function fillLayers() {
    const v = vectors.find((x) => x.path === $("steer-vector").value);
    const sel = clear($("steer-layer"));
    for (const l of (v && v.layers) || []) sel.append(el("option", { value: l, text: String(l) }));
    if (v && v.layers && v.layers.length) sel.value = String(v.layers[Math.floor(v.layers.length / 2)]);
  }
  $("steer-vector").addEventListener("change", fillLayers);
  $("steer-scale").addEventListener("input", () => { $("steer-scale-out").textContent = $("steer-scale").value; });
  $("steer-scale").addEventListener("change", () => { if ($("steer-prompt").value) $("steer-form").requestSubmit(); });
  $("steer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const outs = { unsteered: $("steer-unsteered"), steered: $("steer-steered") };
    busy($("steer-run"), null, async () => {
      outs.steered.textContent = ""; outs.steered.dataset.done = "0"; outs.unsteered.dataset.done = "0";
      const body = { prompt: $("steer-prompt").value, vector: $("steer-vector").value, layer: +$("steer-layer").value,
        scale: +$("steer-scale").value, max_new_tokens: +$("steer-tokens").value, chat: $("steer-chat").checked };
      const r = await fetch("/api/steer", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!r.ok) { const d = await r.json().catch(() => ({})); throw new Error(d.error || `HTTP ${r.status}`); }
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "", started = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const line = buf.slice(0, i); buf = buf.slice(i + 2);
          if (!line.startsWith("data: ")) continue;
          const e = JSON.parse(line.slice(6));
          if (e.error) throw new Error(e.error);
          if (e.which) {
            if (!started[e.which]) { outs[e.which].textContent = ""; started[e.which] = true; }
            outs[e.which].textContent += e.text;
          }
          if (e.done) {
            outs.unsteered.textContent = e.unsteered; outs.steered.textContent = e.steered;
            outs.unsteered.dataset.done = "1"; outs.steered.dataset.done = "1";
            outs.steered.dataset.scale = String(e.scale);
            $("steer-meta").textContent = `layer ${e.layer} · scale ${e.scale} · vector norm ${V.fmt(e.vector_norm)} · added norm ${V.fmt(e.added_norm)}`;
          }
        }
      }
    });
  });

  // ---- Patchscopes -------------------------------------------------------------------------------
  $("ps-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("ps-run"), $("ps-out"), async () => {
      const raw = $("ps-layers").value.trim();
      const layers = raw ? raw.split(/[ ,]+/).map(Number) : null;
      const doc = await call("/api/patchscope", { prompt: $("ps-prompt").value, preset: $("ps-preset").value, layers });
      V.patchscope(clear($("ps-out")), doc);
    });
  });

  // ---- activation patching -------------------------------------------------------------------------
  $("patch-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("patch-run"), $("patch-out"), async () => {
      const doc = await call("/api/patch", { clean: $("patch-clean").value, corrupt: $("patch-corrupt").value,
        answer: $("patch-answer").value, wrong: $("patch-wrong").value, stride: +$("patch-stride").value });
      const out = clear($("patch-out"));
      out.append(el("p", { class: "meta", text: `logit difference: clean ${V.fmt(doc.clean_metric)}, corrupt ${V.fmt(doc.corrupt_metric)} · ${V.fmt(doc.seconds)} s` }));
      V.heatmap(out, { rows: doc.rows, cols: doc.cols, values: doc.values, label: "restored", rowName: "layer", colName: "position", className: "patch live" });
    });
  });

  // ---- SAE features ------------------------------------------------------------------------------
  async function openLatent(latent) {
    $("sae-latent").value = latent;
    await busy($("sae-open"), $("sae-page"), async () => {
      const doc = await call("/api/sae/latent", { sae: $("sae-path").value, latent: +latent });
      V.saeLatent(clear($("sae-page")), doc, openLatent);
    });
  }
  $("sae-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("sae-run"), $("sae-fires"), async () => {
      const doc = await call("/api/sae/fires", { sae: $("sae-path").value, text: $("sae-text").value });
      V.saeFires(clear($("sae-fires")), doc, openLatent);
    });
  });
  $("sae-open").addEventListener("click", () => openLatent(+$("sae-latent").value));

  // ---- start ---------------------------------------------------------------------------------------
  async function start() {
    info = await call("/api/info");
    $("model-info").textContent = info.model ? `${info.model.model} · ${info.model.n_layers} layers · ${info.model.device}` : "no model loaded (results only)";
    $("attn-layer").max = info.model ? info.model.n_layers - 1 : 0;
    const arts = await call("/api/artifacts");
    vectors = arts.steering_vector;
    for (const v of vectors) $("steer-vector").append(el("option", { value: v.path, text: v.path }));
    fillLayers();
    for (const l of arts.tuned_lens) $("lens-kind").append(el("option", { value: l.path, text: `tuned lens: ${l.path}` }));
    for (const s of arts.sae) $("sae-path").append(el("option", { value: s.path, text: `${s.path} (${s.hook}, ${s.d_sae})` }));
    document.body.dataset.ready = "1";
    route();
    poll(); setInterval(poll, 1000);
  }
  start().catch((e) => error(e.message));
})();
