/* tunebench run report: the client-side case table.
 *
 * Reads two JSON blocks (#meta, #cases; their format is documented in html.py case_record) and renders one page
 * of case rows at a time. Every piece of case data is untrusted: the DOM is built with createElement and
 * textContent only, never innerHTML, and attribute values are set with setAttribute. No network access.
 */
(function () {
  "use strict";

  var EQ = 0, INS = 1, DEL = -1;
  var app = document.getElementById("case-app");
  var meta, cases;
  try {
    meta = JSON.parse(document.getElementById("meta").textContent);
    cases = JSON.parse(document.getElementById("cases").textContent);
  } catch (err) {
    var msg = document.createElement("p");
    msg.className = "note worse";
    msg.textContent = "The embedded case data could not be read: " + err.message;
    app.parentNode.insertBefore(msg, app);
    return;
  }

  var models = meta.models, metrics = meta.metrics;
  var BASE = meta.base, CAND = meta.cand;
  var hasDelta = BASE !== null && CAND !== null;
  // The model whose pass/fail the result filter looks at: the candidate, else the last model.
  var FOCUS = CAND !== null ? CAND : models.length - 1;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function option(select, value, label) {
    var opt = el("option", null, label);
    opt.value = value;
    select.appendChild(opt);
  }

  // ---- per-case accessors -------------------------------------------------------------------------------
  function score(c, k, m) {
    var o = c.o[m];
    return o && o.s ? o.s[k] : null;
  }
  function value(c, k, m) {
    var s = score(c, k, m);
    return s ? s[0] : null;
  }
  function delta(c, k) {
    if (!hasDelta) return null;
    var a = value(c, k, BASE), b = value(c, k, CAND);
    return a === null || b === null ? null : b - a;
  }
  function outputText(o) {
    var text = "";
    if (o && o.d) for (var i = 0; i < o.d.length; i++) if (o.d[i][0] !== DEL) text += o.d[i][1];
    return text;
  }
  function isRegressed(c) {
    var flags = c.f || [];
    for (var i = 0; i < flags.length; i++) if (flags[i].indexOf("regressed") === 0) return true;
    return false;
  }
  function failsModel(c, m, k) {
    var o = c.o[m];
    if (!o) return false;
    if (o.e && k === undefined) return true;
    var s = o.s || [];
    for (var i = 0; i < s.length; i++) {
      if (k !== undefined && i !== k) continue;
      if (s[i] && (s[i][1] === false || (s[i][0] === null && s[i].length > 2))) return true;
    }
    return false;
  }
  function passesModel(c, m, k) {
    var o = c.o[m];
    if (!o || (o.e && k === undefined)) return false;
    var s = o.s || [], any = false;
    for (var i = 0; i < s.length; i++) {
      if (k !== undefined && i !== k) continue;
      if (!s[i] || s[i][1] === null) continue;
      if (s[i][1] === false) return false;
      any = true;
    }
    return any;
  }
  function hasError(c) {
    for (var m = 0; m < c.o.length; m++) if (c.o[m] && c.o[m].e) return true;
    return false;
  }

  var anyRegressed = false, tagSet = {}, flagSet = {}, prefixSet = {};
  for (var i = 0; i < cases.length; i++) {
    var c = cases[i];
    c._i = i;
    c._reg = isRegressed(c);
    anyRegressed = anyRegressed || c._reg;
    (c.t || []).forEach(function (t) { tagSet[t] = (tagSet[t] || 0) + 1; });
    (c.f || []).forEach(function (f) {
      flagSet[f] = (flagSet[f] || 0) + 1;
      var p = f.indexOf(":");
      if (p > 0) prefixSet[f.slice(0, p)] = (prefixSet[f.slice(0, p)] || 0) + 1;
    });
  }

  // Lowercased search text, built on the first search only (it costs a pass over every output).
  function haystack(c) {
    if (c._h === undefined) {
      var parts = [c.id, c.in, c.x, c.src || ""].concat(c.t || [], c.f || []);
      (c.m || []).forEach(function (msg) { parts.push(msg[1]); });
      c.o.forEach(function (o) { if (o) { parts.push(outputText(o)); if (o.e) parts.push(o.e); } });
      c._h = parts.join("\n").toLowerCase();
    }
    return c._h;
  }

  // ---- state --------------------------------------------------------------------------------------------
  var state = {
    q: "", tag: "", status: "", flag: "",
    sort: anyRegressed ? "default" : "order", dir: 1,
    page: 0, size: meta.pageSize || 50, diff: true
  };
  var view = cases.slice();

  function worstFirstDir(key) {
    var parts = key.split(":");
    if (parts[0] === "delta" || parts[0] === "value") return metrics[+parts[1]].hib ? 1 : -1;
    return 1;
  }

  function sortValue(key) {
    var parts = key.split(":");
    if (parts[0] === "delta") { var k = +parts[1]; return function (c) { return delta(c, k); }; }
    if (parts[0] === "value") {
      var km = +parts[1], mm = +parts[2];
      return function (c) { return value(c, km, mm); };
    }
    return null;
  }

  function compare(a, b) {
    var key = state.sort, dir = state.dir;
    if (key === "default") {
      if (a._reg !== b._reg) return a._reg ? -1 : 1;
      return (a._i - b._i) * dir;
    }
    if (key === "order") return (a._i - b._i) * dir;
    if (key === "id") return (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) * dir || a._i - b._i;
    var get = sortValue(key), va = get(a), vb = get(b);
    if (va === null && vb === null) return a._i - b._i;
    if (va === null) return 1;  // cases without a value go last in either direction
    if (vb === null) return -1;
    return (va - vb) * dir || a._i - b._i;
  }

  function matches(c) {
    if (state.tag && (c.t || []).indexOf(state.tag) < 0) return false;
    if (state.flag) {
      var flags = c.f || [];
      if (state.flag === "*" && !flags.length) return false;
      if (state.flag === "-" && flags.length) return false;
      if (state.flag.charAt(0) === "=" && flags.indexOf(state.flag.slice(1)) < 0) return false;
      if (state.flag.charAt(0) === "^") {
        var prefix = state.flag.slice(1) + ":";
        if (!flags.some(function (f) { return f.indexOf(prefix) === 0; })) return false;
      }
    }
    if (state.status) {
      var st = state.status.split(":"), k = st.length > 1 ? +st[1] : undefined;
      if (st[0] === "fail" && !failsModel(c, FOCUS, k)) return false;
      if (st[0] === "pass" && !passesModel(c, FOCUS, k)) return false;
      if (st[0] === "error" && !hasError(c)) return false;
    }
    if (state.q && haystack(c).indexOf(state.q) < 0) return false;
    return true;
  }

  function recompute() {
    view = cases.filter(matches);
    view.sort(compare);
    state.page = 0;
    render();
  }

  // ---- rendering ----------------------------------------------------------------------------------------
  function fmt(v) {
    if (v === null || v === undefined) return "—";
    var a = Math.abs(v), d = a >= 1000 ? 0 : a >= 100 ? 1 : a >= 10 ? 2 : 3;
    return v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
  }
  function fmtSigned(v) {
    if (v === null) return "—";
    var text = fmt(Math.abs(v));
    return (v > 0 ? "+" : v < 0 ? "\u2212" : "\u00b1") + text;
  }
  function direction(d, hib) {
    if (d === null) return "none";
    if (Math.abs(d) < 1e-12) return "same";
    return (d > 0) === hib ? "better" : "worse";
  }

  function textBlock(text, cls) {
    var div = el("div", "text" + (cls ? " " + cls : ""));
    div.textContent = text;
    if (!text) div.classList.add("empty");
    return div;
  }

  // Terminology marks (case_record "k"): hit and bad-term spans in output-text coordinates (UTF-16 units).
  function markSpans(k) {
    if (!k) return null;
    var out = [];
    (k.h || []).forEach(function (sp) { out.push([sp[0], sp[1], "term-hit"]); });
    (k.x || []).forEach(function (sp) { out.push([sp[0], sp[1], "term-bad"]); });
    out.sort(function (a, b) { return a[0] - b[0]; });
    return out.length ? out : null;
  }

  // Append `text` (which starts at output offset `start`) to `parent`, wrapping the parts inside spans in <mark>.
  function appendMarked(parent, text, start, spans, cursor) {
    if (!spans) { parent.appendChild(document.createTextNode(text)); return; }
    var pos = 0, end = text.length;
    while (pos < end) {
      while (cursor.i < spans.length && spans[cursor.i][1] <= start + pos) cursor.i++;
      var sp = cursor.i < spans.length ? spans[cursor.i] : null;
      if (!sp || sp[0] >= start + end) { parent.appendChild(document.createTextNode(text.slice(pos))); return; }
      var from = Math.max(sp[0] - start, pos);
      if (from > pos) { parent.appendChild(document.createTextNode(text.slice(pos, from))); pos = from; }
      var to = Math.min(sp[1] - start, end);
      parent.appendChild(el("mark", sp[2], text.slice(pos, to)));
      pos = to;
    }
  }

  function diffBlock(ops, k) {
    var div = el("div", "text diff"), spans = markSpans(k), cursor = { i: 0 }, at = 0;
    for (var i = 0; i < ops.length; i++) {
      var op = ops[i][0], text = ops[i][1];
      if (op === EQ) {
        appendMarked(div, text, at, spans, cursor);
        at += text.length;
      } else if (op === INS) {
        var wrap = el(state.diff ? "ins" : "span");
        appendMarked(wrap, text, at, spans, cursor);
        div.appendChild(wrap);
        at += text.length;
      } else if (state.diff) {
        div.appendChild(el("del", null, text));
      }
    }
    if (!div.childNodes.length) div.classList.add("empty");
    return div;
  }

  function termLine(k) {
    if (!k || !(k.m || k.u)) return null;
    var line = el("div", "term-line");
    if (k.m) {
      line.appendChild(el("span", "label", "missing:"));
      k.m.forEach(function (t) { line.appendChild(el("span", "chip term-miss", t)); });
    }
    if (k.u) k.u.forEach(function (t) { line.appendChild(el("span", "chip term-bad", t)); });
    return line;
  }

  function chips(list, kind) {
    var wrap = el("div", "chips");
    list.forEach(function (item) {
      var cls = "chip " + kind;
      if (kind === "flag") cls += " flag-" + item.split(":")[0].replace(/[^a-z0-9_-]/gi, "");
      wrap.appendChild(el("span", cls, item));
    });
    return wrap;
  }

  function caseCell(c) {
    var td = el("td", "case-cell");
    td.appendChild(el("code", "case-id", c.id));
    if (c.t && c.t.length) td.appendChild(chips(c.t, "tag"));
    if (c.f && c.f.length) td.appendChild(chips(c.f, "flag"));
    if (c.src) td.appendChild(el("div", "source", c.src));
    return td;
  }

  function inputCell(c) {
    var td = el("td", "input-cell");
    if (c.m && c.m.length) {
      c.m.forEach(function (msg) {
        var div = el("div", "message");
        div.appendChild(el("span", "message-role", msg[0]));
        div.appendChild(textBlock(msg[1]));
        td.appendChild(div);
      });
      if (c.in && c.in !== c.m[c.m.length - 1][1]) td.appendChild(textBlock(c.in));
    } else {
      td.appendChild(textBlock(c.in));
    }
    return td;
  }

  function outputCell(c, m) {
    var o = c.o[m], td = el("td", "output-cell");
    td.setAttribute("data-model", models[m]);
    if (!o) { td.appendChild(el("div", "note", "no output")); return td; }
    if (o.e) {
      var err = el("div", "error-output");
      err.appendChild(el("strong", null, "error: "));
      err.appendChild(document.createTextNode(o.e));
      td.appendChild(err);
    }
    if (o.d) td.appendChild(diffBlock(o.d, o.k));
    var terms = termLine(o.k);
    if (terms) td.appendChild(terms);
    if (o.l !== undefined) td.appendChild(el("div", "latency", o.l.toLocaleString("en-US") + " ms"));
    return td;
  }

  function metricCell(c, k) {
    var td = el("td", "metric-cell");
    for (var m = 0; m < models.length; m++) {
      var s = score(c, k, m), line = el("div", "score");
      line.appendChild(el("span", "score-model", models[m]));
      if (!s) {
        line.appendChild(el("span", "score-value missing", "—"));
      } else if (s[0] === null && s.length > 2) {
        line.appendChild(el("span", "score-value error", "error"));
        line.setAttribute("title", s[2]);
        td.appendChild(line);
        td.appendChild(el("div", "score-error", s[2]));
        continue;
      } else {
        line.appendChild(el("span", "score-value", fmt(s[0])));
        if (s[1] === true) line.appendChild(el("span", "pass", "✓"));
        if (s[1] === false) line.appendChild(el("span", "fail", "✗"));
        if (s.length > 2) line.setAttribute("title", s[2]);
      }
      td.appendChild(line);
    }
    if (hasDelta) {
      var d = delta(c, k);
      td.appendChild(el("div", "score-delta " + direction(d, metrics[k].hib), "Δ " + fmtSigned(d)));
    }
    var flags = c.f || [], name = metrics[k].name;
    if (flags.indexOf("regressed:" + name) >= 0) td.appendChild(el("span", "badge regressed", "regressed"));
    if (flags.indexOf("fixed:" + name) >= 0) td.appendChild(el("span", "badge fixed", "fixed"));
    return td;
  }

  function row(c) {
    var tr = el("tr", c._reg ? "regressed" : null);
    tr.setAttribute("data-case-id", c.id);
    tr.appendChild(caseCell(c));
    tr.appendChild(inputCell(c));
    var golden = el("td", "golden-cell");
    golden.appendChild(textBlock(c.x));
    tr.appendChild(golden);
    for (var m = 0; m < models.length; m++) tr.appendChild(outputCell(c, m));
    for (var k = 0; k < metrics.length; k++) tr.appendChild(metricCell(c, k));
    return tr;
  }

  function pages() { return Math.max(1, Math.ceil(view.length / state.size)); }

  function render() {
    var body = $("case-rows"), start = state.page * state.size;
    var slice = view.slice(start, start + state.size), frag = document.createDocumentFragment();
    slice.forEach(function (c) { frag.appendChild(row(c)); });
    if (!slice.length) {
      var tr = el("tr", "no-rows"), td = el("td", "note", "No cases match.");
      td.setAttribute("colspan", String(3 + models.length + metrics.length));
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    $("page-info").textContent = "Page " + (state.page + 1) + " of " + pages();
    var shown = view.length ? (start + 1) + "–" + (start + slice.length) : "0";
    $("case-count").textContent = "Showing " + shown + " of " + view.length.toLocaleString("en-US") +
      " cases" + (view.length !== cases.length ? " (" + cases.length.toLocaleString("en-US") + " in the run)" : "");
    var first = state.page === 0, last = state.page >= pages() - 1;
    $("page-first").disabled = $("page-prev").disabled = $("page-prev-bottom").disabled = first;
    $("page-last").disabled = $("page-next").disabled = $("page-next-bottom").disabled = last;
    updateSortIndicators();
  }

  function updateSortIndicators() {
    var buttons = document.querySelectorAll("#case-table button.sort");
    for (var i = 0; i < buttons.length; i++) {
      var th = buttons[i].parentNode, key = headerKey(buttons[i].getAttribute("data-sort"));
      th.setAttribute("aria-sort", key === state.sort ? (state.dir > 0 ? "ascending" : "descending") : "none");
    }
    $("sort").value = state.sort;
    $("sort-dir").textContent = state.dir > 0 ? "↑" : "↓";
  }

  function headerKey(spec) {
    if (spec === "id") return "id";
    var k = spec.split(":")[1];
    return hasDelta ? "delta:" + k : "value:" + k + ":" + FOCUS;
  }

  function goTo(page) {
    state.page = Math.min(Math.max(0, page), pages() - 1);
    render();
    $("case-table").scrollIntoView({ block: "start" });
  }

  // ---- controls -----------------------------------------------------------------------------------------
  function setupControls() {
    var sort = $("sort");
    if (anyRegressed) option(sort, "default", "regressions first");
    option(sort, "order", "run order");
    option(sort, "id", "case id");
    metrics.forEach(function (mt, k) {
      if (hasDelta) option(sort, "delta:" + k, mt.name + " Δ " + models[CAND] + " − " + models[BASE]);
      models.forEach(function (name, m) { option(sort, "value:" + k + ":" + m, mt.name + " · " + name); });
    });

    var tag = $("filter-tag");
    Object.keys(tagSet).sort().forEach(function (t) { option(tag, t, t + " (" + tagSet[t] + ")"); });

    var status = $("filter-status"), who = models[FOCUS];
    option(status, "fail", who + " fails any metric");
    option(status, "pass", who + " passes all metrics");
    metrics.forEach(function (mt, k) {
      if (mt.thr === null || mt.thr === undefined) return;
      option(status, "fail:" + k, who + " fails " + mt.name);
      option(status, "pass:" + k, who + " passes " + mt.name);
    });
    option(status, "error", "any model errored");

    var flag = $("filter-flag");
    option(flag, "*", "any flag");
    option(flag, "-", "no flag");
    Object.keys(prefixSet).sort().forEach(function (p) { option(flag, "^" + p, p + ":* (" + prefixSet[p] + ")"); });
    Object.keys(flagSet).sort().forEach(function (f) { option(flag, "=" + f, f + " (" + flagSet[f] + ")"); });

    var timer = null;
    $("search").addEventListener("input", function (ev) {
      clearTimeout(timer);
      var q = ev.target.value.trim().toLowerCase();
      timer = setTimeout(function () { state.q = q; recompute(); }, 120);
    });
    tag.addEventListener("change", function () { state.tag = tag.value; recompute(); });
    status.addEventListener("change", function () { state.status = status.value; recompute(); });
    flag.addEventListener("change", function () { state.flag = flag.value; recompute(); });
    sort.addEventListener("change", function () {
      state.sort = sort.value;
      state.dir = worstFirstDir(sort.value);
      recompute();
    });
    $("sort-dir").addEventListener("click", function () { state.dir = -state.dir; recompute(); });
    $("show-diff").addEventListener("change", function (ev) { state.diff = ev.target.checked; render(); });
    $("page-size").addEventListener("change", function (ev) {
      state.size = +ev.target.value;
      state.page = 0;
      render();
    });
    $("page-first").addEventListener("click", function () { goTo(0); });
    $("page-prev").addEventListener("click", function () { goTo(state.page - 1); });
    $("page-next").addEventListener("click", function () { goTo(state.page + 1); });
    $("page-last").addEventListener("click", function () { goTo(pages() - 1); });
    $("page-prev-bottom").addEventListener("click", function () { goTo(state.page - 1); });
    $("page-next-bottom").addEventListener("click", function () { goTo(state.page + 1); });

    var headers = document.querySelectorAll("#case-table button.sort");
    for (var i = 0; i < headers.length; i++) {
      headers[i].addEventListener("click", function (ev) {
        var key = headerKey(ev.currentTarget.getAttribute("data-sort"));
        if (state.sort === key) state.dir = -state.dir;
        else { state.sort = key; state.dir = worstFirstDir(key); }
        recompute();
      });
    }
  }

  $("page-size").value = String(state.size);
  setupControls();
  app.hidden = false;
  recompute();
  // For tests and benchmarks: the first page of rows is in the DOM.
  document.documentElement.setAttribute("data-ready", "true");
  window.tunebenchReadyMs = performance.now();
})();
