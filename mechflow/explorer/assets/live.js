/* mechflow live prompt explorer: same-origin requests to the local server only (MIT, as mechflow). */
(function () {
  "use strict";
  var el = MF.el, fmt = MF.fmt;
  var $ = function (id) { return document.getElementById(id); };
  function post(path, body) {
    return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || ("HTTP " + r.status)); return j; }); });
  }
  function busy(on, what) { $("status").textContent = on ? what + "\u2026" : ""; document.body.setAttribute("data-busy", on ? "1" : "0"); }
  function fail(e) { $("error").textContent = e.message; busy(false); }
  function feature() { var v = $("feature").value; return v === "" ? null : Number(v); }
  function showTokens(d) {
    $("error").textContent = "";
    var box = $("tokens"), top = $("top");
    box.textContent = ""; top.textContent = "";
    var vmax = d.values ? Math.max.apply(null, d.values.slice(1).concat([0])) : d.max;
    d.tokens.forEach(function (tok, i) {
      var v = d.values ? d.values[i] : (d.top[i][0] ? d.top[i][0][1] : 0), sink = d.sink.indexOf(i) >= 0;
      var s = el("span", { class: "tok" + (sink ? " excluded" : "") + (v > 0 && !sink ? " hot" : ""), "data-index": i,
                           title: (sink ? "sink (position 0); " : "") + d.top[i].map(function (t) { return "#" + t[0] + " " + fmt(t[1]); }).join(", ") }, tok);
      s.style.background = sink ? "transparent" : MF.tokenColor(v, vmax);
      box.appendChild(s); box.appendChild(document.createTextNode(" "));
      var r = el("tr"); r.appendChild(el("td", null, JSON.stringify(tok)));
      r.appendChild(el("td", null, d.top[i].map(function (t) { return "#" + t[0] + " (" + fmt(t[1]) + ")"; }).join("  ")));
      top.appendChild(r);
    });
    box.setAttribute("data-ready", String(d.tokens.length));
    busy(false);
  }
  function showNext(d) {
    $("error").textContent = "";
    var box = $("next"); box.textContent = ""; box.className = "";
    box.appendChild(el("div", { class: "muted" }, "feature " + d.feature + " added at scale " + d.scale + " (norm " + fmt(d.added_norm) + "); KL(clean || steered) " + fmt(d.kl, 4)));
    var t = el("table", { class: "small" }), h = el("tr");
    ["clean", "p", "steered", "p"].forEach(function (c) { h.appendChild(el("th", null, c)); }); t.appendChild(h);
    d.clean.forEach(function (c, i) { var r = el("tr"); [JSON.stringify(c[0]), fmt(c[1], 4), JSON.stringify(d.steered[i][0]), fmt(d.steered[i][1], 4)].forEach(function (v) { r.appendChild(el("td", null, v)); }); t.appendChild(r); });
    box.appendChild(t); box.setAttribute("data-ready", "1"); busy(false);
  }
  fetch("/api/sets").then(function (r) { return r.json(); }).then(function (j) {
    j.sets.forEach(function (s) { $("set").appendChild(el("option", { value: s.id }, s.id + (s.available ? "" : " (not built)"))); });
    document.body.setAttribute("data-sets", String(j.sets.length));
  });
  $("run").addEventListener("click", function () {
    busy(true, "encoding");
    post("/api/activations", { set: $("set").value, text: $("text").value, feature: feature() }).then(showTokens).catch(fail);
  });
  $("steer").addEventListener("click", function () {
    busy(true, "steering");
    post("/api/steer", { set: $("set").value, text: $("text").value, feature: feature(), scale: Number($("scale").value) }).then(showNext).catch(fail);
  });
})();
