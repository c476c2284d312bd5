// The index: filter, sort and page through window.NEURONS.rows (tens of thousands of rows: only one
// page of them is ever in the DOM). The state lives in the URL hash, so a filtered view can be linked:
// index.html#q=layers.3&tok=the&layer=3&kind=neuron&fmin=0.01&fmax=0.5&amin=1&sort=max&dir=desc&page=2
"use strict";
(function () {
  var D = window.NEURONS, A = actlab, PAGE = 100;
  var C = {};  // column name -> position in a row
  D.columns.forEach(function (c, i) { C[c] = i; });
  var inputs = ["q", "tok", "layer", "kind", "fmin", "fmax", "amin"];
  var state = {sort: "max", dir: "desc", page: 1};

  function byId(id) { return document.getElementById(id); }

  function fillSelect(id, values, label) {
    var sel = byId(id);
    sel.appendChild(A.el("option", {value: "", text: "all " + label}));
    values.forEach(function (v) { sel.appendChild(A.el("option", {value: String(v), text: String(v)})); });
  }

  function readHash() {
    var p = A.hashParams();
    inputs.forEach(function (k) { byId(k).value = p.get(k) || ""; });
    state.sort = p.get("sort") || "max";
    state.dir = p.get("dir") === "asc" ? "asc" : "desc";
    state.page = Math.max(1, parseInt(p.get("page") || "1", 10) || 1);
  }

  function writeHash() {
    var p = new URLSearchParams();
    inputs.forEach(function (k) { if (byId(k).value !== "") p.set(k, byId(k).value); });
    if (state.sort !== "max") p.set("sort", state.sort);
    if (state.dir !== "desc") p.set("dir", state.dir);
    if (state.page > 1) p.set("page", String(state.page));
    history.replaceState(null, "", "#" + p.toString());
  }

  function num(id) { var v = byId(id).value; return v === "" ? null : parseFloat(v); }

  function filtered() {
    var q = byId("q").value.trim().toLowerCase(), tok = byId("tok").value.toLowerCase();
    var layer = byId("layer").value, kind = byId("kind").value;
    var fmin = num("fmin"), fmax = num("fmax"), amin = num("amin");
    var rows = D.rows.filter(function (r) {
      if (layer !== "" && String(r[C.layer]) !== layer) return false;
      if (kind !== "" && r[C.kind] !== kind) return false;
      if (fmin !== null && !(r[C.freq] >= fmin)) return false;
      if (fmax !== null && !(r[C.freq] <= fmax)) return false;
      if (amin !== null && !(r[C.max] >= amin)) return false;
      if (q && r[C.id].toLowerCase().indexOf(q) < 0) return false;
      if (tok && !r[C.top].some(function (t) { return t.toLowerCase().indexOf(tok) >= 0; })) return false;
      return true;
    });
    var col = C[state.sort], sign = state.dir === "asc" ? 1 : -1;
    rows.sort(function (a, b) {
      var x = a[col], y = b[col];
      if (Array.isArray(x)) { x = x[0] || ""; y = y[0] || ""; }
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sign || a[C.layer] - b[C.layer] || a[C.index] - b[C.index];
    });
    return rows;
  }

  function render() {
    var rows = filtered(), pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages);
    var body = byId("rows"), start = (state.page - 1) * PAGE;
    body.textContent = "";
    rows.slice(start, start + PAGE).forEach(function (r) {
      var tops = r[C.top];
      body.appendChild(A.el("tr", {cls: "row"}, [
        A.el("td", {cls: "l"}, [A.el("a", {href: "neuron.html#" + encodeURIComponent(r[C.id]), text: r[C.id]})]),
        A.el("td", {text: String(r[C.layer])}),
        A.el("td", {text: String(r[C.index])}),
        A.el("td", {cls: "l"}, [A.el("span", {cls: "kind " + r[C.kind], text: r[C.kind]})]),
        A.el("td", {text: A.fmt(r[C.max])}),
        A.el("td", {text: A.fmt(r[C.mean])}),
        A.el("td", {text: A.pct(r[C.freq])}),
        A.el("td", {cls: "l tok", title: tops.join(" | "),
                    text: tops.length ? tops.map(function (t) { return "\u00ab" + A.showToken(t) + "\u00bb"; }).join(" ") : "-"}),
      ]));
    });
    byId("count").textContent = rows.length + " of " + D.rows.length + " shown" +
      (rows.length ? " \u00b7 page " + state.page + " of " + pages : "");
    byId("count").setAttribute("data-matches", String(rows.length));
    byId("prev").disabled = state.page <= 1;
    byId("next").disabled = state.page >= pages;
    document.querySelectorAll("th[data-col]").forEach(function (th) {
      var on = th.getAttribute("data-col") === state.sort;
      th.classList.toggle("sorted", on);
      th.classList.toggle("asc", on && state.dir === "asc");
    });
    writeHash();
  }

  fillSelect("layer", D.layers, "layers");
  // both kinds are always offered, so a link filtering on one the site lacks shows none rather than all
  fillSelect("kind", ["neuron", "sae"].concat(D.kinds.filter(function (k) { return k !== "neuron" && k !== "sae"; })), "kinds");
  readHash();
  inputs.forEach(function (k) {
    byId(k).addEventListener("input", function () { state.page = 1; render(); });
  });
  document.querySelectorAll("th[data-col]").forEach(function (th) {
    th.addEventListener("click", function () {
      var col = th.getAttribute("data-col");
      if (state.sort === col) state.dir = state.dir === "asc" ? "desc" : "asc";
      else { state.sort = col; state.dir = col === "id" || col === "top" || col === "kind" ? "asc" : "desc"; }
      state.page = 1;
      render();
    });
  });
  byId("prev").addEventListener("click", function () { state.page -= 1; render(); });
  byId("next").addEventListener("click", function () { state.page += 1; render(); });
  window.addEventListener("hashchange", function () { readHash(); render(); });
  render();
})();
