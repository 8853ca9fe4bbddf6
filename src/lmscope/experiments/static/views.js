// lmscope views: draw the explorer's JSON documents (lens grids, attention, heatmaps, circuits,
// SAE latents, results). Used by the explorer and inlined into notebooks; no library, no URL.
// Every string from data goes through textContent, never innerHTML.
(function (global) {
  "use strict";
  if (global.lmscopeViews) return;

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "style") e.style.cssText = v;
      else e.setAttribute(k, v);
    }
    for (const c of children || []) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  const fmt = (v, d = 3) => (v === null || v === undefined ? "-" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(d)) : String(v));
  const show = (t) => JSON.stringify(t).slice(1, -1);  // tokens with visible spaces and newlines escaped

  // one floating tooltip for every view: cells carry their text in data-tip
  let tip = null;
  function tooltip() {
    if (!tip) {
      tip = el("div", { id: "lmscope-tip", class: "lmscope-tip", role: "tooltip" });
      document.body.append(tip);
      document.addEventListener("mouseover", (ev) => {
        const t = ev.target.closest && ev.target.closest("[data-tip]");
        if (!t) { tip.style.display = "none"; return; }
        tip.textContent = t.dataset.tip;
        tip.style.display = "block";
        const r = t.getBoundingClientRect();
        tip.style.left = Math.min(window.innerWidth - 320, r.left + window.scrollX) + "px";
        tip.style.top = (r.bottom + window.scrollY + 4) + "px";
      });
    }
    return tip;
  }

  // colour scales: 0..1 to white..blue (or white..red for negatives when signed)
  function colour(v, max, signed) {
    if (v === null || v === undefined || Number.isNaN(v)) return "#eee";
    const x = Math.max(-1, Math.min(1, max > 0 ? v / max : 0));
    const a = Math.abs(x);
    if (signed && x < 0) return `rgb(255,${Math.round(255 * (1 - a))},${Math.round(255 * (1 - a))})`;
    return `rgb(${Math.round(255 * (1 - a))},${Math.round(255 * (1 - 0.6 * a))},255)`;
  }

  // a labelled heatmap as a table: rows x cols, hover gives the value
  function heatmap(root, spec) {
    tooltip();
    const vals = spec.values.flat().filter((v) => v !== null && !Number.isNaN(v));
    const max = spec.max !== undefined ? spec.max : Math.max(1e-12, ...vals.map(Math.abs));
    const signed = vals.some((v) => v < 0);
    const head = el("tr", {}, [el("th", { text: spec.corner || "" }), ...spec.cols.map((c) => el("th", { class: "col", text: show(c) }))]);
    const body = spec.rows.map((r, i) => el("tr", {}, [el("th", { text: String(r) }), ...spec.cols.map((c, j) => {
      const v = spec.values[i][j];
      return el("td", { class: "cell", style: `background:${colour(v, max, signed)}`, "data-row": i, "data-col": j, "data-value": v,
        "data-tip": `${spec.rowName || "row"} ${r} · ${spec.colName || "col"} ${show(c)} · ${spec.label || "value"} ${fmt(v, 4)}`,
        text: spec.text ? spec.text(i, j) : "" });
    })]));
    const t = el("table", { class: "heatmap " + (spec.className || "") }, [head, ...body]);
    root.append(t);
    return t;
  }

  // ---- lens: layers x positions, top-1 token per cell ---------------------------------------
  function lens(root, doc, mode) {
    tooltip();
    const colourBy = doc.target && mode !== "top1" ? "target" : "top1";
    const wrap = el("div", { class: "lens-view" });
    wrap.append(el("p", { class: "meta", text: `${doc.lens} lens · ${doc.model} · ${doc.tokens.length} tokens · ${doc.layers.length} layers` +
      (doc.target ? ` · target ${show(doc.target)} (colour: ${colourBy === "target" ? "target probability" : "top-1 probability"})` : " · colour: top-1 probability") }));
    const head = el("tr", {}, [el("th", { text: "layer" }), ...doc.tokens.map((t, j) => el("th", { class: "col", "data-pos": j, text: show(t) }))]);
    const rows = doc.layers.map((name, i) => el("tr", { "data-layer": name }, [el("th", { text: name }), ...doc.tokens.map((tok, j) => {
      const top = doc.top[i][j], p = doc.p[i][j][0];
      const rank = doc.rank ? doc.rank[i][j] : null, tp = doc.target_p ? doc.target_p[i][j] : null;
      const shade = colourBy === "target" && tp !== null ? tp : p;
      const tipText = `${name} · position ${j} ${show(tok)} · top-1 ${show(top[0])} p=${fmt(p, 4)} · top-${top.length}: ${top.map(show).join(" | ")}` +
        ` · entropy ${fmt(doc.entropy[i][j])} · KL(final||lens) ${fmt(doc.kl[i][j])}` + (doc.target ? ` · target ${show(doc.target)} rank ${rank} p=${fmt(tp, 4)}` : "");
      return el("td", { class: "cell lens-cell", style: `background:${colour(shade, 1, false)}`, "data-layer": i, "data-pos": j,
        "data-top": top[0], "data-p": p, "data-rank": rank, "data-target-p": tp, "data-tip": tipText, text: show(top[0]) });
    })]));
    const fin = el("tr", { class: "final" }, [el("th", { text: "output" }), ...doc.final.map((t) => el("td", { class: "cell", text: show(t) }))]);
    wrap.append(el("div", { class: "scroll" }, [el("table", { class: "heatmap lens" }, [head, ...rows, fin])]));
    root.append(wrap);
    return wrap;
  }

  // ---- attention: thumbnails of every head, one head large with hover -----------------------
  function attention(root, doc, head, onHead) {
    tooltip();
    head = head || 0;
    const wrap = el("div", { class: "attention-view" });
    const thumbs = el("div", { class: "thumbs" });
    const n = doc.tokens.length;
    doc.pattern.forEach((pat, h) => {
      const c = el("canvas", { width: n, height: n, class: "thumb" + (h === head ? " selected" : ""), "data-head": h, title: `head ${h}`,
        onclick: () => (onHead ? onHead(h) : null) });
      const ctx = c.getContext("2d"), img = ctx.createImageData(n, n);
      for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
        const v = pat[q][k], o = 4 * (q * n + k);
        img.data[o] = 255 * (1 - v); img.data[o + 1] = 255 * (1 - 0.6 * v); img.data[o + 2] = 255; img.data[o + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      thumbs.append(el("figure", {}, [c, el("figcaption", { text: `H${h}` })]));
    });
    wrap.append(el("p", { class: "meta", text: `layer ${doc.layer} · ${doc.heads} heads · rows: query, columns: key (click a head)` }), thumbs);
    const big = el("div", { class: "scroll" });
    heatmap(big, { rows: doc.tokens.map(show), cols: doc.tokens, values: doc.pattern[head], max: 1, label: "attention",
      rowName: "query", colName: "key", corner: `L${doc.layer} H${head}`, className: "attn" });
    wrap.append(big);
    root.append(wrap);
    return wrap;
  }

  // ---- Patchscopes ---------------------------------------------------------------------------
  function patchscope(root, doc) {
    const t = el("table", { class: "plain patchscope" }, [el("tr", {}, ["source layer", "first token", "p", "continuation"].map((h) => el("th", { text: h })))]);
    for (const r of doc.rows) t.append(el("tr", { "data-layer": r.source_layer }, [el("td", { text: String(r.source_layer) }),
      el("td", { text: show(r.first_token) }), el("td", { text: fmt(r.first_token_prob) }), el("td", { class: "cont", text: r.continuation })]));
    root.append(el("p", { class: "meta", text: `target prompt ${show(doc.target_prompt)} · the model's own next token ${show(doc.model_next_token)}` }), t);
    return t;
  }

  // ---- SAE ------------------------------------------------------------------------------------
  function shadeTokens(tokens, values, peak) {
    const max = Math.max(1e-12, ...values);
    return el("div", { class: "ctx" }, tokens.map((t, i) => el("span", { class: "tok" + (i === peak ? " peak" : ""),
      style: `background:rgba(255,140,0,${Math.max(0, values[i]) / max})`, "data-tip": `${show(t)}: ${fmt(values[i], 4)}`, text: t })));
  }

  function bars(root, hist) {
    const w = 360, h = 90, n = hist.counts.length;
    const max = Math.max(1, ...hist.counts);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h + 18); svg.setAttribute("class", "histogram");
    hist.counts.forEach((c, i) => {
      const r = document.createElementNS(ns, "rect"), bh = (h * c) / max;
      r.setAttribute("x", (i * w) / n); r.setAttribute("y", h - bh); r.setAttribute("width", w / n - 1); r.setAttribute("height", bh);
      r.setAttribute("fill", "#f80");
      r.setAttribute("data-tip", `${fmt(hist.edges[i])}..${fmt(hist.edges[i + 1])}: ${c} tokens`);
      svg.append(r);
    });
    const lab = document.createElementNS(ns, "text");
    lab.setAttribute("x", 0); lab.setAttribute("y", h + 14); lab.setAttribute("font-size", 11);
    lab.textContent = n ? `0 … ${fmt(hist.edges[n])} (${hist.zeros} tokens at zero not shown)` : "never fires on these tokens";
    svg.append(lab);
    root.append(svg);
  }

  function saeLatent(root, doc, onLatent) {
    tooltip();
    const wrap = el("div", { class: "latent", "data-latent": doc.latent });
    wrap.append(el("h3", { text: `Latent ${doc.latent}` }),
      el("p", { class: "meta", text: `${doc.hook} · density ${fmt(100 * doc.density)}% of ${doc.tokens_seen} held-out tokens · max ${fmt(doc.max)}` }));
    wrap.append(el("h4", { text: "Activation histogram (non-zero)" }));
    bars(wrap, doc.histogram);
    const peak = Math.max(1e-12, ...doc.promoted.concat(doc.suppressed).map(([, v]) => Math.abs(v)));
    const list = (title, items, colour) => el("div", { class: "effects" }, [el("h4", { text: title }),
      el("table", { class: "bars" }, items.map(([t, v]) => el("tr", { "data-tip": `${show(t)}: logit effect ${fmt(v, 4)}` }, [
        el("td", { class: "pill", text: show(t) }),
        el("td", {}, [el("div", { class: "bar", style: `width:${Math.round((140 * Math.abs(v)) / peak)}px;background:${colour}` })]),
        el("td", { text: fmt(v, 3) })])))]);
    wrap.append(el("div", { class: "pair" }, [list("Promoted tokens (logit effect)", doc.promoted, "#3a3"),
      list("Suppressed tokens", doc.suppressed, "#c44")]));
    wrap.append(el("h4", { text: "Nearest latents (decoder cosine)" }), el("p", {}, doc.neighbours.map((n) =>
      el("a", { href: "#", class: "pill neighbour", "data-latent": n.latent, onclick: (e) => { e.preventDefault(); if (onLatent) onLatent(n.latent); },
        text: `${n.latent} (${fmt(n.cosine, 2)})` }))));
    wrap.append(el("h4", { text: "Top activating contexts" }));
    if (!doc.contexts.length) wrap.append(el("p", { text: "none: it never fires on these tokens" }));
    for (const c of doc.contexts) wrap.append(shadeTokens(c.tokens, c.values, c.peak));
    root.append(wrap);
    return wrap;
  }

  function saeFires(root, doc, onLatent) {
    tooltip();
    const wrap = el("div", { class: "fires" });
    wrap.append(el("p", { class: "meta", text: `${doc.hook} · hover a token for its top latents, click one to open it` }));
    const line = el("div", { class: "ctx" });
    doc.tokens.forEach((t, i) => {
      const f = doc.fires[i];
      const tok = el("span", { class: "tok", "data-pos": i, "data-tip": `${show(t)} · L0 ${doc.l0[i]} · ` + (f.map((x) => `${x.latent}: ${fmt(x.act)}`).join(", ") || "no latent"),
        text: t });
      line.append(tok);
    });
    wrap.append(line);
    const t = el("table", { class: "plain" }, [el("tr", {}, ["token", "top latents"].map((h) => el("th", { text: h })))]);
    doc.tokens.forEach((tk, i) => t.append(el("tr", {}, [el("td", { text: show(tk) }), el("td", {}, doc.fires[i].map((x) =>
      el("a", { href: "#", class: "pill fire", "data-latent": x.latent, onclick: (e) => { e.preventDefault(); if (onLatent) onLatent(x.latent); },
        text: `${x.latent} (${fmt(x.act)})` })))])));
    wrap.append(t);
    root.append(wrap);
    return wrap;
  }

  // ---- circuits as a graph ---------------------------------------------------------------------
  function circuit(root, c) {
    tooltip();
    const ns = "http://www.w3.org/2000/svg";
    const L = c.n_layers, H = c.n_heads, W = Math.max(420, 40 * (H + 2)), rowH = 26, Ht = rowH * (2 * L + 2) + 20;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", Ht); svg.setAttribute("class", "circuit");
    const x0 = 60, dx = (W - x0 - 20) / (H + 1);
    const y = (row) => Ht - 20 - row * rowH;  // row 0: embed; 2l+1: attention of layer l; 2l+2: MLP of layer l
    function pos(name) {
      let m;
      if (name === "embed") return [x0 + (dx * H) / 2, y(0)];
      if (name === "logits") return [x0 + (dx * H) / 2, y(2 * L + 1)];
      if ((m = /^a(\d+)\.h(\d+)$/.exec(name))) return [x0 + dx * (+m[2] + 0.5), y(2 * +m[1] + 1)];
      if ((m = /^mlp(\d+)$/.exec(name))) return [x0 + dx * (H + 0.5), y(2 * +m[1] + 2)];
      if ((m = /^attn(\d+)\.in$/.exec(name))) return [x0 - 30, y(2 * +m[1] + 1) + 8];
      if ((m = /^mlp(\d+)\.in$/.exec(name))) return [x0 + dx * (H + 0.5) - 24, y(2 * +m[1] + 2) + 8];
      return [10, 10];
    }
    for (let l = 0; l < L; l++) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", 2); t.setAttribute("y", y(2 * l + 1) + 4); t.setAttribute("font-size", 10); t.textContent = `L${l}`;
      svg.append(t);
    }
    const scores = c.edges_list.map((e) => Math.abs(e.score || 0));
    const smax = Math.max(1e-12, ...scores);
    for (const e of c.edges_list) {
      const [a, b] = [pos(e.from), pos(e.to)], line = document.createElementNS(ns, "line");
      line.setAttribute("x1", a[0]); line.setAttribute("y1", a[1]); line.setAttribute("x2", b[0]); line.setAttribute("y2", b[1]);
      line.setAttribute("stroke", "#4a7"); line.setAttribute("stroke-width", 0.5 + (2.5 * Math.abs(e.score || 0)) / smax);
      line.setAttribute("class", "edge"); line.setAttribute("data-tip", `${e.from} → ${e.to} · score ${fmt(e.score, 4)}`);
      svg.append(line);
    }
    const names = new Set(["embed", "logits", ...c.nodes, ...c.edges_list.map((e) => e.to)]);
    for (const n of names) {
      const [cx, cy] = pos(n), dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", cx); dot.setAttribute("cy", cy); dot.setAttribute("r", /\.in$/.test(n) ? 3 : 7);
      dot.setAttribute("fill", n.startsWith("a") && !n.startsWith("attn") ? "#d44" : n.startsWith("mlp") && !/\.in$/.test(n) ? "#3a3" : "#888");
      dot.setAttribute("class", "node"); dot.setAttribute("data-node", n); dot.setAttribute("data-tip", n);
      svg.append(dot);
      if (!/\.in$/.test(n)) {
        const lab = document.createElementNS(ns, "text");
        lab.setAttribute("x", cx + 8); lab.setAttribute("y", cy - 6); lab.setAttribute("font-size", 9); lab.textContent = n;
        svg.append(lab);
      }
    }
    root.append(el("p", { class: "meta", text: `${c.nodes.length} nodes, ${c.edges} edges of ${c.edges_total} (heads red, MLPs green, readers grey; hover for scores)` }), svg);
    return svg;
  }

  // ---- a result document ------------------------------------------------------------------------
  function kv(obj) {
    const t = el("table", { class: "plain kv" });
    for (const [k, v] of Object.entries(obj || {})) {
      if (v === null || v === "" || typeof v === "object") continue;
      t.append(el("tr", {}, [el("th", { text: k }), el("td", { "data-key": k, text: fmt(v, 4) })]));
    }
    return t;
  }

  function result(root, doc) {
    tooltip();
    const wrap = el("div", { class: "result-view" });
    wrap.append(el("h2", { text: doc.title || doc.command || "result" }));
    wrap.append(el("p", { class: "meta", text: `command: lmscope ${doc.command || "?"} · identity ${(doc.identity && doc.identity.digest) || "-"}` +
      (doc.verdict ? ` · verdict: ${doc.verdict}` : "") }));
    wrap.append(el("h3", { text: "Summary" }), kv(doc.summary));
    const data = doc.data || {};
    if (data.sweeps) for (const [name, g] of Object.entries(data.sweeps)) {
      wrap.append(el("h3", { text: `Patching: ${name}` }));
      const box = el("div", { class: "scroll", "data-sweep": name });
      heatmap(box, { rows: g.rows, cols: g.cols, values: g.values, label: "normalised effect", rowName: "", colName: "", className: "patch" });
      wrap.append(box);
    }
    if (data.circuit && data.circuit.edges_list) {
      wrap.append(el("h3", { text: "Circuit" }));
      circuit(wrap, data.circuit);
    }
    if (data.view === "lens" || (data.top && data.layers)) lens(wrap, data);
    if (doc.figure_urls && doc.figure_urls.length) {
      wrap.append(el("h3", { text: "Figures" }));
      for (const src of doc.figure_urls) wrap.append(el("img", { src, class: "figure", alt: src.split("/").pop() }));
    }
    if (doc.provenance) wrap.append(el("h3", { text: "Provenance" }), kv(doc.provenance));
    root.append(wrap);
    return wrap;
  }

  const VIEWS = { lens, attention, patchscope, sae_latent: saeLatent, sae_fires: saeFires, result };
  function render(root, doc, ...rest) {
    const f = VIEWS[doc.view];
    if (!f) { root.append(el("p", { text: `no view for ${doc.view}` })); return null; }
    return f(root, doc, ...rest);
  }

  global.lmscopeViews = { el, fmt, show, heatmap, lens, attention, patchscope, saeLatent, saeFires, circuit, result, render, tooltip };
})(window);
