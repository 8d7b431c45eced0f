"""The request bookkeeping layers of gradserve, each timed the old way and the new way.

    .venv/bin/python -m bench.hotpath [--repeat 7]

Per request, in this process (no HTTP), median of ``--repeat`` timings:

- request id: ``uuid.uuid4().hex`` (before) against ``service.http.access_log.new_request_id``;
- access line: ``logging`` with a ``StreamHandler`` on a file (before: a record, a
  formatter, the handler's lock and a flush per line) against ``write_access_line`` (one
  ``os.write`` of orjson's bytes), both to a file as gunicorn's redirected stdout is;
- metrics: ``REQUESTS.labels(...).inc()`` and ``LATENCY.labels(...).observe()`` on the
  Prometheus multiprocess files (before) against ``metrics.TALLY.record`` plus its share of
  the background flush (one flush per ``FLUSH_INTERVAL_S`` of 1,000 requests);
- the whole app, called as WSGI in process: ``bench.bare_app``, gradserve through Flask's
  own dispatch (hooks and views) and gradserve as served (the gateway in front), on the
  lecture's sigmoid expression (what each costs without gunicorn and TCP);
- each step of the gateway alone on the same request.

Not a test: nothing here asserts a speed. The machine is shared; compare rows of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

# Before prometheus_client is imported: the multiprocess files, as under gunicorn.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-hotpath-"))
os.environ.setdefault("GRADSERVE_LOG_LEVEL", "warning")

import orjson  # noqa: E402

from bench.http import SIGMOID  # noqa: E402


def per_call(fn: Callable[[], Any], repeat: int, loops: int) -> float:
    """Median µs per call over ``repeat`` timings of ``loops`` calls."""
    for _ in range(min(loops, 200)):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(times)


def access_fields() -> dict[str, Any]:
    return {"ts": round(time.time(), 3), "request_id": "0" * 32, "method": "POST",
            "route": "/v1/gradients", "path": "/v1/gradients", "status": 200,
            "latency_ms": 0.412, "graph_id": "g-" + "ab" * 32, "cache": "hit",
            "bytes_in": 93, "bytes_out": 210}


def wsgi_caller(app: Any, path: str, body: bytes) -> Callable[[], None]:
    from werkzeug.test import EnvironBuilder

    base = EnvironBuilder(path=path, method="POST", data=body,
                          content_type="application/json").get_environ()

    def call() -> None:
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(body)
        out = app(env, lambda *a: None)
        b"".join(out)
        close = getattr(out, "close", None)
        if close is not None:
            close()
    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    from service.http import access_log as app_module
    from service.runtime import metrics

    rows: list[tuple[str, float, float]] = []
    rows.append(("request id", per_call(lambda: uuid.uuid4().hex, args.repeat, 20000),
                 per_call(app_module.new_request_id, args.repeat, 20000)))

    with tempfile.TemporaryDirectory() as tmp:
        old_stream = open(os.path.join(tmp, "old.log"), "w")  # noqa: SIM115
        old = logging.getLogger("bench.hotpath.old")
        handler = logging.StreamHandler(old_stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        old.addHandler(handler)
        old.propagate = False
        old.setLevel(logging.INFO)

        def old_line() -> None:
            fields = access_fields()
            if old.isEnabledFor(logging.INFO):
                old.log(logging.INFO, orjson.dumps(fields).decode())

        new_stream = open(os.path.join(tmp, "new.log"), "w")  # noqa: SIM115
        saved = list(app_module.access_log.handlers)
        app_module.access_log.handlers = [app_module._JsonLines(new_stream)]
        try:
            rows.append(("access line", per_call(old_line, args.repeat, 5000),
                         per_call(lambda: app_module.write_access_line(access_fields()),
                                  args.repeat, 5000)))
        finally:
            app_module.access_log.handlers = saved
            old_stream.close()
            new_stream.close()

    def old_metrics() -> None:
        metrics.REQUESTS.labels("/v1/gradients", "POST", "200").inc()
        metrics.LATENCY.labels("/v1/gradients").observe(0.0004)

    tally = metrics.RequestTally(interval_s=3600)  # flushed by hand below, not by a thread
    tally._thread = object()  # type: ignore[assignment]  # no background thread here
    count = [0]

    def new_metrics() -> None:
        tally.record("/v1/gradients", "POST", "200", 0.0004)
        count[0] += 1
        if count[0] % 1000 == 0:  # its share of the flush
            tally.flush()

    rows.append(("metrics (counter + histogram)", per_call(old_metrics, args.repeat, 5000),
                 per_call(new_metrics, args.repeat, 5000)))

    from bench.bare_app import app as bare

    devnull = open(os.devnull, "w")  # noqa: SIM115
    app_module.access_log.handlers = [app_module._JsonLines(devnull)]
    from service.app import create_app

    gradserve = create_app()
    from service.config import load_settings

    through_flask = create_app(load_settings(gateway=False))
    body = json.dumps(SIGMOID).encode()
    whole = (per_call(wsgi_caller(bare, "/v1/gradients", body), args.repeat, 1000),
             per_call(wsgi_caller(through_flask, "/v1/gradients", body), args.repeat, 1000),
             per_call(wsgi_caller(gradserve, "/v1/gradients", body), args.repeat, 1000))
    steps = gateway_steps(gradserve, body, args.repeat)

    print(f"# bench.hotpath — Python {sys.version.split()[0]}, load average "
          f"{os.getloadavg()[0]:.2f} (shared machine)\n")
    print("| layer, per request | before µs | now µs | saved µs |")
    print("|---|---:|---:|---:|")
    for name, before, now in rows:
        print(f"| {name} | {before:.2f} | {now:.2f} | {before - now:.2f} |")
    print("\nWSGI in process, lecture sigmoid expression (µs per request):\n")
    print("| app | µs | vs bare Flask |")
    print("|---|---:|---:|")
    for name, value in zip(("bare Flask", "gradserve, Flask hooks + views",
                            "gradserve, gateway (as served)"), whole):
        print(f"| {name} | {value:.0f} | {value / whole[0]:.2f}x |")
    print("\nThe gateway's steps one by one (µs per request, same body):\n")
    print("| step | µs |")
    print("|---|---:|")
    for name, value in steps:
        print(f"| {name} | {value:.2f} |")
    print()
    return 0


def gateway_steps(app: Any, body: bytes, repeat: int) -> list[tuple[str, float]]:
    """Each step ``service.http.gateway.Gateway.serve`` runs, timed alone on the same request."""
    from schemas import GradientRequest
    from service.flows.driver import Env, run_plan
    from service.flows.gradients import GradientsFlow, size_gate
    from service.http import steps
    from service.http.body import parse_json, validate
    from service.http.steps import RequestContext

    st = app.extensions["gradserve"]
    settings = st.settings
    route = "/v1/gradients"
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": route,
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body))}
    ctx = RequestContext()
    steps.start_request(ctx, environ, settings)
    raw = parse_json(body)
    req = validate(GradientRequest, raw)
    env = Env(settings, st.cache, ctx.deadline)
    plan, _ = GradientsFlow(req).resolve(env)
    result = run_plan(GradientsFlow(req), plan, "hit", env)

    def read() -> None:
        environ["wsgi.input"] = io.BytesIO(body)
        steps.read_body_in_time(ctx, environ, settings)

    def admit_release() -> None:
        steps.admit(ctx, st.inflight, settings)
        steps.release(ctx, st.inflight)

    table = [
        ("start_request (id, clock, deadline)",
         lambda: steps.start_request(RequestContext(), environ, settings)),
        ("read the body", read),
        ("admit + release (semaphore, inflight gauge)", admit_release),
        ("orjson.loads", lambda: parse_json(body)),
        ("size gate + Pydantic model", lambda: (size_gate(raw, settings),
                                                validate(GradientRequest, raw))),
        ("alias hash + L1 lookup", lambda: GradientsFlow(req).resolve(env)),
        ("flow: bind, size check, execute, encode",
         lambda: run_plan(GradientsFlow(req), plan, "hit", env)),
        ("orjson.dumps", lambda: orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)),
        ("account (tally + access line)",
         lambda: steps.account(ctx, route, "POST", route, 200, 93, 210)),
    ]
    return [(name, per_call(fn, repeat, 2000)) for name, fn in table]


if __name__ == "__main__":
    raise SystemExit(main())
