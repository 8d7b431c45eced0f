/* gradserve playground: draws the trace of POST /v1/gradients as a circuit of gates.
 *
 * Everything here talks to the public API only. The picture follows the lecture's
 * convention: the forward value of a wire above it (green), its gradient below it (red,
 * prefixed "∂"). On a wire from u into gate v the gradient shown is the part of df/du that
 * flows back through v (local × upstream) where the page can work it out for scalars;
 * otherwise it is df/du itself, marked "Σ" when u feeds several gates (a value used twice
 * adds up the gradients it gets back).
 */
(function () {
  "use strict";

  var SVGNS = "http://www.w3.org/2000/svg";
  var KEY_STORE = "gradserve.apiKey";
  var MAX_DRAWN_NODES = 1500;

  var PRESETS = {
    "add-mul": {
      expression: "q = x + y\nf = q * z",
      values: { x: -2, y: 5, z: -4 },
    },
    sigmoid: {
      expression: "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))",
      values: { w0: 2, x0: -1, w1: -3, x1: -2, w2: -3 },
    },
    vector: {
      expression: "q = W @ x\nf = sum(q ** 2)",
      values: { W: [[0.1, 0.5], [-0.3, 0.8]], x: [0.2, 0.4] },
    },
    mlp: {
      expression: "h = relu(X @ W1 + b1)\ns = h @ W2 + b2\nloss = softmax_cross_entropy(s, y)",
      values: {
        X: [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]],
        W1: [[0.1, 0.2, -0.3, 0.4], [0.5, -0.6, 0.7, 0.1], [-0.2, 0.3, 0.1, -0.5]],
        b1: [0.1, 0.0, -0.1, 0.2],
        W2: [[0.3, -0.2, 0.1], [0.2, 0.4, -0.3], [-0.5, 0.1, 0.2], [0.1, 0.3, 0.4]],
        b2: [0.0, 0.1, -0.1],
        y: [0, 2],
      },
    },
    // The tiny CNN of docs/cnn.md: conv (two 3x3 edge filters) -> relu -> 2x2 max pool ->
    // linear -> cross-entropy on a 1x1x6x6 image.
    cnn: {
      expression: "h = relu(conv2d(x, w, b))\np = max_pool2d(h, kernel_size=2)\n" +
        "s = linear(reshape(p, shape=[1, 8]), W, c)\nloss = softmax_cross_entropy(s, y)",
      values: {
        x: [[[[0.1, 0.5, 0.9, 0.2, -0.4, 0.4], [0.0, 0.8, 1.0, 0.3, -0.5, 0.1],
              [-0.2, 0.6, 0.7, 0.1, -0.4, 0.25], [0.3, 0.9, 0.6, -0.1, -0.6, 0.0],
              [0.2, 0.4, 0.8, 0.0, -0.2, 0.3], [-0.1, 0.7, 0.5, -0.2, -0.7, 0.1]]]],
        w: [[[[1, 0, -1], [1, 0, -1], [1, 0, -1]]], [[[1, 1, 1], [0, 0, 0], [-1, -1, -1]]]],
        b: [0.0, 0.1],
        W: [[0.2, -0.1, 0.3, 0.0, 0.1, 0.2, -0.2, 0.1], [-0.3, 0.2, 0.1, 0.4, 0.0, -0.1, 0.2, 0.3],
            [0.1, 0.3, -0.2, 0.1, 0.2, 0.0, 0.1, -0.1]],
        c: [0.0, 0.1, -0.1],
        y: [1],
      },
    },
  };

  var SYMBOL = {
    add: "+", sub: "−", mul: "×", div: "÷", pow: "^", matmul: "@", neg: "−",
    maximum: "max", minimum: "min", identity: "=",
  };
  var INFIX = { add: "+", sub: "-", mul: "*", div: "/", pow: "**", matmul: "@" };

  // d out / d arg[k] for scalar gates, from the forward values in the trace.
  var LOCAL = {
    add: function () { return 1; },
    sub: function (a, o, k) { return k === 0 ? 1 : -1; },
    mul: function (a, o, k) { return a[1 - k]; },
    div: function (a, o, k) { return k === 0 ? 1 / a[1] : -a[0] / (a[1] * a[1]); },
    pow: function (a, o, k) {
      if (k === 0) { return a[1] * Math.pow(a[0], a[1] - 1); }
      return a[0] > 0 ? o * Math.log(a[0]) : null;
    },
    maximum: function (a, o, k) {
      return a[0] === a[1] ? 0.5 : ((a[k] > a[1 - k]) ? 1 : 0);
    },
    minimum: function (a, o, k) {
      return a[0] === a[1] ? 0.5 : ((a[k] < a[1 - k]) ? 1 : 0);
    },
    neg: function () { return -1; },
    identity: function () { return 1; },
    exp: function (a, o) { return o; },
    log: function (a) { return 1 / a[0]; },
    sqrt: function (a, o) { return 0.5 / o; },
    square: function (a) { return 2 * a[0]; },
    abs: function (a) { return a[0] > 0 ? 1 : (a[0] < 0 ? -1 : 0); },
    reciprocal: function (a) { return -1 / (a[0] * a[0]); },
    sigmoid: function (a, o) { return o * (1 - o); },
    tanh: function (a, o) { return 1 - o * o; },
    relu: function (a) { return a[0] > 0 ? 1 : 0; },
    sin: function (a) { return Math.cos(a[0]); },
    cos: function (a) { return -Math.sin(a[0]); },
  };
  // The local derivative in words, by op: generated from the op registry into ops.js
  // (python -m service.engine.ops.gen), loaded before this file.
  var LOCAL_TEXT = window.GradOps.localText;

  var $ = function (id) { return document.getElementById(id); };
  var state = { model: null, steps: [], step: -1, timer: null, lastRequest: null };

  // --- numbers and tensors ------------------------------------------------------------------

  function fmtNum(x) {
    if (x === null || x === undefined) { return "NaN"; }
    if (typeof x !== "number") { return String(x); }
    if (Number.isInteger(x) && Math.abs(x) < 1e6) { return String(x); }
    var ax = Math.abs(x);
    if (ax >= 1e-3 && ax < 1e6) { return String(Number(x.toPrecision(4))); }
    if (ax === 0) { return "0"; }
    return x.toExponential(2);
  }

  function shapeOf(v) {
    var shape = [];
    while (Array.isArray(v)) { shape.push(v.length); v = v[0]; }
    return shape;
  }

  function flat(v) {
    if (!Array.isArray(v)) { return [v]; }
    var out = [], stack = [v];
    while (stack.length) {
      var x = stack.pop();
      if (Array.isArray(x)) {
        for (var i = x.length - 1; i >= 0; i--) { stack.push(x[i]); }
      } else { out.push(x); }
    }
    return out;
  }

  function isScalar(v) { return typeof v === "number"; }

  function shapeText(shape) {
    return "(" + shape.join(", ") + (shape.length === 1 ? "," : "") + ")";
  }

  function shortTensor(v) {
    if (v === undefined) { return ""; }
    if (!Array.isArray(v)) { return fmtNum(v); }
    var shape = shapeOf(v), items = flat(v);
    if (shape.length === 1 && items.length <= 3) {
      return "[" + items.map(fmtNum).join(", ") + "]";
    }
    return shapeText(shape);
  }

  function fullTensorTable(v) {
    var table = document.createElement("table");
    table.className = "tensor";
    if (!Array.isArray(v)) {
      addRow(table, [v === null ? "NaN" : String(v)]);
      return table;
    }
    var shape = shapeOf(v);
    var rows;
    if (shape.length === 1) { rows = [v]; } else if (shape.length === 2) { rows = v; } else {
      var cols = shape[shape.length - 1];
      var items = flat(v);
      rows = [];
      for (var i = 0; i < items.length; i += cols) { rows.push(items.slice(i, i + cols)); }
    }
    rows.slice(0, 64).forEach(function (row) {
      addRow(table, row.slice(0, 64).map(function (x) { return x === null ? "NaN" : String(x); }));
    });
    return table;
  }

  function addRow(table, cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) {
      var td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }

  // --- the API ------------------------------------------------------------------------------

  function apiKey() { return $("api-key").value.trim(); }

  function api(method, path, body) {
    var headers = { Accept: "application/json" };
    if (body !== undefined) { headers["Content-Type"] = "application/json"; }
    var key = apiKey();
    if (key) { headers.Authorization = "Bearer " + key; }
    return fetch(path, {
      method: method, headers: headers, credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (resp) {
      return resp.text().then(function (text) {
        var parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
        return { ok: resp.ok, status: resp.status, body: parsed, text: text };
      });
    });
  }

  // --- the form -----------------------------------------------------------------------------

  var FIELD_ERRORS = {
    expression: ["expression", "expression-error"],
    graph: ["graph-json", "graph-error"],
    graph_id: ["graph-id", "graph-id-error"],
    values: ["values", "values-error"],
    upstream: ["upstream", "upstream-error"],
    api_key: ["api-key", "api-key-error"],
  };

  function clearErrors() {
    Object.keys(FIELD_ERRORS).forEach(function (k) {
      var f = FIELD_ERRORS[k];
      $(f[0]).removeAttribute("aria-invalid");
      var p = $(f[1]);
      p.textContent = "";
      p.hidden = true;
    });
    setStatus("");
  }

  function fieldError(field, message) {
    var f = FIELD_ERRORS[field];
    $(f[0]).setAttribute("aria-invalid", "true");
    var p = $(f[1]);
    p.textContent = p.textContent ? p.textContent + "\n" + message : message;
    p.hidden = false;
    if (field === "api_key") { $("key-box").open = true; }
  }

  function setStatus(text, bad) {
    var s = $("status");
    s.textContent = text;
    s.classList.toggle("bad", !!bad);
  }

  function source() { return $("source").value; }

  function showSource() {
    var src = source();
    document.querySelectorAll("[data-source]").forEach(function (el) {
      el.hidden = el.getAttribute("data-source") !== src;
    });
  }

  function formatValues(values) {
    var keys = Object.keys(values);
    return "{\n" + keys.map(function (k, i) {
      return "  " + JSON.stringify(k) + ": " + JSON.stringify(values[k]).replace(/,/g, ", ") +
        (i < keys.length - 1 ? "," : "");
    }).join("\n") + "\n}";
  }

  function loadPreset(name) {
    var p = PRESETS[name];
    $("source").value = "expression";
    showSource();
    $("expression").value = p.expression;
    $("values").value = formatValues(p.values);
    $("upstream").value = "";
    document.querySelectorAll(".preset").forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-preset") === name ? "true" : "false");
    });
    run();
  }

  function parseJSONField(field, id, required) {
    var text = $(id).value.trim();
    if (!text) {
      if (required) { fieldError(field, "required"); }
      return { ok: !required, value: undefined };
    }
    try {
      return { ok: true, value: JSON.parse(text) };
    } catch (e) {
      fieldError(field, "not valid JSON: " + e.message);
      return { ok: false };
    }
  }

  function buildRequest() {
    var body = { trace: true };
    var path = "/v1/gradients";
    var src = source(), spec = null;
    var ok = true;
    if (src === "expression") {
      body.expression = $("expression").value;
      if (!body.expression.trim()) { fieldError("expression", "type an expression"); ok = false; }
    } else if (src === "graph") {
      var g = parseJSONField("graph", "graph-json", true);
      ok = ok && g.ok;
      if (g.ok) { body.graph = spec = g.value; }
    } else {
      var id = $("graph-id").value.trim();
      if (!id) { fieldError("graph_id", "type a graph id (g-…)"); ok = false; }
      path = "/v1/graphs/" + encodeURIComponent(id) + "/gradients";
    }
    var v = parseJSONField("values", "values", false);
    ok = ok && v.ok;
    if (v.ok) {
      var values = v.value === undefined ? {} : v.value;
      if (values === null || typeof values !== "object" || Array.isArray(values)) {
        fieldError("values", "must be a JSON object: name → number or nested list");
        ok = false;
      }
      body.values = values;
    }
    var u = parseJSONField("upstream", "upstream", false);
    ok = ok && u.ok;
    if (u.ok && u.value !== undefined) { body.upstream = u.value; }
    if ($("check").checked) { body.check = true; }
    return ok ? { path: path, body: body, source: src, spec: spec,
                  graphId: src === "graph_id" ? $("graph-id").value.trim() : null } : null;
  }

  function run(evt) {
    if (evt) { evt.preventDefault(); }
    stopPlaying();
    clearErrors();
    var req = buildRequest();
    if (!req) {
      setStatus("Fix the marked fields.", true);
      finished();
      return Promise.resolve();
    }
    state.lastRequest = req;
    setStatus("Computing…");
    $("run").disabled = true;
    document.body.setAttribute("data-state", "busy");
    // A registered graph is loaded by id first (GET /v1/graphs/{id}): its spec names the
    // output and lets an error be drawn at its node.
    var load = req.source !== "graph_id" ? Promise.resolve(null) :
      api("GET", "/v1/graphs/" + encodeURIComponent(req.graphId));
    return load.then(function (spec) {
      if (spec && !spec.ok) { return spec; }
      if (spec) { req.spec = spec.body; }
      return api("POST", req.path, req.body);
    }).then(function (res) {
      $("run").disabled = false;
      if (!res.ok) { return showProblem(res, req); }
      var model = buildModel(res.body, req);
      if (render(model)) {
        setStatus("Output " + shortTensor(res.body.output) + " · " + model.nodes.length +
                  " nodes · cache " + res.body.cache);
      }
      if (state.descentFrom !== undefined) {
        setStatus("Gradient step (lr " + $("lr").value.trim() + "): output " +
                  shortTensor(state.descentFrom) + " → " + shortTensor(res.body.output));
      }
      if ($("jacobian").checked) { return loadJacobians(req); }
      $("jacobian-view").hidden = true;
    }).catch(function (e) {
      $("run").disabled = false;
      setStatus("Could not reach the service: " + e.message, true);
    }).then(function () {
      state.descentFrom = undefined;
      finished();
    });
  }

  // Tests (and anyone scripting the page) wait on these attributes of <body>.
  var runs = 0;
  function finished() {
    runs += 1;
    document.body.setAttribute("data-runs", String(runs));
    document.body.setAttribute("data-state", "idle");
  }

  // --- errors ---------------------------------------------------------------------------------

  function showProblem(res, req) {
    var p = res.body || {};
    var detail = p.detail || ("HTTP " + res.status);
    if (res.status === 401) {
      fieldError("api_key", detail);
      setStatus("The service wants an API key.", true);
      clearPicture();
      return;
    }
    if (res.status === 404 && req.source === "graph_id") {
      fieldError("graph_id", detail);
      setStatus("No such graph here (register it with POST /v1/graphs).", true);
      clearPicture();
      return null;
    }
    var errors = Array.isArray(p.errors) && p.errors.length ? p.errors : [{ loc: [], msg: detail }];
    var nodeId = null, placed = false;
    errors.forEach(function (err) {
      var loc = Array.isArray(err.loc) ? err.loc : [];
      var msg = err.msg || detail;
      var field = fieldFor(loc, req);
      if (field) {
        fieldError(field, field === "expression" ? withCaret(msg) : msg);
        placed = true;
      }
      if (loc[0] === "graph" && loc[1] === "nodes" && typeof loc[2] === "number" && req.spec &&
          Array.isArray(req.spec.nodes) && req.spec.nodes[loc[2]]) {
        nodeId = req.spec.nodes[loc[2]].id;
      }
      if (loc[0] === "values" && typeof loc[1] === "string") { nodeId = loc[1]; }
    });
    var m = /^(?:expression: )?(?:node|input) '([^']+)'/.exec(detail);
    if (m) { nodeId = m[1]; }
    setStatus(placed ? res.status + " " + (p.title || "error") + ": see the marked field." :
      detail + " (" + res.status + ")", true);
    return drawStructure(req, nodeId, detail);
  }

  function fieldFor(loc, req) {
    var head = loc[0];
    if (head === "expression") { return "expression"; }
    if (head === "graph") { return req.source === "graph_id" ? "graph_id" : "graph"; }
    if (head === "graph_id") { return "graph_id"; }
    if (head === "values" || head === "wrt") { return "values"; }
    if (head === "upstream") { return "upstream"; }
    if (req.source === "graph_id" && /graph/.test(String(head || ""))) { return "graph_id"; }
    return null;
  }

  // An expression's message names "(line L, column C)": show that line with a caret.
  function withCaret(msg) {
    var m = /\(line (\d+), column (\d+)\)/.exec(msg);
    if (!m) { return msg; }
    var lines = $("expression").value.split(/\r\n|\r|\n/);
    var line = lines[Number(m[1]) - 1];
    if (line === undefined || line.length > 200) { return msg; }
    return msg + "\n  " + line + "\n  " + " ".repeat(Math.max(0, Number(m[2]) - 1)) + "^";
  }

  // After an error about a node or a value, draw the graph's structure (no numbers) and mark
  // the node. The structure comes from the pasted spec, or from the public API: a registered
  // graph's spec, or registering the expression (idempotent; the same content hash).
  function drawStructure(req, nodeId, detail) {
    var done = function (spec) {
      if (!spec || !Array.isArray(spec.nodes)) { clearPicture(); return; }
      var model = modelFromSpec(spec);
      if (!model) { clearPicture(); return; }
      render(model);
      if (nodeId) { markError(nodeId, detail); }
    };
    if (!nodeId) { clearPicture(); return null; }
    if (req.source === "graph" || (req.source === "graph_id" && req.spec)) {
      done(req.spec);
      return null;
    }
    var call = req.source === "graph_id" ?
      api("GET", "/v1/graphs/" + encodeURIComponent(req.graphId)) :
      api("POST", "/v1/graphs", { expression: req.body.expression });
    return call.then(function (res) { done(res.ok ? res.body : null); })
      .catch(function () { clearPicture(); });
  }

  function clearPicture() {
    state.model = null;
    var svg = $("graph");
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    svg.setAttribute("width", "320");
    svg.setAttribute("height", "60");
    $("summary").textContent = "";
    $("narration").textContent = "";
    setStepButtons();
  }

  function markError(nodeId, detail) {
    var g = nodeEl(nodeId);
    if (!g) { return; }
    g.classList.add("has-error");
    var box = state.model.byId.get(nodeId);
    var t = svgEl("text", { class: "err", x: -box.w / 2, y: -box.h / 2 - 8 });
    t.textContent = "⚠ " + (detail.length > 60 ? detail.slice(0, 57) + "…" : detail);
    g.appendChild(t);
    g.setAttribute("aria-label", g.getAttribute("aria-label") + ". Error: " + detail);
  }

  // --- the model: nodes and wires from a trace ------------------------------------------------

  function buildModel(resp, req) {
    var trace = resp.trace || [];
    var values = req.body.values || {};
    var spec = req.spec || {};
    var nodes = [], edges = [];
    var byId = new Map();
    var traceIds = new Set(trace.map(function (t) { return t.id; }));
    var used = new Set();
    var addInput = function (name) {
      if (byId.has(name)) { return; }
      var n = { id: name, kind: "input", op: "input", value: values[name],
                grad: resp.gradients ? resp.gradients[name] : undefined,
                out: [], args: [] };
      nodes.push(n);
      byId.set(name, n);
    };
    trace.forEach(function (t) {
      (t.args || []).forEach(function (a) {
        if (typeof a === "string" && !traceIds.has(a)) { addInput(a); }
        if (typeof a === "string") { used.add(a); }
      });
    });
    trace.forEach(function (t) {
      var n = { id: t.id, kind: "op", op: t.op, value: t.value, grad: t.grad,
                shape: t.shape, out: [], args: t.args || [] };
      nodes.push(n);
      byId.set(t.id, n);
    });
    var output = spec.output;
    if (!output || !byId.has(output)) {
      var sinks = trace.filter(function (t) { return !used.has(t.id); });
      output = sinks.length ? sinks[sinks.length - 1].id : null;
    }
    if (!output) {  // the program is one input, e.g. "x"
      var names = Object.keys(resp.gradients || values);
      if (names.length) { addInput(names[0]); output = names[0]; }
    }
    trace.forEach(function (t) { wireArgs(t.id, t.args || [], nodes, byId, edges); });
    var upstream = req.body.upstream !== undefined ? req.body.upstream : 1;
    var model = { nodes: nodes, edges: edges, byId: byId, output: output,
                  outValue: resp.output, outGrad: upstream, check: resp.check || null,
                  structureOnly: false, gradients: resp.gradients || {} };
    edges.forEach(function (e) { e.grad = edgeGrad(model, e); });
    return model;
  }

  function modelFromSpec(spec) {
    var nodes = [], edges = [], byId = new Map();
    var specNodes = spec.nodes.filter(function (n) { return n && typeof n.id === "string"; });
    var ids = new Set(specNodes.map(function (n) { return n.id; }));
    var inputs = Array.isArray(spec.inputs) ? spec.inputs.map(String) :
      (spec.inputs && typeof spec.inputs === "object" ? Object.keys(spec.inputs) : []);
    specNodes.forEach(function (n) {
      (Array.isArray(n.args) ? n.args : []).forEach(function (a) {
        if (typeof a === "string" && !ids.has(a) && inputs.indexOf(a) < 0) { inputs.push(a); }
      });
    });
    inputs.forEach(function (name) {
      var n = { id: name, kind: "input", op: "input", out: [], args: [] };
      nodes.push(n);
      byId.set(name, n);
    });
    // Kahn's order so the layout sees arguments first; a cycle leaves nodes unplaced.
    var pending = specNodes.slice(), placed = new Set(inputs), guard = 0;
    while (pending.length && guard++ < specNodes.length + 1) {
      pending = pending.filter(function (n) {
        var args = Array.isArray(n.args) ? n.args : [];
        var ready = args.every(function (a) { return typeof a !== "string" || placed.has(a); });
        if (!ready) { return true; }
        var node = { id: n.id, kind: "op", op: String(n.op), out: [], args: args };
        nodes.push(node);
        byId.set(n.id, node);
        placed.add(n.id);
        return false;
      });
    }
    nodes.slice().forEach(function (n) {
      if (n.kind !== "op") { return; }
      wireArgs(n.id, n.args, nodes, byId, edges);
    });
    return { nodes: nodes, edges: edges, byId: byId, output: spec.output, structureOnly: true,
             check: null, gradients: {} };
  }

  // The edges into node `id` from its `args`: a constant arg becomes a node of its own; an
  // arg naming no known node draws no edge.
  function wireArgs(id, args, nodes, byId, edges) {
    args.forEach(function (a, k) {
      var from = a;
      if (typeof a !== "string") {
        from = "#const:" + id + ":" + k;
        var c = { id: from, kind: "const", op: "const", value: a, out: [], args: [] };
        nodes.push(c);
        byId.set(from, c);
      }
      if (!byId.has(from)) { return; }
      var e = { key: from + "->" + id + "#" + k, from: from, to: id, k: k };
      edges.push(e);
      byId.get(from).out.push(e);
    });
  }

  // The gradient flowing back along one wire (see the header comment).
  function edgeGrad(model, e) {
    var src = model.byId.get(e.from), dst = model.byId.get(e.to);
    if (src.kind === "const") { return { value: undefined }; }
    if (src.grad === undefined) { return { value: undefined }; }
    var argVals = dst.args.map(function (a) {
      return typeof a === "string" ? model.byId.get(a).value : a;
    });
    var scalar = isScalar(dst.value) && isScalar(dst.grad) && argVals.every(isScalar);
    if (scalar && LOCAL[dst.op]) {
      var local = LOCAL[dst.op](argVals, dst.value, e.k);
      if (local !== null && isFinite(local)) {
        return { value: local * dst.grad, local: local, upstream: dst.grad, exact: true };
      }
    }
    if (src.out.length === 1) {
      var res = { value: src.grad, upstream: dst.grad, exact: true };
      if (scalar && dst.grad !== 0) { res.local = src.grad / dst.grad; }
      return res;
    }
    return { value: src.grad, total: true };
  }

  // --- drawing ------------------------------------------------------------------------------

  function svgEl(name, attrs) {
    var el = document.createElementNS(SVGNS, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  }

  function nodeEl(id) {
    return $("graph").querySelector('g.node[data-id="' + CSS.escape(id) + '"]');
  }

  function nodeLabel(n) {
    if (n.kind === "input") { return n.id; }
    if (n.kind === "const") { return fmtNum(n.value); }
    return SYMBOL[n.op] || n.op;
  }

  function render(model) {
    stopPlaying();
    state.model = model;
    state.steps = [];
    state.step = -1;
    var svg = $("graph");
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    svg.classList.remove("stepping");
    if (model.nodes.length > MAX_DRAWN_NODES) {
      setStatus("The graph has " + model.nodes.length + " nodes; the playground draws at most " +
                MAX_DRAWN_NODES + ". The numbers are in the summary.", true);
      renderSummary(model);
      state.model.structureOnly = true;  // nothing drawn to step through
      setStepButtons();
      $("narration").textContent = "";
      return false;
    }
    model.nodes.forEach(function (n) {
      var label = nodeLabel(n);
      n.w = n.kind === "op" ? Math.max(56, 9 * Math.max(label.length, shortId(n.id).length) + 20)
        : Math.max(44, 8 * label.length + 20);
      n.h = n.kind === "const" ? 30 : 44;
    });
    var lay = window.GradLayout.layout(
      model.nodes.map(function (n) { return { id: n.id, kind: n.kind, width: n.w, height: n.h }; }),
      model.edges.map(function (e) { return { key: e.key, from: e.from, to: e.to }; }),
      { output: model.output, layerGap: allScalar(model) ? 165 : 200, rowGap: allScalar(model) ? 46 : 60, margin: 50 });
    model.layout = lay;
    var width = lay.width + 140, height = lay.height + 30;
    // Shrink a wide picture to the stage, down to 80% (past that, the stage scrolls).
    var room = $("stage").clientWidth - 4;
    var scale = room > 0 && width > room ? Math.max(0.8, room / width) : 1;
    svg.setAttribute("width", String(Math.ceil(width * scale)));
    svg.setAttribute("height", String(Math.ceil(height * scale)));
    svg.setAttribute("viewBox", "0 0 " + Math.ceil(width) + " " + Math.ceil(height));

    var edgeLayer = svgEl("g", { class: "edges" });
    var nodeLayer = svgEl("g", { class: "nodes" });
    svg.appendChild(edgeLayer);
    svg.appendChild(nodeLayer);

    model.edges.forEach(function (e) {
      var pts = lay.paths.get(e.key).slice();
      var src = model.byId.get(e.from), dst = model.byId.get(e.to);
      pts[0] = [pts[0][0] + src.w / 2, pts[0][1]];
      var last = pts.length - 1;
      pts[last] = [pts[last][0] - dst.w / 2, pts[last][1]];
      // Two wires from one value into one gate (x * x): bow them apart.
      var twin = dst.args.filter(function (a) { return a === e.from; }).length > 1;
      var bow = twin ? (e.k === 0 ? -14 : 14) : 0;
      var g = svgEl("g", { class: "edge", "data-edge": e.key, "data-from": e.from,
                           "data-to": e.to });
      var d = pathFor(pts, bow);
      g.appendChild(svgEl("path", { d: d, class: "hit" }));
      g.appendChild(svgEl("path", { d: d, class: "wire" }));
      // Labels sit on the wire near its source, as in the lecture's pictures; a value that
      // feeds several gates gets them near each gate instead, where the wires have parted.
      var seg = src.out.length > 1 ? last - 1 : 0;
      var lp = bezierAt(pts[seg], pts[seg + 1], src.out.length > 1 ? 0.6 : 0.4,
                        seg === 0 || seg + 1 === last ? bow : 0);
      var mx = lp[0], my = lp[1];
      if (!model.structureOnly) {
        var vText = shortTensor(src.value);
        var gText = e.grad && e.grad.value !== undefined ?
          "∂ " + shortTensor(e.grad.value) + (e.grad.total ? " Σ" : "") : null;
        var vt = svgEl("text", { class: "value", x: mx, y: my - 7, "data-kind": "value" });
        vt.textContent = vText;
        g.appendChild(vt);
        var gt = null;
        if (gText) {
          gt = svgEl("text", { class: "grad", x: mx, y: my + 17, "data-kind": "grad" });
          gt.textContent = gText;
          g.appendChild(gt);
        }
        edgeLayer.appendChild(g);  // in the document now, so the labels can be measured
        var lw = Math.max(textWidth(vt), gt ? textWidth(gt) : 0);
        // Keep the labels clear of both end nodes (and inside the picture), then back on
        // the wire at that x.
        var segEnd = pts[seg + 1][0] - (seg + 1 === last ? lw / 2 + 3 : -40);
        var lo = Math.max(lw / 2 + 4, pts[seg][0] + lw / 2 + 3);
        var nx = lo <= segEnd ? Math.min(Math.max(mx, lo), segEnd) : Math.max(lw / 2 + 4,
                                                                               (lo + segEnd) / 2);
        if (nx !== mx) {
          mx = nx;
          my = bezierYAtX(pts[seg], pts[seg + 1], mx, seg === 0 || seg + 1 === last ? bow : 0);
        }
        vt.setAttribute("x", mx);
        vt.setAttribute("y", my - 7);
        if (gt) { gt.setAttribute("x", mx); gt.setAttribute("y", my + 17); }
        if (Array.isArray(src.value) && vText.charAt(0) === "(") {
          heatmap(g, src.value, mx + textWidth(vt) / 2 + 5, my - 11);
        }
      }
      var title = svgEl("title");
      title.textContent = wireText(model, e);
      g.appendChild(title);
      g.addEventListener("mouseenter", function () { showEdgeDetails(e); });
      g.addEventListener("click", function () { showEdgeDetails(e); });
      edgeLayer.appendChild(g);
    });

    // The output wire: f's value and the gradient the backward pass starts from.
    var outNode = model.byId.get(model.output);
    if (outNode) {
      var op = lay.pos.get(outNode.id);
      var x0 = op.x + outNode.w / 2, y0 = op.y;
      var og = svgEl("g", { class: "edge out-wire", "data-edge": "output" });
      og.appendChild(svgEl("path", { d: "M" + x0 + "," + y0 + " H" + (x0 + 110) }));
      og.appendChild(svgEl("path", { d: "M" + (x0 + 102) + "," + (y0 - 5) + " L" + (x0 + 110) +
                                        "," + y0 + " L" + (x0 + 102) + "," + (y0 + 5) }));
      if (!model.structureOnly) {
        var ov = svgEl("text", { class: "value", x: x0 + 52, y: y0 - 7, "data-kind": "value" });
        ov.textContent = shortTensor(model.outValue);
        og.appendChild(ov);
        var ogr = svgEl("text", { class: "grad", x: x0 + 52, y: y0 + 17, "data-kind": "grad" });
        ogr.textContent = "∂ " + shortTensor(model.outGrad);
        og.appendChild(ogr);
      }
      edgeLayer.appendChild(og);
    }

    // Nodes in reading order (left to right, top to bottom): the Tab order of the picture.
    var ordered = model.nodes.slice().sort(function (p, q) {
      var a = lay.pos.get(p.id), b = lay.pos.get(q.id);
      return a.layer - b.layer || a.y - b.y;
    });
    ordered.forEach(function (n) {
      var pos = lay.pos.get(n.id);
      var cls = "node " + n.kind + (n.id === model.output ? " output" : "");
      var g = svgEl("g", { class: cls, "data-id": n.id, tabindex: "0", role: "button",
                           transform: "translate(" + pos.x + "," + pos.y + ")" });
      g.setAttribute("aria-label", nodeAria(n, model));
      g.appendChild(svgEl("rect", { x: -n.w / 2, y: -n.h / 2, width: n.w, height: n.h,
                                    rx: n.kind === "input" ? 6 : 14 }));
      var main = svgEl("text", { class: "op", x: 0, y: n.kind === "op" && showId(n) ? -1 : 5 });
      main.textContent = nodeLabel(n);
      g.appendChild(main);
      if (n.kind === "op" && showId(n)) {
        var sub = svgEl("text", { class: "nid", x: 0, y: 15 });
        sub.textContent = shortId(n.id);
        g.appendChild(sub);
      }
      if (n.kind === "input" && model.check && model.check[n.id]) {
        var c = model.check[n.id];
        var good = c.max_rel_error < 1e-6 || c.max_abs_error < 1e-8;
        var bt = svgEl("text", { class: "badge-text " + (good ? "ok" : "bad"),
                                 x: -n.w / 2, y: n.h / 2 + 14 });
        bt.textContent = (good ? "✓ check " : "✗ check ") + c.max_rel_error.toExponential(1);
        g.appendChild(bt);
      }
      var title = svgEl("title");
      title.textContent = nodeAria(n, model);
      g.appendChild(title);
      g.addEventListener("focus", function () { showNodeDetails(n); });
      g.addEventListener("mouseenter", function () { showNodeDetails(n); });
      g.addEventListener("click", function () { select(n); });
      g.addEventListener("keydown", function (ev) { nodeKey(ev, n, ordered); });
      nodeLayer.appendChild(g);
    });
    renderSummary(model);
    buildSteps(model);
    setStepButtons();
    $("narration").textContent = model.structureOnly ? "" :
      "Press “Step mode” to play the forward pass node by node, then the backward pass wire " +
      "by wire.";
    return true;
  }

  function allScalar(model) {
    return model.nodes.every(function (n) { return n.value === undefined || isScalar(n.value); });
  }

  function showId(n) { return n.op !== undefined && !/^%\d+$/.test(n.id); }
  function shortId(id) { return id.length > 14 ? id.slice(0, 13) + "…" : id; }

  function bezierAt(a, b, t, bow) {
    var dx = (b[0] - a[0]) / 2, u = 1 - t;
    var c1 = [a[0] + dx, a[1] + bow], c2 = [b[0] - dx, b[1] + bow];
    var f = function (i) {
      return u * u * u * a[i] + 3 * u * u * t * c1[i] + 3 * u * t * t * c2[i] + t * t * t * b[i];
    };
    return [f(0), f(1)];
  }

  function textWidth(t) {
    try { return t.getComputedTextLength(); } catch (e) { return 7.5 * t.textContent.length; }
  }

  // The y of the wire's curve at x (x grows with t on these curves: bisect).
  function bezierYAtX(a, b, x, bow) {
    var lo = 0, hi = 1;
    for (var i = 0; i < 24; i++) {
      var mid = (lo + hi) / 2;
      if (bezierAt(a, b, mid, bow)[0] < x) { lo = mid; } else { hi = mid; }
    }
    return bezierAt(a, b, (lo + hi) / 2, bow)[1];
  }

  function pathFor(pts, bow) {
    var d = "M" + pts[0][0] + "," + pts[0][1];
    for (var i = 1; i < pts.length; i++) {
      var a = pts[i - 1], b = pts[i];
      var dx = (b[0] - a[0]) / 2;
      var by = i === pts.length - 1 || i === 1 ? bow : 0;
      d += " C" + (a[0] + dx) + "," + (a[1] + by) + " " + (b[0] - dx) + "," + (b[1] + by) + " " +
        b[0] + "," + b[1];
    }
    return d;
  }

  // A small heat-map of a tensor's first rows and columns (dark = large magnitude; the sign
  // is the hue, so the numbers in the details panel stay the reference).
  function heatmap(g, v, cx, cy) {
    var shape = shapeOf(v);
    var rows = shape.length >= 2 ? shape[shape.length - 2] : 1;
    var cols = shape[shape.length - 1];
    var items = flat(v);
    var r = Math.min(rows, 6), c = Math.min(cols, 8), cell = 6;
    var maxAbs = 0;
    items.forEach(function (x) { if (x !== null) { maxAbs = Math.max(maxAbs, Math.abs(x)); } });
    var x0 = cx, y0 = cy - (r * cell) / 2;
    var hm = svgEl("g", { class: "heatmap", "aria-hidden": "true" });
    for (var i = 0; i < r; i++) {
      for (var j = 0; j < c; j++) {
        var x = items[i * cols + j];
        var t = maxAbs > 0 && x !== null ? Math.abs(x) / maxAbs : 0;
        var light = Math.round(96 - 60 * t);
        var hue = x !== null && x < 0 ? 215 : 25;
        hm.appendChild(svgEl("rect", { x: x0 + j * cell, y: y0 + i * cell, width: cell - 1,
                                       height: cell - 1,
                                       fill: "hsl(" + hue + ",70%," + light + "%)" }));
      }
    }
    g.appendChild(hm);
  }

  function wireText(model, e) {
    var src = model.byId.get(e.from);
    var text = e.from + " → " + e.to + ": value " + shortTensor(src.value);
    if (e.grad && e.grad.value !== undefined) {
      text += ", gradient " + shortTensor(e.grad.value) + (e.grad.total ? " (total over " +
        src.out.length + " uses)" : "");
    }
    return text;
  }

  function nodeAria(n, model) {
    var what = n.kind === "input" ? "input " + n.id : n.kind === "const" ? "constant " +
      fmtNum(n.value) : "node " + n.id + ": " + n.op + "(" + n.args.map(function (a) {
        return typeof a === "string" ? a : fmtNum(a);
      }).join(", ") + ")";
    if (n.id === model.output) { what += ", the output"; }
    if (!model.structureOnly && n.kind !== "const") {
      what += "; value " + shortTensor(n.value);
      if (n.grad !== undefined) { what += ", gradient " + shortTensor(n.grad); }
    }
    return what;
  }

  function nodeKey(ev, n, ordered) {
    var i = ordered.indexOf(n);
    var target = null;
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(n); return; }
    if (ev.key === "ArrowRight" || ev.key === "ArrowDown") { target = ordered[i + 1]; }
    if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") { target = ordered[i - 1]; }
    if (target) {
      ev.preventDefault();
      nodeEl(target.id).focus();
    }
  }

  function select(n) {
    document.querySelectorAll("#graph .node.selected").forEach(function (el) {
      el.classList.remove("selected");
    });
    var el = nodeEl(n.id);
    if (el) { el.classList.add("selected"); }
    showNodeDetails(n);
  }

  function showNodeDetails(n) {
    var box = $("details");
    box.textContent = "";
    var h = document.createElement("h3");
    var model = state.model;
    h.textContent = n.kind === "op" ? n.id + " = " + n.op + "(" + n.args.map(function (a) {
      return typeof a === "string" ? a : fmtNum(a);
    }).join(", ") + ")" : (n.kind === "input" ? "input " + n.id : "constant");
    box.appendChild(h);
    if (model && model.structureOnly) { return; }
    tensorBlock(box, "value", n.value);
    if (n.grad !== undefined && n.kind !== "const") {
      tensorBlock(box, "∂ gradient (d output / d " + n.id + ")", n.grad);
    }
  }

  function showEdgeDetails(e) {
    var model = state.model;
    if (!model) { return; }
    var src = model.byId.get(e.from);
    var box = $("details");
    box.textContent = "";
    var h = document.createElement("h3");
    h.textContent = "wire " + (src.kind === "const" ? fmtNum(src.value) : e.from) + " → " + e.to;
    box.appendChild(h);
    if (model.structureOnly) { return; }
    tensorBlock(box, "value", src.value);
    if (e.grad && e.grad.value !== undefined) {
      tensorBlock(box, e.grad.total ? "∂ gradient (total of " + src.out.length + " uses)" :
        "∂ gradient along this wire", e.grad.value);
    }
  }

  function tensorBlock(box, label, v) {
    var p = document.createElement("p");
    p.textContent = label + (Array.isArray(v) ? " " + shapeText(shapeOf(v)) : "") + ":";
    box.appendChild(p);
    box.appendChild(fullTensorTable(v));
  }

  function renderSummary(model) {
    var box = $("summary");
    box.textContent = "";
    if (model.structureOnly) { return; }
    var h = document.createElement("h3");
    h.textContent = "Output and gradients";
    box.appendChild(h);
    var table = document.createElement("table");
    var head = document.createElement("tr");
    ["", "value", "∂ gradient"].concat(model.check ? ["check (rel. error)"] : [])
      .forEach(function (t) {
        var th = document.createElement("th");
        th.textContent = t;
        head.appendChild(th);
      });
    table.appendChild(head);
    var row = function (name, value, grad, check) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      th.textContent = name;
      tr.appendChild(th);
      [shortTensor(value), grad === undefined ? "—" : shortTensor(grad)].forEach(function (t, i) {
        var td = document.createElement("td");
        td.textContent = t;
        td.className = i === 0 ? "v" : "g";
        tr.appendChild(td);
      });
      if (model.check) {
        var td = document.createElement("td");
        if (check) {
          var good = check.max_rel_error < 1e-6 || check.max_abs_error < 1e-8;
          var s = document.createElement("span");
          s.className = "badge " + (good ? "ok" : "bad");
          s.textContent = (good ? "✓ " : "✗ ") + check.max_rel_error.toExponential(1);
          td.appendChild(s);
        }
        tr.appendChild(td);
      }
      table.appendChild(tr);
    };
    row("output", model.outValue, model.outGrad, null);
    model.nodes.forEach(function (n) {
      if (n.kind === "input") { row(n.id, n.value, n.grad, model.check && model.check[n.id]); }
    });
    box.appendChild(table);
  }

  // --- Jacobians ------------------------------------------------------------------------------

  function loadJacobians(req) {
    var body = Object.assign({}, req.body, { trace: false, check: false, jacobian: true });
    delete body.upstream;
    var view = $("jacobian-view");
    view.hidden = false;
    view.textContent = "Computing Jacobians…";
    return api("POST", req.path, body).then(function (res) {
      view.textContent = "";
      var h = document.createElement("h3");
      h.textContent = "Jacobians: d output / d input (rows: output elements, columns: input " +
        "elements)";
      view.appendChild(h);
      if (!res.ok) {
        var p = document.createElement("p");
        p.className = "error";
        p.textContent = (res.body && res.body.detail) || ("HTTP " + res.status);
        view.appendChild(p);
        return;
      }
      var outShape = shapeOf(res.body.output);
      var outSize = flat(res.body.output).length;
      Object.keys(res.body.jacobians || {}).forEach(function (name) {
        var jac = res.body.jacobians[name];
        var items = flat(jac);
        var cols = outSize ? items.length / outSize : 0;
        var sec = document.createElement("div");
        sec.className = "jac";
        sec.setAttribute("data-input", name);
        var cap = document.createElement("p");
        cap.textContent = "∂output/∂" + name + "  " + shapeText(shapeOf(jac)) + " = output " +
          shapeText(outShape) + " × " + name + " " + shapeText(shapeOf(jac).slice(outShape.length));
        sec.appendChild(cap);
        var rows = [];
        for (var i = 0; i < outSize && i < 64; i++) { rows.push(items.slice(i * cols, i * cols + cols)); }
        sec.appendChild(fullTensorTable(rows.length === 1 && cols === 1 ? rows[0][0] : rows));
        view.appendChild(sec);
      });
    });
  }

  // --- step mode ------------------------------------------------------------------------------

  function argText(model, a) {
    if (typeof a !== "string") { return fmtNum(a); }
    var n = model.byId.get(a);
    return isScalar(n.value) ? fmtNum(n.value) : a + shapeText(shapeOf(n.value));
  }

  function forwardText(model, n) {
    var args = n.args;
    var lhs = n.id + " = ";
    if (INFIX[n.op] && args.length === 2) {
      var names = args.map(function (a) { return typeof a === "string" ? a : fmtNum(a); });
      lhs += names[0] + " " + INFIX[n.op] + " " + names[1];
    } else {
      lhs += n.op + "(" + args.map(function (a) {
        return typeof a === "string" ? a : fmtNum(a);
      }).join(", ") + ")";
    }
    var nums = args.map(function (a) { return argText(model, a); });
    var eq = INFIX[n.op] && args.length === 2 ? nums[0] + " " + INFIX[n.op] + " " + nums[1] :
      n.op + "(" + nums.join(", ") + ")";
    return "forward: " + lhs + " = " + eq + " = " + inlineTensor(n.value);
  }

  var TENSOR_RULE = {
    matmul: function (A, B, k, g) {
      var sa = shapeOf(A), sb = shapeOf(B);
      if (sa.length === 2 && sb.length === 1) {
        return k === 0 ? "g·xᵀ: " + shapeText(shapeOf(g)) + " ⊗ " + shapeText(sb) + " → " +
          shapeText(sa) : "Wᵀ·g: " + shapeText(sa.slice().reverse()) + " · " +
          shapeText(shapeOf(g)) + " → " + shapeText(sb);
      }
      return k === 0 ? "g·Bᵀ: " + shapeText(shapeOf(g)) + " · " +
        shapeText(sb.slice().reverse()) + " → " + shapeText(sa) :
        "Aᵀ·g: " + shapeText(sa.slice().reverse()) + " · " + shapeText(shapeOf(g)) + " → " +
        shapeText(sb);
    },
  };

  function backwardText(model, e) {
    var dst = model.byId.get(e.to), src = model.byId.get(e.from);
    var gate = (SYMBOL[dst.op] || dst.op) + " gate" + (showId(dst) ? " (" + dst.id + ")" : "");
    var r = e.grad || {};
    if (r.local !== undefined && r.upstream !== undefined && isScalar(r.upstream)) {
      return "backward at " + gate + ": ∂" + e.from + " = local " + fmtNum(r.local) +
        (LOCAL_TEXT[dst.op] ? " [" + LOCAL_TEXT[dst.op] + "]" : "") + " × upstream " +
        fmtNum(r.upstream) + " = " + fmtNum(r.value);
    }
    var argVals = dst.args.map(function (a) {
      return typeof a === "string" ? model.byId.get(a).value : a;
    });
    var rule = TENSOR_RULE[dst.op] ? TENSOR_RULE[dst.op](argVals[0], argVals[1], e.k, dst.grad) :
      elementwiseRule(dst, argVals, e.k);
    return "backward at " + gate + ": ∂" + e.from + " = " + rule + " = " +
      inlineTensor(r.value) + (r.total ? " (Σ over " + src.out.length + " uses)" : "");
  }

  // The rule at a tensor gate, in words and shapes (the numbers come from the trace).
  function elementwiseRule(dst, argVals, k) {
    var gs = shapeText(shapeOf(dst.grad));
    var mine = shapeOf(argVals[k]);
    var sum = shapeText(mine) !== gs ? ", summed back to " + shapeText(mine) : "";
    var other = argVals[1 - k];
    switch (dst.op) {
      case "add": return "upstream " + gs + " passed through" + sum;
      case "sub": return (k === 0 ? "" : "−") + "upstream " + gs + sum;
      case "mul": return "other input ⊙ upstream " + gs + sum;
      case "div": return (k === 0 ? "upstream / b" : "−upstream·a/b²") + " " + gs + sum;
      case "pow":
        return k === 0 && isScalar(other) ? fmtNum(other) + "·x^" + fmtNum(other - 1) +
          " ⊙ upstream " + gs + sum : "local ⊙ upstream " + gs + sum;
      case "sum": case "mean":
        return "upstream " + gs + " broadcast to " + shapeText(mine) +
          (dst.op === "mean" ? " / n" : "");
      default:
        return (LOCAL_TEXT[dst.op] ? "local " + LOCAL_TEXT[dst.op] + " ⊙ " : "vjp of " +
                dst.op + " on ") + "upstream " + gs + (sum || " → " + shapeText(mine));
    }
  }

  // A small tensor written out (the lecture's dW = [[0.088, 0.176], [0.104, 0.208]]).
  function inlineTensor(v) {
    if (!Array.isArray(v) || flat(v).length > 8) { return shortTensor(v); }
    var show = function (x) {
      return Array.isArray(x) ? "[" + x.map(show).join(", ") + "]" : fmtNum(x);
    };
    return show(v);
  }

  function buildSteps(model) {
    var steps = [];
    if (model.structureOnly) { state.steps = steps; return; }
    var inputs = model.nodes.filter(function (n) { return n.kind !== "op"; });
    var inputEdges = [];
    inputs.forEach(function (n) { n.out.forEach(function (e) { inputEdges.push(e.key); }); });
    steps.push({ values: inputEdges, node: null, text: "inputs: " + inputs.filter(function (n) {
      return n.kind === "input";
    }).map(function (n) { return n.id + " = " + inlineTensor(n.value); }).join(", ") });
    model.nodes.forEach(function (n) {
      if (n.kind !== "op") { return; }
      var keys = n.out.map(function (e) { return e.key; });
      if (n.id === model.output) { keys.push("output"); }
      steps.push({ values: keys, node: n.id, text: forwardText(model, n) });
    });
    steps.push({ grads: ["output"], edge: "output",
                 text: "backward: start at the output with ∂ = " + shortTensor(model.outGrad) +
                   " (d f / d f)" });
    var ops = model.nodes.filter(function (n) { return n.kind === "op"; }).reverse();
    ops.forEach(function (n) {
      model.edges.forEach(function (e) {
        if (e.to !== n.id || model.byId.get(e.from).kind === "const") { return; }
        if (!e.grad || e.grad.value === undefined) { return; }
        steps.push({ grads: [e.key], edge: e.key, node: n.id, text: backwardText(model, e) });
      });
    });
    var grads = model.nodes.filter(function (n) { return n.kind === "input" && n.grad !== undefined; });
    steps.push({ text: "done: " + grads.map(function (n) {
      return "∂" + n.id + " = " + inlineTensor(n.grad);
    }).join(", ") });
    state.steps = steps;
  }

  function showStep(i) {
    var model = state.model;
    if (!model || !state.steps.length) { return; }
    state.step = Math.max(0, Math.min(i, state.steps.length - 1));
    var svg = $("graph");
    svg.classList.add("stepping");
    var shownV = new Set(), shownG = new Set();
    for (var s = 0; s <= state.step; s++) {
      (state.steps[s].values || []).forEach(function (k) { shownV.add(k); });
      (state.steps[s].grads || []).forEach(function (k) { shownG.add(k); });
    }
    svg.querySelectorAll("g.edge").forEach(function (g) {
      var key = g.getAttribute("data-edge");
      g.querySelectorAll("[data-kind=value], .heatmap").forEach(function (t) {
        t.classList.toggle("hidden-step", !shownV.has(key));
      });
      g.querySelectorAll("[data-kind=grad]").forEach(function (t) {
        t.classList.toggle("hidden-step", !shownG.has(key));
      });
      g.classList.toggle("current", state.steps[state.step].edge === key);
    });
    svg.querySelectorAll("g.node").forEach(function (g) {
      g.classList.toggle("current", state.steps[state.step].node === g.getAttribute("data-id"));
    });
    $("narration").textContent = "Step " + (state.step + 1) + "/" + state.steps.length + " — " +
      state.steps[state.step].text;
    setStepButtons();
  }

  function showAll() {
    stopPlaying();
    state.step = -1;
    var svg = $("graph");
    svg.classList.remove("stepping");
    svg.querySelectorAll(".hidden-step").forEach(function (el) { el.classList.remove("hidden-step"); });
    svg.querySelectorAll(".current").forEach(function (el) { el.classList.remove("current"); });
    $("narration").textContent = "";
    setStepButtons();
  }

  function setStepButtons() {
    var has = state.steps.length > 0;
    $("descend").disabled = !state.model || !!state.model.structureOnly;
    var stepping = state.step >= 0;
    $("step-start").disabled = !has;
    $("step-reset").disabled = !stepping;
    $("step-back").disabled = !stepping || state.step === 0;
    $("step-next").disabled = !stepping || state.step >= state.steps.length - 1;
    $("step-play").disabled = !has;
  }

  function stopPlaying() {
    if (state.timer) { clearInterval(state.timer); state.timer = null; }
    $("step-play").setAttribute("aria-pressed", "false");
    $("step-play").textContent = "Play";
  }

  function togglePlay() {
    if (state.timer) { stopPlaying(); return; }
    if (state.step < 0 || state.step >= state.steps.length - 1) { showStep(0); }
    $("step-play").setAttribute("aria-pressed", "true");
    $("step-play").textContent = "Pause";
    state.timer = setInterval(function () {
      if (state.step >= state.steps.length - 1) { stopPlaying(); return; }
      showStep(state.step + 1);
    }, 1100);
  }

  // --- a step of gradient descent: W ← W − lr·∂W (what the gradient is for) --------------------

  function descend() {
    var model = state.model;
    var lr = Number($("lr").value);
    if (!model || model.structureOnly || !isFinite(lr)) {
      setStatus("Compute first, with a numeric lr.", true);
      return null;
    }
    var values;
    try { values = JSON.parse($("values").value); } catch (e) { return run(); }
    var step = function (v, g) {
      if (Array.isArray(v) && Array.isArray(g)) {
        return v.map(function (x, i) { return step(x, g[i]); });
      }
      if (typeof v === "number" && typeof g === "number") {
        return Number((v - lr * g).toPrecision(12));
      }
      if (Array.isArray(v) && typeof g === "number") {  // a broadcast scalar gradient
        return v.map(function (x) { return step(x, g); });
      }
      return v;
    };
    Object.keys(values).forEach(function (name) {
      var g = model.gradients[name];
      if (g !== undefined && g !== null) { values[name] = step(values[name], g); }
    });
    state.descentFrom = model.outValue;
    $("values").value = formatValues(values);
    return run();
  }

  // --- wiring -------------------------------------------------------------------------------

  function init() {
    try {
      var saved = window.sessionStorage.getItem(KEY_STORE);
      if (saved) { $("api-key").value = saved; }
    } catch (e) { /* storage disabled: the key lives in the field only */ }
    $("api-key").addEventListener("change", function () {
      try {
        if (apiKey()) { window.sessionStorage.setItem(KEY_STORE, apiKey()); } else {
          window.sessionStorage.removeItem(KEY_STORE);
        }
      } catch (e) { /* ignore */ }
    });
    $("controls").addEventListener("submit", run);
    $("source").addEventListener("change", showSource);
    document.querySelectorAll(".preset").forEach(function (b) {
      b.addEventListener("click", function () { loadPreset(b.getAttribute("data-preset")); });
    });
    $("check").addEventListener("change", function () { if (state.model) { run(); } });
    $("jacobian").addEventListener("change", function () { if (state.model) { run(); } });
    $("step-start").addEventListener("click", function () { stopPlaying(); showStep(0); });
    $("step-next").addEventListener("click", function () { stopPlaying(); showStep(state.step + 1); });
    $("step-back").addEventListener("click", function () { stopPlaying(); showStep(state.step - 1); });
    $("step-reset").addEventListener("click", showAll);
    $("step-play").addEventListener("click", togglePlay);
    $("descend").addEventListener("click", descend);
    // Ctrl/Cmd+Enter in a text field computes, as in a notebook.
    ["expression", "graph-json", "values"].forEach(function (id) {
      $(id).addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { run(ev); }
      });
    });
    showSource();
    setStepButtons();
    var hash = window.location.hash.replace(/^#/, "");
    loadPreset(PRESETS[hash] ? hash : "add-mul");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else { init(); }
})();
