/* gradserve playground: the training view. The CS231n spiral (3 classes, 2-D) trained by
   POST /v1/mlp/step, one request per animation frame, the optimizer state sent back each
   time (the server keeps nothing). The decision regions are the network's forward pass,
   computed here on a grid from the weights the last answer returned; the loss curve is the
   answers' "losses". No library; elements are built with DOM and canvas calls only. */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var SVG = "http://www.w3.org/2000/svg";
  var KEY_STORE = "gradserve.apiKey";
  var POINTS = 100;  // per class
  var CLASSES = 3;
  var COLORS = [[200, 60, 50], [40, 130, 60], [40, 90, 200]];
  var GRID = 72;  // cells per side of the decision-region image

  // --- data and initial weights: seeded, so every page load is the same run ------------------

  function mulberry32(seed) {
    return function () {
      seed = (seed + 0x6d2b79f5) | 0;
      var t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function gauss(rand) {
    var u = 1 - rand(), v = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  function spiral(rand) {
    var x = [], y = [];
    for (var j = 0; j < CLASSES; j++) {
      for (var i = 0; i < POINTS; i++) {
        var r = i / (POINTS - 1);
        var t = 4 * j + 4 * i / (POINTS - 1) + 0.2 * gauss(rand);
        x.push([r * Math.sin(t), r * Math.cos(t)]);
        y.push(j);
      }
    }
    return { x: x, y: y };
  }

  function matrix(rows, cols, scale, rand) {
    var m = [];
    for (var i = 0; i < rows; i++) {
      var row = [];
      for (var j = 0; j < cols; j++) { row.push(scale * gauss(rand)); }
      m.push(row);
    }
    return m;
  }

  function zeros(n) { var v = []; for (var i = 0; i < n; i++) { v.push(0); } return v; }

  function initialLayers(hidden) {
    var rand = mulberry32(1);
    return [
      { weight: matrix(hidden, 2, 0.5, rand), bias: zeros(hidden), activation: "relu" },
      { weight: matrix(CLASSES, hidden, 0.1, rand), bias: zeros(CLASSES),
        activation: "identity" },
    ];
  }

  var DATA = spiral(mulberry32(0));

  // --- the run: weights, optimizer state, losses ---------------------------------------------

  var run = { layers: null, state: null, stateType: null, losses: [], requests: 0,
              running: false, busy: false };

  function reset() {
    var hidden = parseInt($("hidden").value, 10);
    if (!(hidden >= 1 && hidden <= 512)) { hidden = 100; $("hidden").value = "100"; }
    run.layers = initialLayers(hidden);
    run.state = null;
    run.stateType = null;
    run.losses = [];
    publish();
    draw();
    status("Ready: " + DATA.x.length + " points, 2 → " + hidden + " → 3.");
  }

  function optimizer() {
    var type = $("optimizer").value;
    var body = { type: type };
    var lr = Number($("train-lr").value.trim());
    body.lr = lr;
    if (type === "sgd") { body.momentum = 0.9; }
    return body;
  }

  function apiKey() { return $("train-api-key").value.trim(); }

  function post(path, body) {
    var headers = { Accept: "application/json", "Content-Type": "application/json" };
    if (apiKey()) { headers.Authorization = "Bearer " + apiKey(); }
    return fetch(path, { method: "POST", headers: headers, credentials: "omit",
                         body: JSON.stringify(body) }).then(function (resp) {
      return resp.text().then(function (text) {
        var parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
        return { ok: resp.ok, status: resp.status, body: parsed, text: text };
      });
    });
  }

  function showLrError(msg) {
    var err = $("train-lr-error");
    err.textContent = msg || "";
    err.hidden = !msg;
    if (msg) { $("train-lr").setAttribute("aria-invalid", "true"); } else {
      $("train-lr").removeAttribute("aria-invalid");
    }
  }

  /* One POST /v1/mlp/step; resolves true when it was applied. */
  function request() {
    var opt = optimizer();
    if (!(isFinite(opt.lr) && opt.lr >= 0) || $("train-lr").value.trim() === "") {
      showLrError("lr must be a finite number ≥ 0");
      return Promise.resolve(false);
    }
    showLrError("");
    if (run.stateType !== opt.type) { run.state = null; }  // a new optimizer: a fresh state
    var steps = Math.max(1, Math.min(1000, parseInt($("per-request").value, 10) || 25));
    var body = { layers: run.layers, inputs: DATA.x,
                 loss: { type: "softmax_cross_entropy", targets: DATA.y },
                 optimizer: opt, steps: steps };
    if (run.state) { body.state = run.state; }
    run.busy = true;
    return post("/v1/mlp/step", body).then(function (r) {
      run.busy = false;
      if (!r.ok || !r.body || !r.body.layers) {
        var detail = r.body && (r.body.detail || r.body.error) || r.text || ("HTTP " + r.status);
        var locs = r.body && r.body.errors ? r.body.errors.map(function (e) {
          return (e.loc || []).join("."); }) : [];
        if (locs.some(function (l) { return /(^|\.)lr$/.test(l); })) { showLrError(detail); }
        status("The server said " + r.status + ": " + detail, true);
        return false;
      }
      run.layers = r.body.layers;
      run.state = r.body.state;
      run.stateType = opt.type;
      run.losses = run.losses.concat(r.body.losses);
      run.requests += 1;
      publish();
      draw();
      return true;
    }, function (e) {
      run.busy = false;
      status("No answer: " + e, true);
      return false;
    });
  }

  function loop() {
    if (!run.running) { return; }
    request().then(function (ok) {
      if (!ok) { stop(); return; }
      if (run.running) { window.requestAnimationFrame(loop); }
    });
  }

  function start() {
    if (run.running) { stop(); return; }
    run.running = true;
    $("train-start").textContent = "Pause";
    $("train-start").setAttribute("aria-pressed", "true");
    loop();
  }

  function stop() {
    run.running = false;
    $("train-start").textContent = "Train";
    $("train-start").setAttribute("aria-pressed", "false");
  }

  // --- drawing -------------------------------------------------------------------------------

  function scores(point) {
    var l0 = run.layers[0], l1 = run.layers[1];
    var h = [];
    for (var i = 0; i < l0.bias.length; i++) {
      var z = l0.bias[i] + l0.weight[i][0] * point[0] + l0.weight[i][1] * point[1];
      h.push(z > 0 ? z : 0);
    }
    var out = [];
    for (var k = 0; k < l1.bias.length; k++) {
      var s = l1.bias[k];
      for (var j = 0; j < h.length; j++) { s += l1.weight[k][j] * h[j]; }
      out.push(s);
    }
    return out;
  }

  function argmax(v) {
    var best = 0;
    for (var i = 1; i < v.length; i++) { if (v[i] > v[best]) { best = i; } }
    return best;
  }

  function accuracy() {
    var right = 0;
    for (var i = 0; i < DATA.x.length; i++) {
      if (argmax(scores(DATA.x[i])) === DATA.y[i]) { right += 1; }
    }
    return right / DATA.x.length;
  }

  function drawRegions() {
    var canvas = $("regions");
    var ctx = canvas.getContext("2d");
    var size = canvas.width, cell = size / GRID;
    for (var gy = 0; gy < GRID; gy++) {
      for (var gx = 0; gx < GRID; gx++) {
        var p = [-1.1 + 2.2 * (gx + 0.5) / GRID, 1.1 - 2.2 * (gy + 0.5) / GRID];
        var c = COLORS[argmax(scores(p))];
        ctx.fillStyle = "rgb(" + c.map(function (v) { return Math.round(v + (255 - v) * 0.7); })
          .join(",") + ")";
        ctx.fillRect(gx * cell, gy * cell, cell + 1, cell + 1);
      }
    }
    for (var i = 0; i < DATA.x.length; i++) {
      var x = (DATA.x[i][0] + 1.1) / 2.2 * size, y = (1.1 - DATA.x[i][1]) / 2.2 * size;
      ctx.beginPath();
      ctx.arc(x, y, 3, 0, 2 * Math.PI);
      ctx.fillStyle = "rgb(" + COLORS[DATA.y[i]].join(",") + ")";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }

  function svg(name, attrs) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    return el;
  }

  function drawLoss() {
    var box = $("loss-curve");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    var w = Number(box.getAttribute("width")), h = Number(box.getAttribute("height"));
    var pad = 30;
    box.appendChild(svg("line", { x1: pad, y1: h - pad, x2: w - 5, y2: h - pad, "class": "axis" }));
    box.appendChild(svg("line", { x1: pad, y1: 5, x2: pad, y2: h - pad, "class": "axis" }));
    var n = run.losses.length;
    if (!n) { return; }
    var top = Math.max.apply(null, run.losses.slice(0, Math.min(n, 50)));
    var every = Math.max(1, Math.ceil(n / 400));
    var pts = [];
    for (var i = 0; i < n; i += every) {
      var x = pad + (w - pad - 5) * (n > 1 ? i / (n - 1) : 0);
      var y = (h - pad) - (h - pad - 5) * Math.min(run.losses[i] / top, 1);
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    box.appendChild(svg("polyline", { points: pts.join(" "), "class": "loss" }));
    var label = svg("text", { x: pad + 4, y: 14 });
    label.textContent = "loss (max " + top.toPrecision(3) + ")";
    box.appendChild(label);
    var steps = svg("text", { x: w - 70, y: h - pad + 16 });
    steps.textContent = n + " steps";
    box.appendChild(steps);
  }

  function draw() {
    drawRegions();
    drawLoss();
    var acc = accuracy();
    document.body.setAttribute("data-accuracy", acc.toFixed(4));
    $("accuracy").textContent = "training accuracy " + (100 * acc).toFixed(1) + "%";
    var last = run.losses.length ? run.losses[run.losses.length - 1] : null;
    $("loss-text").textContent = last === null ? "loss —" :
      "loss " + last.toPrecision(4) + " after " + run.losses.length + " steps, " +
      run.requests + " requests";
  }

  function publish() {
    var b = document.body;
    b.setAttribute("data-steps", String(run.losses.length));
    b.setAttribute("data-requests", String(run.requests));
    b.setAttribute("data-state-step", String(run.state ? run.state.step : 0));
  }

  function status(msg, error) {
    var el = $("train-status");
    el.textContent = msg;
    el.classList.toggle("error", !!error);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var stored = window.sessionStorage.getItem(KEY_STORE);
    if (stored) { $("train-api-key").value = stored; }
    $("train-api-key").addEventListener("change", function () {
      if (apiKey()) { window.sessionStorage.setItem(KEY_STORE, apiKey()); } else {
        window.sessionStorage.removeItem(KEY_STORE);
      }
    });
    $("train-start").addEventListener("click", start);
    $("train-step").addEventListener("click", function () { if (!run.busy) { request(); } });
    $("train-reset").addEventListener("click", function () { stop(); reset(); });
    $("hidden").addEventListener("change", function () { stop(); reset(); });
    $("optimizer").addEventListener("change", function () {
      status("Optimizer " + $("optimizer").value + ": the next step starts from a fresh state.");
    });
    reset();
    document.body.setAttribute("data-ready", "1");
  });
}());
