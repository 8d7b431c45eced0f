"""Distributed tracing: the W3C ``traceparent`` of a request, and OpenTelemetry spans when
they are wanted.

Every request that carries a valid ``traceparent`` header has its trace id in the access
log (``trace_id``) and in the answer's ``traceresponse`` header (W3C Trace Context level 2:
the trace id and the span id of this server's request span), so a proxy's or a client's
trace finds gradserve's line. That costs a regex match per request that sends the header,
and nothing otherwise.

Spans are exported only when the optional ``otel`` extra is installed (``pip install
'gradserve[otel]'``) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OpenTelemetry's own
variables configure the exporter: headers, protocol, timeout; ``OTEL_SERVICE_NAME``
defaults to ``gradserve``): one ``request`` span per request (a child of the caller's
span), with ``compile``, ``execute`` and ``store`` spans inside it. Without both, every
``span()`` is a shared no-op and :func:`start` does no more than parse the header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

# version-traceid-parentid-flags; a later version may append fields ("-..."), which a
# version-00 parser ignores (W3C Trace Context §3.2.4).
TRACEPARENT_RE = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_NO_SPAN: AbstractContextManager[None] = nullcontext()

#: The OpenTelemetry tracer of this process, or None (no export: spans cost nothing).
TRACER: Any = None
_PID = 0


def parse_traceparent(header: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid ``traceparent``, else None (an invalid
    header is ignored, as the spec says: a new trace starts)."""
    if not header or len(header) > 512:
        return None
    m = TRACEPARENT_RE.fullmatch(header.strip())
    if m is None:
        return None
    version, trace_id, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE \
            or parent == _ZERO_SPAN:
        return None
    return trace_id, parent, flags


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Set up span export for this process when the ``otel`` extra is installed and
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; True when spans are exported. Called by the app
    factory in each worker (its exporter thread must start after gunicorn forks)."""
    global TRACER, _PID
    env = os.environ if environ is None else environ
    if not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False  # (a tracer set by use_tracer, a test's, stays)
    if TRACER is not None and _PID == os.getpid():
        return True
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return False
    provider = TracerProvider(resource=Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME", "gradserve")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_tracer(provider.get_tracer("gradserve"))
    _PID = os.getpid()
    return True


def use_tracer(tracer: Any) -> None:
    """Export spans through ``tracer`` (an OpenTelemetry tracer; None: stop)."""
    global TRACER
    TRACER = tracer


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span named ``name`` inside the current one (the request's), or a no-op."""
    tracer = TRACER
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes or None)


class RequestSpan:
    """The request span of one request (OpenTelemetry only), made current until
    :meth:`end`."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token

    @property
    def span_id(self) -> str:
        return f"{self.span.get_span_context().span_id:016x}"

    def end(self, status: int, route: str) -> None:
        from opentelemetry import context

        self.span.set_attribute("http.response.status_code", status)
        self.span.set_attribute("http.route", route)
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        context.detach(self.token)


def start(traceparent: str | None, method: str, path: str) -> RequestSpan | None:
    """Start the request span (when spans are exported), a child of ``traceparent``."""
    tracer = TRACER
    if tracer is None:
        return None
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(
        {"traceparent": traceparent} if traceparent else {})
    req_span = tracer.start_span("request", context=parent, kind=trace.SpanKind.SERVER,
                                 attributes={"http.request.method": method[:16],
                                             "url.path": path[:200]})
    token = context.attach(trace.set_span_in_context(req_span, parent))
    return RequestSpan(req_span, token)
