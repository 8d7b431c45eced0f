/* Layered (Sugiyama-style) layout of a computational graph, left to right.
 *
 * 1. Layers by longest path from the inputs: every input in layer 0, every node one layer
 *    right of its furthest argument, the output in the last layer; a constant sits one
 *    layer left of the node that uses it (so it never drags a long wire across the page).
 * 2. A wire spanning several layers gets a dummy point per layer it crosses, so the
 *    ordering below sees it and the drawing routes it between nodes.
 * 3. Order within layers: barycenter sweeps, down then up, keeping the order with the
 *    fewest crossings seen (counted exactly between adjacent layers).
 * 4. Vertical positions: each node pulled toward the mean of its neighbours, then spread
 *    so nothing overlaps, a few rounds.
 * Pure functions, no DOM: the page draws what this returns.
 */
(function (root) {
  "use strict";

  var SWEEPS = 12;

  function layout(nodes, edges, opts) {
    opts = opts || {};
    var layerGap = opts.layerGap || 200;
    var rowGap = opts.rowGap || 40;
    var margin = opts.margin || 40;
    var byId = new Map();
    nodes.forEach(function (n, i) {
      byId.set(n.id, { id: n.id, kind: n.kind, w: n.width || 60, h: n.height || 44,
                       index: i, preds: [], succs: [], layer: 0, order: 0, y: 0,
                       dummy: false });
    });
    edges.forEach(function (e) {
      byId.get(e.from).succs.push(e.to);
      byId.get(e.to).preds.push(e.from);
    });

    // 1. Layers (nodes come in topological order).
    var maxLayer = 0;
    nodes.forEach(function (n) {
      var v = byId.get(n.id);
      if (v.kind === "input" || v.kind === "const") { v.layer = 0; return; }
      var l = 0;
      v.preds.forEach(function (p) {
        var u = byId.get(p);
        if (u.kind !== "const") { l = Math.max(l, u.layer + 1); }
      });
      v.layer = Math.max(l, 1);
      maxLayer = Math.max(maxLayer, v.layer);
    });
    if (opts.output && byId.has(opts.output)) {
      var out = byId.get(opts.output);
      if (out.kind !== "input") { out.layer = maxLayer; }
    }
    nodes.forEach(function (n) {
      var v = byId.get(n.id);
      if (v.kind === "const" && v.succs.length) {
        v.layer = Math.max(0, Math.min.apply(null, v.succs.map(function (s) {
          return byId.get(s).layer;
        })) - 1);
      }
    });

    // 2. Dummy points on long wires.
    var chains = new Map();  // edge key -> [from, dummy..., to]
    var segments = [];       // [u, v] between adjacent layers
    // A value used all along a long chain (x in x + x + ... + x) would need a dummy per
    // layer per use, quadratic in the chain's length: past a budget, long wires are drawn
    // straight across and left out of the ordering.
    var spans = 0;
    edges.forEach(function (e) {
      spans += Math.max(0, byId.get(e.to).layer - byId.get(e.from).layer - 1);
    });
    var useDummies = spans <= (opts.maxDummies || 4000);
    edges.forEach(function (e, k) {
      var u = byId.get(e.from), v = byId.get(e.to);
      var chain = [u.id];
      for (var l = u.layer + 1; useDummies && l < v.layer; l++) {
        var d = { id: "\u0000d" + k + ":" + l, kind: "dummy", w: 0, h: 8, index: 1e9 + k,
                  preds: [], succs: [], layer: l, order: 0, y: 0, dummy: true };
        byId.set(d.id, d);
        chain.push(d.id);
      }
      chain.push(v.id);
      for (var i = 0; i + 1 < chain.length; i++) { segments.push([chain[i], chain[i + 1]]); }
      chains.set(e.key, chain);
    });
    var adjUp = new Map(), adjDown = new Map();
    byId.forEach(function (v) { adjUp.set(v.id, []); adjDown.set(v.id, []); });
    segments.forEach(function (s) { adjDown.get(s[0]).push(s[1]); adjUp.get(s[1]).push(s[0]); });

    var layers = [];
    byId.forEach(function (v) {
      while (layers.length <= v.layer) { layers.push([]); }
      layers[v.layer].push(v);
    });
    layers.forEach(function (layer) {
      layer.sort(function (a, b) { return a.index - b.index; });
    });
    // Initial order: by first use, a depth-first walk back from the output (inputs then
    // appear in the order the formula reads them).
    initialOrder(layers, adjUp, opts.output);

    // 3. Barycenter sweeps.
    var big = segments.length > 3000;
    var best = snapshot(layers), bestCross = big ? 0 : crossings(layers, adjDown);
    for (var sweep = 0; sweep < (big ? 2 : SWEEPS) && bestCross > 0; sweep++) {
      if (sweep % 2 === 0) {
        for (var l = 1; l < layers.length; l++) { reorder(layers[l], adjUp); }
      } else {
        for (var l2 = layers.length - 2; l2 >= 0; l2--) { reorder(layers[l2], adjDown); }
      }
      var c = crossings(layers, adjDown);
      if (c < bestCross) { bestCross = c; best = snapshot(layers); }
    }
    restore(layers, best);

    // 4. Vertical positions.
    layers.forEach(function (layer) {
      var y = 0;
      layer.forEach(function (v) { v.y = y + v.h / 2; y += v.h + rowGap; });
    });
    for (var round = 0; round < 8; round++) {
      var down = round % 2 === 0;
      var order = down ? layers : layers.slice().reverse();
      order.forEach(function (layer) {
        var want = layer.map(function (v) {
          var nb = (adjUp.get(v.id) || []).concat(adjDown.get(v.id) || []);
          if (!nb.length) { return v.y; }
          var s = 0;
          nb.forEach(function (id) { s += byId.get(id).y; });
          return s / nb.length;
        });
        spread(layer, want, rowGap);
      });
    }
    var minY = Infinity, maxY = -Infinity;
    byId.forEach(function (v) {
      minY = Math.min(minY, v.y - v.h / 2);
      maxY = Math.max(maxY, v.y + v.h / 2);
    });
    var pos = new Map();
    byId.forEach(function (v) {
      v.x = margin + v.layer * layerGap;
      v.y = v.y - minY + margin;
      if (!v.dummy) { pos.set(v.id, { x: v.x, y: v.y, layer: v.layer, order: v.order }); }
    });
    var paths = new Map();
    chains.forEach(function (chain, key) {
      paths.set(key, chain.map(function (id) { var v = byId.get(id); return [v.x, v.y]; }));
    });
    return {
      pos: pos, paths: paths, crossings: big ? null : bestCross,
      width: margin * 2 + Math.max(0, layers.length - 1) * layerGap,
      height: (maxY - minY) + margin * 2,
      layers: layers.length,
    };
  }

  function initialOrder(layers, adjUp, output) {
    var rank = new Map(), next = 0;
    var roots = [];
    if (output && adjUp.has(output)) { roots.push(output); }
    layers.slice().reverse().forEach(function (layer) {
      layer.forEach(function (v) { roots.push(v.id); });
    });
    roots.forEach(function (r) {
      if (rank.has(r)) { return; }
      var stack = [r];
      while (stack.length) {
        var id = stack.pop();
        if (rank.has(id)) { continue; }
        rank.set(id, next++);
        var ups = adjUp.get(id) || [];
        for (var i = ups.length - 1; i >= 0; i--) {
          if (!rank.has(ups[i])) { stack.push(ups[i]); }
        }
      }
    });
    layers.forEach(function (layer) {
      layer.sort(function (a, b) { return rank.get(a.id) - rank.get(b.id); });
      layer.forEach(function (v, i) { v.order = i; });
    });
  }

  function reorder(layer, adj) {
    var byId = new Map();
    layer.forEach(function (v) { byId.set(v.id, v); });
    var keyed = layer.map(function (v) {
      var nb = adj.get(v.id) || [];
      if (!nb.length) { return { v: v, key: v.order }; }
      // The order of a neighbour is read from the layer it lives in (kept in v.order).
      var s = 0;
      nb.forEach(function (id) { s += orderOf(id); });
      return { v: v, key: s / nb.length };
    });
    keyed.sort(function (a, b) { return a.key - b.key || a.v.order - b.v.order; });
    keyed.forEach(function (k, i) { k.v.order = i; ORDER.set(k.v.id, i); });
    layer.length = 0;
    keyed.forEach(function (k) { layer.push(k.v); });
  }

  var ORDER = new Map();
  function orderOf(id) { return ORDER.has(id) ? ORDER.get(id) : 0; }

  function snapshot(layers) {
    ORDER.clear();
    layers.forEach(function (layer) {
      layer.forEach(function (v, i) { v.order = i; ORDER.set(v.id, i); });
    });
    return layers.map(function (layer) { return layer.slice(); });
  }

  function restore(layers, saved) {
    saved.forEach(function (layer, l) {
      layers[l] = layer;
      layer.forEach(function (v, i) { v.order = i; });
    });
    snapshot(layers);
  }

  function crossings(layers, adjDown) {
    snapshot(layers);  // refresh ORDER for the barycenters of the next sweep
    var total = 0;
    for (var l = 0; l + 1 < layers.length; l++) {
      var segs = [];
      layers[l].forEach(function (v, i) {
        (adjDown.get(v.id) || []).forEach(function (w) { segs.push([i, orderOf(w)]); });
      });
      for (var a = 0; a < segs.length; a++) {
        for (var b = a + 1; b < segs.length; b++) {
          if ((segs[a][0] - segs[b][0]) * (segs[a][1] - segs[b][1]) < 0) { total++; }
        }
      }
    }
    return total;
  }

  // Place the nodes of one layer, in order, as close to `want` as the gaps allow.
  function spread(layer, want, gap) {
    var n = layer.length;
    if (!n) { return; }
    var y = new Array(n);
    for (var i = 0; i < n; i++) {
      y[i] = want[i];
      if (i > 0) {
        var min = y[i - 1] + layer[i - 1].h / 2 + gap + layer[i].h / 2;
        if (y[i] < min) { y[i] = min; }
      }
    }
    // Shift the block back up by the mean displacement, then re-check gaps upward.
    var shift = 0;
    for (var j = 0; j < n; j++) { shift += y[j] - want[j]; }
    shift /= n;
    for (var k = n - 1; k >= 0; k--) {
      y[k] -= shift;
      if (k < n - 1) {
        var max = y[k + 1] - layer[k + 1].h / 2 - gap - layer[k].h / 2;
        if (y[k] > max) { y[k] = max; }
      }
    }
    for (var m = 0; m < n; m++) { layer[m].y = y[m]; }
  }

  var api = { layout: layout };
  if (typeof module !== "undefined" && module.exports) { module.exports = api; }
  root.GradLayout = api;
})(typeof window !== "undefined" ? window : this);
