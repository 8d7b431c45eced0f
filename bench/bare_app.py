"""The HTTP baseline for ``bench.http``: Flask parsing a small JSON body, answering another.

Served by the same gunicorn settings as gradserve, it measures what the stack (gunicorn,
Flask, JSON in and out) costs before any gradient is computed.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask("bare")


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.post("/v1/gradients")
@app.post("/v1/graphs/<graph_id>/gradients")
def gradients(graph_id: str | None = None):
    body = request.get_json()
    values = body.get("values", {}) if isinstance(body, dict) else {}
    return jsonify(output=0.0, gradients={name: 0.0 for name in values})
