/* mechflow feature explorer (hand-written, MIT as mechflow; no external scripts, no network).
   Data arrive as script files calling MF.index / MF.places / MF.chunk, so the site also works from file://. */
(function () {
  "use strict";
  var MF = window.MF = window.MF || {};
  MF.chunks = {};
  var waiting = {};
  var PAGE = 100;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) { if (k === "class") e.className = attrs[k]; else e.setAttribute(k, attrs[k]); }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  MF.el = el;
  function fmt(v, d) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "\u2014";
    if (typeof v !== "number") return String(v);
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return v.toFixed(d === undefined ? 3 : d);
  }
  MF.fmt = fmt;
  function loadScript(src, onerror) {
    var s = el("script", { src: src });
    s.onerror = onerror || null;
    document.head.appendChild(s);
  }

  // ---------------------------------------------------------------- data entry points
  MF.index = function (data) { MF.indexData = data; if (MF.onIndex) MF.onIndex(data); };
  MF.places = function (data) { MF.placesData = data; };
  MF.chunk = function (n, data) {
    MF.chunks[n] = data;
    (waiting[n] || []).forEach(function (cb) { cb(data); });
    delete waiting[n];
  };
  MF.feature = function (f, cb, fail) {
    var n = Math.floor(f / MF.indexData.meta.chunk_size);
    if (MF.chunks[n]) { cb(MF.chunks[n].features[String(f)]); return; }
    var first = !waiting[n];
    (waiting[n] = waiting[n] || []).push(function (d) { cb(d.features[String(f)]); });
    if (first) loadScript("data/chunks/c" + String(n).padStart(5, "0") + ".js", fail);
  };

  // ---------------------------------------------------------------- colour scales
  function lerp(a, b, t) { return Math.round(a + (b - a) * t); }
  var SEQ = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  var DIV = [[5, 113, 176], [146, 197, 222], [247, 247, 247], [244, 165, 130], [202, 0, 32]];
  function ramp(stops, t) {
    t = Math.max(0, Math.min(1, t));
    var x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), u = x - i;
    var a = stops[i], b = stops[i + 1];
    return "rgb(" + lerp(a[0], b[0], u) + "," + lerp(a[1], b[1], u) + "," + lerp(a[2], b[2], u) + ")";
  }
  MF.tokenColor = function (v, vmax) {
    if (!(vmax > 0) || !(v > 0)) return "transparent";
    var t = Math.min(1, v / vmax);
    return "rgba(230, 120, 20," + (0.12 + 0.78 * t).toFixed(3) + ")";
  };
  // basemap layers, drawn under the places: colour, width, dash
  var BASEMAP_STYLE = { coastline: ["#5b6b80", 1.0, []], border: ["#8a6d9e", 0.9, [5, 3]], admin1: ["#b3bcc8", 0.7, [2, 3]] };
  var LISA = { 1: ["HH", "#d7191c"], 2: ["LH", "#abd9e9"], 3: ["LL", "#2c7bb6"], 4: ["HL", "#fdae61"] };
  MF.LISA = LISA;

  // ---------------------------------------------------------------- interactive map (canvas)
  // region: {name, crs, extent:[x0,x1,y0,y1], basemap:[[x,y,x,y,...], ...]}; points: [{x, y, label, value, lisa}]
  MF.drawMap = function (holder, region, points, opts) {
    opts = opts || {};
    var W = opts.width || 420, H = opts.height || 340, dpr = window.devicePixelRatio || 1;
    var box = el("div", { class: "map" });
    box.appendChild(el("div", { class: "title" }, region.name + (region.crs ? " (" + region.crs + ")" : "")));
    var canvas = el("canvas", { "data-region": region.name });
    canvas.width = W * dpr; canvas.height = H * dpr; canvas.style.width = W + "px"; canvas.style.height = H + "px";
    var tip = el("div", { class: "tooltip" });
    box.appendChild(canvas); box.appendChild(tip); holder.appendChild(box);
    var ctx = canvas.getContext("2d");
    var ex = region.extent, pad = 0.06;
    var sx = (ex[1] - ex[0]) || 1, sy = (ex[3] - ex[2]) || 1;
    var base = Math.min(W / (sx * (1 + 2 * pad)), H / (sy * (1 + 2 * pad)));
    var view = { k: base, cx: (ex[0] + ex[1]) / 2, cy: (ex[2] + ex[3]) / 2 };
    var vals = points.map(function (p) { return p.value; }).filter(function (v) { return isFinite(v); });
    var lo = Math.min.apply(null, vals.concat([0])), hi = Math.max.apply(null, vals.concat([0]));
    var signed = lo < 0 && hi > 0, amax = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    function colour(v) {
      if (!isFinite(v)) return "#cccccc";
      return signed ? ramp(DIV, 0.5 + v / (2 * amax)) : ramp(SEQ, hi > lo ? (v - lo) / (hi - lo) : 0);
    }
    function px(x, y) { return [W / 2 + (x - view.cx) * view.k, H / 2 - (y - view.cy) * view.k]; }
    var order = points.map(function (_, i) { return i; }).sort(function (a, b) { return Math.abs(points[a].value) - Math.abs(points[b].value); });
    function draw() {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      var segs = 0, counts = {};
      (region.basemap || []).forEach(function (layer) {
        var st = BASEMAP_STYLE[layer.layer] || BASEMAP_STYLE.coastline;
        ctx.strokeStyle = st[0]; ctx.lineWidth = st[1]; ctx.setLineDash(st[2]);
        layer.lines.forEach(function (line) {
          ctx.beginPath();
          for (var i = 0; i + 1 < line.length; i += 2) {
            var q = px(line[i], line[i + 1]);
            if (i === 0) ctx.moveTo(q[0], q[1]); else ctx.lineTo(q[0], q[1]);
          }
          ctx.stroke(); segs += Math.max(0, line.length / 2 - 1);
        });
        counts[layer.layer] = (counts[layer.layer] || 0) + layer.lines.length;
      });
      ctx.setLineDash([]);
      var r = Math.max(2.2, Math.min(6, 3 * Math.sqrt(view.k / base)));
      order.forEach(function (i) {
        var p = points[i], q = px(p.x, p.y);
        ctx.beginPath(); ctx.arc(q[0], q[1], r, 0, 2 * Math.PI);
        ctx.fillStyle = colour(p.value); ctx.fill();
        ctx.lineWidth = p.lisa ? 2 : 0.5;
        ctx.strokeStyle = p.lisa ? LISA[p.lisa][1] : "rgba(60,60,60,.55)"; ctx.stroke();
      });
      // scale bar: a round number of km
      var m = 80 / view.k, pow = Math.pow(10, Math.floor(Math.log10(m))), step = [1, 2, 5, 10].map(function (s) { return s * pow; }).filter(function (s) { return s <= m; }).pop() || pow;
      ctx.strokeStyle = "#333"; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(10, H - 12); ctx.lineTo(10 + step * view.k, H - 12); ctx.stroke();
      ctx.fillStyle = "#333"; ctx.font = "11px sans-serif"; ctx.fillText((step >= 1000 ? step / 1000 + " km" : step + " m"), 12, H - 16);
      canvas.setAttribute("data-points", String(points.length));
      canvas.setAttribute("data-basemap-segments", String(segs));
      canvas.setAttribute("data-basemap-layers", Object.keys(counts).sort().join(" "));
    }
    function nearestPoint(mx, my) {
      var best = -1, bd = 81;
      points.forEach(function (p, i) { var q = px(p.x, p.y), d = (q[0] - mx) * (q[0] - mx) + (q[1] - my) * (q[1] - my); if (d < bd) { bd = d; best = i; } });
      return best;
    }
    var drag = null;
    canvas.addEventListener("mousedown", function (e) { drag = [e.offsetX, e.offsetY, view.cx, view.cy]; canvas.style.cursor = "grabbing"; });
    window.addEventListener("mouseup", function () { drag = null; canvas.style.cursor = "grab"; });
    canvas.addEventListener("mousemove", function (e) {
      if (drag) { view.cx = drag[2] - (e.offsetX - drag[0]) / view.k; view.cy = drag[3] + (e.offsetY - drag[1]) / view.k; draw(); tip.style.display = "none"; return; }
      var i = nearestPoint(e.offsetX, e.offsetY);
      if (i < 0) { tip.style.display = "none"; return; }
      var p = points[i];
      tip.textContent = p.label + " \u2014 value " + fmt(p.value) + " \u2014 LISA " + (p.lisa ? LISA[p.lisa][0] : (p.lisaTested ? "not significant" : "not computed"));
      tip.style.left = (canvas.offsetLeft + e.offsetX + 12) + "px"; tip.style.top = (canvas.offsetTop + e.offsetY + 10) + "px";
      tip.style.display = "block";
    });
    canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      var f = Math.exp(-e.deltaY * 0.0015), mx = e.offsetX, my = e.offsetY;
      var wx = view.cx + (mx - W / 2) / view.k, wy = view.cy - (my - H / 2) / view.k;
      view.k = Math.max(base * 0.5, Math.min(base * 200, view.k * f));
      view.cx = wx - (mx - W / 2) / view.k; view.cy = wy + (my - H / 2) / view.k; draw();
    }, { passive: false });
    canvas.addEventListener("dblclick", function () { view.k = base; view.cx = (ex[0] + ex[1]) / 2; view.cy = (ex[2] + ex[3]) / 2; draw(); });
    draw();
    return canvas;
  };

  // ---------------------------------------------------------------- histogram (SVG)
  MF.histogram = function (holder, hist) {
    if (!hist.counts.length) { holder.appendChild(el("p", { class: "muted" }, "never active on these prompts")); return; }
    var ns = "http://www.w3.org/2000/svg", W = 400, H = 150, L = 40, B = 22;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("class", "hist");
    var cmax = Math.max.apply(null, hist.counts), n = hist.counts.length, bw = (W - L - 6) / n;
    hist.counts.forEach(function (c, i) {
      var h = c ? Math.max(1, (H - B - 8) * Math.log1p(c) / Math.log1p(cmax)) : 0;
      var r = document.createElementNS(ns, "rect");
      r.setAttribute("x", L + i * bw); r.setAttribute("y", H - B - h); r.setAttribute("width", Math.max(1, bw - 1)); r.setAttribute("height", h);
      r.setAttribute("fill", "#e07a1f");
      var t = document.createElementNS(ns, "title"); t.textContent = fmt(hist.edges[i]) + " \u2013 " + fmt(hist.edges[i + 1]) + ": " + c + " tokens";
      r.appendChild(t); svg.appendChild(r);
    });
    function text(x, y, s, anchor) { var t = document.createElementNS(ns, "text"); t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "10"); t.setAttribute("text-anchor", anchor || "middle"); t.setAttribute("fill", "#555"); t.textContent = s; svg.appendChild(t); }
    text(L, H - 8, fmt(hist.edges[0]), "start"); text(W - 6, H - 8, fmt(hist.edges[n]), "end");
    text(L - 4, 12, String(cmax), "end"); text(L - 4, H - B, "0", "end");
    holder.appendChild(svg);
    holder.appendChild(el("div", { class: "legend" }, "nonzero token values; bar height log(1 + count)"));
  };

  // ---------------------------------------------------------------- top contexts
  // placename contexts carry c.prompt; corpus contexts c.window, c.document, c.position (the token of c.max)
  MF.contexts = function (holder, contexts, vmax) {
    if (!contexts.length) { holder.appendChild(el("p", { class: "muted" }, "no context activates this feature")); return; }
    contexts.forEach(function (c) {
      var corpus = c.window !== undefined;
      var line = el("div", corpus ? { class: "ctx corpus", "data-window": c.window } : { class: "ctx", "data-prompt": c.prompt });
      var ex = {}; (c.excluded || []).forEach(function (i) { ex[i] = true; });
      c.tokens.forEach(function (tok, i) {
        var v = c.values[i];
        var s = el("span", { class: "tok" + (ex[i] ? " excluded" : "") + (v > 0 ? " hot" : ""), title: ex[i] ? "left out (sink)" : "value " + fmt(v) }, tok);
        s.style.background = MF.tokenColor(v, vmax);
        line.appendChild(s); line.appendChild(document.createTextNode(" "));
      });
      line.appendChild(el("span", { class: "val" }, "max " + fmt(c.max) + (corpus ? " \u00b7 " + c.document + ", window " + c.window : "")));
      holder.appendChild(line);
    });
  };

  // ---------------------------------------------------------------- head attribution (SVG bars, attn_z SAEs)
  // heads: {share: [head], direct: [head]}: share of the decoder norm per head (sums to 1), |W_O,h d_h| per head
  MF.heads = function (holder, heads) {
    var ns = "http://www.w3.org/2000/svg", n = heads.share.length, L = 54, W = Math.max(220, L + 14 * n + 10), RH = 60;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", 2 * RH + 28); svg.setAttribute("class", "heads");
    function text(x, y, s, anchor) { var t = document.createElementNS(ns, "text"); t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "10"); t.setAttribute("text-anchor", anchor || "middle"); t.setAttribute("fill", "#555"); t.textContent = s; svg.appendChild(t); }
    [["share", "share", "#2457a6", 1], ["direct", "direct", "#8a6d9e", Math.max.apply(null, heads.direct.map(function (v) { return v || 0; })) || 1]].forEach(function (row, ri) {
      var top = ri * RH + 4, bw = (W - L - 10) / n;
      text(L - 6, top + RH / 2, row[1], "end");
      heads[row[0]].forEach(function (v, h) {
        var hgt = (v > 0 ? v / row[3] : 0) * (RH - 10), r = document.createElementNS(ns, "rect");
        r.setAttribute("x", L + h * bw); r.setAttribute("y", top + RH - 6 - hgt); r.setAttribute("width", Math.max(1, bw - 2)); r.setAttribute("height", hgt);
        r.setAttribute("fill", row[2]); r.setAttribute("data-head", h); r.setAttribute("data-kind", row[0]);
        var t = document.createElementNS(ns, "title"); t.textContent = "head " + h + ": share " + fmt(heads.share[h]) + ", direct " + fmt(heads.direct[h]);
        r.appendChild(t); svg.appendChild(r);
      });
    });
    for (var h = 0; h < n; h++) text(L + (h + 0.5) * (W - L - 10) / n, 2 * RH + 20, String(h));
    holder.appendChild(svg);
    holder.appendChild(el("div", { class: "legend" }, "share: fraction of the decoder row's norm on each head (sums to 1); direct: |W_O[:, head] d_head|, what one unit of the feature writes to the residual stream through that head (bars scaled to the largest)"));
  };

  // ---------------------------------------------------------------- index page
  function indexPage(data) {
    var meta = data.meta, cols = data.columns, rows = data.rows, n = rows.feature.length;
    document.title = meta.title + " \u2014 feature explorer";
    document.getElementById("title").textContent = meta.title;
    document.getElementById("meta").textContent = meta.subtitle;
    var state = { key: "feature", dir: 1, page: 0, filter: "", minI: -Infinity, region: meta.regions[0] || null, head: null };
    var order = [];
    var table = document.getElementById("features"), thead = table.querySelector("thead"), tbody = table.querySelector("tbody");
    var tr = el("tr");
    cols.forEach(function (c) {
      var th = el("th", { "data-key": c.key, title: c.help || "" }, c.label);
      th.addEventListener("click", function () {
        if (state.key === c.key) state.dir = -state.dir; else { state.key = c.key; state.dir = c.key === "feature" ? 1 : -1; }
        state.page = 0; refresh();
      });
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    var minI = document.getElementById("min-i"), regionSel = document.getElementById("filter-region"), find = document.getElementById("find");
    meta.regions.forEach(function (r) { regionSel.appendChild(el("option", { value: r }, r)); });
    minI.addEventListener("input", function () { state.minI = minI.value === "" ? -Infinity : Number(minI.value); state.page = 0; refresh(); });
    regionSel.addEventListener("change", function () { state.region = regionSel.value; state.page = 0; refresh(); });
    find.addEventListener("keydown", function (e) { if (e.key === "Enter" && find.value !== "") location.href = "feature.html#" + Number(find.value); });
    var headSel = document.getElementById("filter-head");
    if (headSel && rows.top_head) {
      document.getElementById("head-filter").hidden = false;
      for (var h = 0; h < (meta.n_heads || 0); h++) headSel.appendChild(el("option", { value: h }, "head " + h));
      headSel.addEventListener("change", function () { state.head = headSel.value === "" ? null : Number(headSel.value); state.page = 0; refresh(); });
    }
    document.getElementById("prev").addEventListener("click", function () { if (state.page > 0) { state.page--; render(); } });
    document.getElementById("next").addEventListener("click", function () { if ((state.page + 1) * PAGE < order.length) { state.page++; render(); } });
    function refresh() {
      var key = state.key, col = rows[key], dir = state.dir, Icol = state.region ? rows["I_" + state.region] : null;
      order = [];
      for (var i = 0; i < n; i++) {
        if (Icol && state.minI !== -Infinity && !(Icol[i] >= state.minI)) continue;
        if (state.head !== null && rows.top_head[i] !== state.head) continue;
        order.push(i);
      }
      order.sort(function (a, b) {
        var x = col[a], y = col[b], xn = x === null || !isFinite(x), yn = y === null || !isFinite(y);
        if (xn || yn) return xn === yn ? rows.feature[a] - rows.feature[b] : (xn ? 1 : -1);
        return x === y ? rows.feature[a] - rows.feature[b] : (x < y ? -dir : dir);
      });
      thead.querySelectorAll("th").forEach(function (th) { th.className = th.getAttribute("data-key") === key ? (dir < 0 ? "sorted-desc" : "sorted-asc") : ""; });
      render();
    }
    function render() {
      tbody.textContent = "";
      order.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (i) {
        var r = el("tr", { "data-feature": rows.feature[i] });
        cols.forEach(function (c) {
          var td = el("td");
          if (c.key === "feature") td.appendChild(el("a", { href: "feature.html#" + rows.feature[i] }, rows.feature[i]));
          else td.textContent = c.int ? (rows[c.key][i] === null ? "\u2014" : String(rows[c.key][i])) : fmt(rows[c.key][i]);
          r.appendChild(td);
        });
        tbody.appendChild(r);
      });
      document.getElementById("pageinfo").textContent = order.length ? ("features " + (state.page * PAGE + 1) + "\u2013" + Math.min(order.length, (state.page + 1) * PAGE) + " of " + order.length + (order.length < n ? " (filtered from " + n + ")" : "")) : "no feature passes the filter";
    }
    refresh();
  }

  // ---------------------------------------------------------------- feature page
  function featurePage() {
    var meta = MF.indexData.meta, places = MF.placesData, root = document.getElementById("feature");
    document.getElementById("title").textContent = meta.title;
    document.getElementById("meta").textContent = meta.subtitle;
    var find = document.getElementById("find");
    find.addEventListener("keydown", function (e) { if (e.key === "Enter" && find.value !== "") location.hash = "#" + Number(find.value); });
    function show() {
      var f = parseInt(location.hash.slice(1) || "0", 10);
      root.textContent = "";
      root.removeAttribute("data-ready");
      if (!(f >= 0 && f < meta.n_features)) { root.appendChild(el("p", { class: "error" }, "no feature " + location.hash.slice(1) + " (this set has " + meta.n_features + ")")); return; }
      MF.feature(f, function (d) { render(f, d); }, function () { root.appendChild(el("p", { class: "error" }, "could not load the data of feature " + f)); });
    }
    function card(title, cls) { var c = el("div", { class: "card " + (cls || "") }); c.appendChild(el("h2", null, title)); root.appendChild(c); return c; }
    function render(f, d) {
      document.title = meta.title + " \u2014 " + meta.feature_word + " " + f;
      var nav = el("div", { class: "controls" });
      if (f > 0) nav.appendChild(el("a", { href: "#" + (f - 1) }, "\u2190 " + (f - 1)));
      nav.appendChild(el("strong", null, meta.feature_word + " " + f));
      if (f + 1 < meta.n_features) nav.appendChild(el("a", { href: "#" + (f + 1) }, (f + 1) + " \u2192"));
      nav.appendChild(el("a", { href: "index.html" }, "all " + meta.n_features));
      root.appendChild(nav);
      var stats = card("Summary", "stats");
      var s = el("div");
      meta.regions.forEach(function (r) { s.appendChild(el("span", null, "Moran's I " + r + ": " + fmt(d.I[r]))); });
      s.appendChild(el("span", null, "density " + fmt(d.density, 4)));
      s.appendChild(el("span", null, "max " + fmt(d.max)));
      if (d.corpus_density !== undefined) s.appendChild(el("span", null, "corpus density " + fmt(d.corpus_density, 4)));
      stats.appendChild(s);
      stats.appendChild(el("div", { class: "muted" }, meta.note));
      var grid = el("div", { class: "grid" }); root.appendChild(grid);
      var mapCard = el("div", { class: "card" }); mapCard.appendChild(el("h2", null, "Map (drag to pan, wheel to zoom, double-click to reset)"));
      var maps = el("div", { class: "maps", id: "maps" }); mapCard.appendChild(maps); grid.appendChild(mapCard);
      var values = new Float64Array(places.text.length);
      if (d.map.dense) d.map.val.forEach(function (v, i) { values[i] = v; });
      else d.map.idx.forEach(function (p, j) { values[p] = d.map.val[j]; });
      places.regions.forEach(function (reg, ri) {
        var lisa = (d.lisa || {})[reg.name], cls = {};
        if (lisa) lisa.idx.forEach(function (p, j) { cls[p] = lisa.q[j]; });
        var pts = [];
        for (var i = 0; i < places.text.length; i++) if (places.region[i] === ri)
          pts.push({ x: places.x[i], y: places.y[i], label: places.text[i], value: values[i], lisa: cls[i] || 0, lisaTested: !!lisa });
        MF.drawMap(maps, reg, pts, {});
      });
      mapCard.appendChild(el("div", { class: "legend" }, "colour: pooled value per place; ring: significant LISA (HH red, LL blue, HL orange, LH light blue) where the spatial step computed LISA for this feature"));
      var hist = el("div", { class: "card" }); hist.appendChild(el("h2", null, "Activation histogram")); MF.histogram(hist, d.hist); grid.appendChild(hist);
      var ctxGrid = el("div", { class: "grid" }); root.appendChild(ctxGrid);
      var ctxCard = el("div", { class: "card", id: "contexts" }); ctxCard.appendChild(el("h2", null, "Top contexts (" + meta.contexts_from + ")"));
      MF.contexts(ctxCard, d.contexts, d.max); ctxGrid.appendChild(ctxCard);
      if (d.corpus) {
        var corpusCard = el("div", { class: "card", id: "corpus-contexts" });
        corpusCard.appendChild(el("h2", null, "Top corpus contexts (" + meta.corpus_from + ")"));
        MF.contexts(corpusCard, d.corpus, d.corpus.length ? d.corpus[0].max : 0); ctxGrid.appendChild(corpusCard);
      }
      if (d.heads) {
        var headCard = el("div", { class: "card", id: "heads" }); headCard.appendChild(el("h2", null, "Head attribution (attn_z)"));
        MF.heads(headCard, d.heads); grid.appendChild(headCard);
      }
      var grid2 = el("div", { class: "grid" }); root.appendChild(grid2);
      var tk = el("div", { class: "card" }); tk.appendChild(el("h2", null, "Promoted / suppressed tokens (direct logit effect)"));
      if (d.up) {
        var two = el("div", { class: "tokens" }), up = el("ol", { class: "up" }), down = el("ol", { class: "down" });
        d.up.forEach(function (t) { up.appendChild(el("li", null, JSON.stringify(t[0]) + "  " + fmt(t[1]))); });
        d.down.forEach(function (t) { down.appendChild(el("li", null, JSON.stringify(t[0]) + "  " + fmt(t[1]))); });
        two.appendChild(up); two.appendChild(down); tk.appendChild(two);
      } else tk.appendChild(el("p", { class: "muted" }, meta.logits_note));
      grid2.appendChild(tk);
      var nb = el("div", { class: "card" }); nb.appendChild(el("h2", null, "Nearest " + meta.feature_word + "s by decoder cosine"));
      if (d.near && d.near.length) {
        var ol = el("ol");
        d.near.forEach(function (t) { var li = el("li"); li.appendChild(el("a", { href: "#" + t[0] }, meta.feature_word + " " + t[0])); li.appendChild(document.createTextNode("  cos " + fmt(t[1]))); ol.appendChild(li); });
        nb.appendChild(ol);
      } else nb.appendChild(el("p", { class: "muted" }, "no decoder directions for this set (raw units are the unit basis)"));
      grid2.appendChild(nb);
      if (d.steer && d.steer.length) {
        var st = card("Steering effect (rule steer)");
        d.steer.forEach(function (sv) {
          st.appendChild(el("div", { class: "muted" }, sv.name + ": " + sv.note));
          var t = el("table", { class: "small" }), h = el("tr");
          sv.columns.forEach(function (c) { h.appendChild(el("th", null, c)); }); t.appendChild(h);
          sv.rows.forEach(function (row) { var r = el("tr"); row.forEach(function (v) { r.appendChild(el("td", null, typeof v === "number" ? fmt(v) : v)); }); t.appendChild(r); });
          st.appendChild(t);
        });
      }
      root.setAttribute("data-ready", String(f));
    }
    window.addEventListener("hashchange", show);
    show();
  }

  MF.start = function (page) {
    if (page === "index") { if (MF.indexData) indexPage(MF.indexData); else MF.onIndex = indexPage; }
    else featurePage();
  };
})();
