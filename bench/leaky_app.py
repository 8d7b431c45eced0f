"""The negative control of ``bench.soak``: a tiny Flask app that leaks on purpose.

Every request (any path, any method) appends 10-50 KB of written-to bytes to a global
list that is never emptied, then answers a small JSON body. Served by the same gunicorn
settings as gradserve, it shows what a leak looks like in the soak's RSS measurement: if
the soak reports flat memory for gradserve and a climb for this app, the measurement can
see a leak of that size.
"""

from __future__ import annotations

import random

from flask import Flask, jsonify, request

app = Flask("leaky")

LEAK: list[bytes] = []  # never emptied: that is the point
_rng = random.Random(0)
MIN_LEAK, MAX_LEAK = 10 * 1024, 50 * 1024


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
@app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def anything(path: str):
    request.get_data()  # read the body, as a real handler would
    # b"x" * n writes every byte, so the pages count in RSS (zeroed pages might not).
    LEAK.append(b"x" * _rng.randint(MIN_LEAK, MAX_LEAK))
    return jsonify(path=path, leaked_objects=len(LEAK))
