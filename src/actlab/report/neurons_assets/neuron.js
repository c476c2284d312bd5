// One neuron's page: neuron.html#<id>. Its data comes from data/n/<page>.js, loaded with a <script>
// tag (a file:// page may not fetch()), which calls window.actlabNeuron(record).
"use strict";
(function () {
  var D = window.NEURONS, A = actlab, C = {};
  D.columns.forEach(function (c, i) { C[c] = i; });
  var pos = {};
  D.rows.forEach(function (r, i) { pos[r[C.id]] = i; });
  function byId(id) { return document.getElementById(id); }

  // Bins drawn at equal width (the records' bins are signed-log spaced: a symlog axis), bar height on a
  // log scale; the edges at the ends, at 0 and a few between label the axis.
  function histogram(h, d) {
    var W = 560, H = 190, L = 44, B = 26, T = 10, R = 10;
    var root = A.svg("svg", {viewBox: "0 0 " + W + " " + H, "class": "hist", role: "img",
                             "aria-label": "histogram of activations"});
    var edges = h.edges, counts = h.counts, n = counts.length;
    if (!n) return root;
    var peak = Math.max.apply(null, counts), top = Math.log10(1 + peak), bw = (W - L - R) / n;
    function x(i) { return L + bw * i; }
    function y(c) { return T + (H - T - B) * (1 - Math.log10(1 + c) / (top || 1)); }
    counts.forEach(function (c, i) {
      if (!c) return;
      var bar = A.svg("rect", {"class": "bar", x: x(i) + 0.5, y: y(c), width: Math.max(0.8, bw - 1), height: H - B - y(c)});
      bar.appendChild(A.svg("title", {text: "[" + A.fmt(edges[i]) + ", " + A.fmt(edges[i + 1]) + "): " + c}));
      root.appendChild(bar);
    });
    root.appendChild(A.svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9aa1ab"}));
    root.appendChild(A.svg("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#9aa1ab"}));
    var ticks = {0: true}, step = Math.max(1, Math.round(n / 6));
    ticks[n] = true;
    for (var i = step; i < n - step / 2; i += step) ticks[i] = true;
    edges.forEach(function (e, i) {
      if (e !== 0) return;
      for (var k in ticks) if (+k !== 0 && +k !== n && Math.abs(k - i) < step / 2) delete ticks[k];  // 0 replaces a crowded neighbour
      ticks[i] = true;
    });
    Object.keys(ticks).forEach(function (k) {
      var i = +k;
      root.appendChild(A.svg("text", {x: x(i), y: H - 8, "text-anchor": i === 0 ? "start" : i === n ? "end" : "middle",
                                      text: A.tick(edges[i])}));
    });
    for (var j = 0; j < n; j++) {
      if (d.mean >= edges[j] && d.mean <= edges[j + 1]) {
        var mx = x(j) + bw * (d.mean - edges[j]) / ((edges[j + 1] - edges[j]) || 1);
        root.appendChild(A.svg("line", {x1: mx, x2: mx, y1: T, y2: H - B, stroke: "#111827", "stroke-dasharray": "3,3"}));
        root.appendChild(A.svg("text", {x: mx + 3, y: T + 9, text: "mean"}));
        break;
      }
    }
    root.appendChild(A.svg("text", {x: L - 4, y: T + 8, "text-anchor": "end", text: String(peak)}));
    root.appendChild(A.svg("text", {x: L - 4, y: H - B, "text-anchor": "end", text: "0"}));
    root.appendChild(A.svg("text", {x: 4, y: T + (H - T - B) / 2, text: "log"}));
    return root;
  }

  function tokenTable(pairs, label) {
    if (!pairs || !pairs.length) return A.el("p", {cls: "none", text: "none"});
    return A.el("table", {cls: "toklist"}, [
      A.el("thead", {}, [A.el("tr", {}, [A.el("th", {cls: "l", text: label}), A.el("th", {text: "score"})])]),
      A.el("tbody", {}, pairs.map(function (p) {
        return A.el("tr", {}, [A.el("td", {cls: "l tok", text: "\u00ab" + A.showToken(p[0]) + "\u00bb"}),
                               A.el("td", {text: A.fmt(p[1])})]);
      })),
    ]);
  }

  function context(c, scale) {
    var toks = A.el("span", {cls: "toks"});
    c.tokens.forEach(function (t, i) {
      var a = c.acts[i], alpha = Math.min(1, Math.abs(a) / scale);
      var rgb = a >= 0 ? "var(--pos)" : "var(--neg)";
      toks.appendChild(A.el("span", {
        cls: "t" + (i === c.center ? " c" : ""), title: JSON.stringify(t) + " = " + A.fmt(a),
        "data-act": String(a), style: "background:rgba(" + rgb + "," + alpha.toFixed(3) + ")",
        text: A.showToken(t),
      }));
    });
    return A.el("div", {cls: "ctx"}, [
      A.el("span", {cls: "v", text: A.fmt(c.value)}), toks,
      A.el("span", {cls: "where", text: "window " + c.window + ", pos " + c.position}),
    ]);
  }

  function kpi(value, label) { return A.el("div", {cls: "kpi"}, [A.el("b", {text: value}), A.el("span", {text: label})]); }

  window.actlabNeuron = function (d) {
    document.title = d.id + " \u2014 actlab neurons";
    byId("title").textContent = d.id;
    var main = byId("content");
    main.textContent = "";
    main.appendChild(A.el("p", {cls: "meta", text: (d.kind === "sae" ? "SAE latent" : "neuron") + " " + d.index +
      " of layer " + d.layer + " \u00b7 " + D.site_kind + " \u00b7 " + D.model}));
    main.appendChild(A.el("div", {cls: "kpis"}, [
      kpi(A.fmt(d.max), "max activation"), kpi(A.fmt(d.mean), "mean"), kpi(A.fmt(d.std), "std"),
      kpi(A.pct(d.freq), "active on tokens"),
    ].concat(d.ablation ? [kpi((d.ablation.delta_loss >= 0 ? "+" : "") + A.fmt(d.ablation.delta_loss, 4),
                                "\u0394 loss when ablated")] : [])));
    var grid = A.el("div", {cls: "grid"});
    grid.appendChild(A.el("section", {}, [A.el("h2", {text: "Activation histogram"}), histogram(d.hist, d)]));
    var lm = A.el("section", {id: "lmhead"}, [A.el("h2", {text: "LM-head tokens"})]);
    if (d.lm_head) {
      lm.appendChild(A.el("div", {cls: "grid"}, [tokenTable(d.lm_head.top, "promotes"),
                                                  tokenTable(d.lm_head.bottom, "suppresses")]));
    } else {
      lm.appendChild(A.el("p", {cls: "none", text: "not decoded for this site"}));
    }
    grid.appendChild(lm);
    main.appendChild(grid);
    var scale = Math.abs(d.max) || 1;
    d.top_contexts.forEach(function (c) { c.acts.forEach(function (a) { scale = Math.max(scale, Math.abs(a)); }); });
    main.appendChild(A.el("h2", {text: "Top contexts (" + d.top_contexts.length + ")"}));
    var list = A.el("div", {id: "contexts"});
    d.top_contexts.forEach(function (c) { list.appendChild(context(c, scale)); });
    if (!d.top_contexts.length) list.appendChild(A.el("p", {cls: "none", text: "no contexts recorded"}));
    main.appendChild(list);
    main.appendChild(A.el("h2", {text: "Ablation"}));
    if (d.ablation) {
      main.appendChild(A.el("p", {text: "Next-token loss changes by " + A.fmt(d.ablation.delta_loss, 5) +
                                        " nats when this " + (d.kind === "sae" ? "latent is removed from the site's activation" : "neuron is set to zero") +
                                        ". Tokens most affected:"}));
      main.appendChild(tokenTable(d.ablation.tokens, "token"));
    } else {
      main.appendChild(A.el("p", {cls: "none", text: "not computed (run actlab neurons with --ablate)"}));
    }
    byId("content").setAttribute("data-loaded", d.id);
  };

  function show() {
    var id = decodeURIComponent(location.hash.replace(/^#/, "")), i = pos[id];
    var main = byId("content");
    if (i === undefined) {
      main.textContent = "";
      main.appendChild(A.el("p", {cls: "none", text: id ? "no neuron " + id + " in this site" : "no neuron named: open one from the index"}));
      return;
    }
    var prev = D.rows[i - 1], next = D.rows[i + 1];
    var nav = byId("nav");
    nav.textContent = "";
    nav.appendChild(A.el("a", {href: "index.html", text: "\u2190 index"}));
    if (prev) nav.appendChild(A.el("a", {href: "#" + encodeURIComponent(prev[C.id]), text: "\u2039 " + prev[C.id]}));
    if (next) nav.appendChild(A.el("a", {href: "#" + encodeURIComponent(next[C.id]), text: next[C.id] + " \u203a"}));
    A.loadScript("data/n/" + D.rows[i][C.page] + ".js", function () {
      main.textContent = "";
      main.appendChild(A.el("p", {cls: "none", text: "data file missing for " + id}));
    });
  }
  window.addEventListener("hashchange", show);
  show();
})();
