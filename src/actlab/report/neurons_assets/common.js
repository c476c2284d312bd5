// Shared helpers of the neuron browser. Every string from the data reaches the page through
// textContent or setAttribute, never through innerHTML, so token text cannot inject markup.
"use strict";
var actlab = (function () {
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), attrs[k]);
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  function svg(tag, attrs) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k]; else node.setAttribute(k, attrs[k]);
    }
    return node;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || x !== x) return "-";
    var a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits);
  }
  // two significant digits, for axis ticks (the records' bins reach 1e-3 around zero)
  function tick(x) {
    if (x === null || x === undefined || x !== x) return "-";
    if (x === 0) return "0";
    var a = Math.abs(x);
    return a < 1e-2 || a >= 1e4 ? x.toExponential(0) : String(Number(x.toPrecision(2)));
  }
  function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(2) + "%"; }
  // a token as shown: whitespace made visible where it would vanish
  function showToken(t) {
    return String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192").replace(/\r/g, "\u240d");
  }
  function hashParams() { return new URLSearchParams(location.hash.replace(/^#/, "")); }
  function loadScript(src, onerror) {
    var s = document.createElement("script");
    s.src = src;
    if (onerror) s.onerror = onerror;
    document.head.appendChild(s);
  }
  return {el: el, svg: svg, fmt: fmt, tick: tick, pct: pct, showToken: showToken, hashParams: hashParams, loadScript: loadScript};
})();
