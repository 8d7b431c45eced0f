"""A synchronous Python client of the gradserve HTTP API (docs/api.md), NumPy in and out.

    from gradserve.client import Client

    with Client("http://127.0.0.1:8000") as gs:
        r = gs.grad("(x + y) * z", x=-2.0, y=5.0, z=-4.0)
        r.output, r.gradients["x"]          # -12.0, -4.0

One connection pool per client (urllib3), safe to share between threads. Every request the
client makes is safe to repeat (gradients are pure functions of the request; registering is
idempotent), so connection failures and 503s are retried with exponential backoff, honouring
the server's ``Retry-After``. A graph this client registered and the server no longer knows
(404: another replica's store, a store that expired it) is registered again and the call
repeated once: ids are content hashes, so it gets the same id.

Imports nothing from the server packages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import urllib3
from urllib3.util import Retry, Timeout

from gradserve.errors import ConnectionFailed, NotFound, error_from_response
from gradserve.onnx_client import ONNX_MEDIA, OnnxMethods
from gradserve.tensors import B64_THRESHOLD, from_wire, is_b64, to_wire, values_to_wire
from gradserve.trainer import StepResult, layers_body, loss_body, step_options

GRAPH_ID = re.compile(r"^g-[0-9a-f]{64}$")
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass
class Gradients:
    """The answer of ``/v1/gradients``: NumPy values (``np.float64`` for scalars)."""

    output: Any
    gradients: dict[str, Any]
    graph_id: str
    cache: str
    jacobians: dict[str, Any] | None = None
    trace: list[dict[str, Any]] | None = None
    check: dict[str, dict[str, float]] | None = None
    jvp: Any = None
    hvp: dict[str, Any] | None = None
    hessian: dict[str, dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Gradients:
        def tensors(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
            return None if d is None else {k: from_wire(v) for k, v in d.items()}

        trace = body.get("trace")
        if trace is not None:
            trace = [{**rec, "value": from_wire(rec["value"]), "grad": from_wire(rec["grad"])}
                     for rec in trace]
        hessian = body.get("hessian")
        return cls(
            output=from_wire(body["output"]),
            gradients=tensors(body.get("gradients")) or {},
            graph_id=body.get("graph_id", ""),
            cache=body.get("cache", ""),
            jacobians=tensors(body.get("jacobians")),
            trace=trace,
            check=body.get("check"),
            jvp=from_wire(body["jvp"]) if "jvp" in body else None,
            hvp=tensors(body.get("hvp")),
            hessian=None if hessian is None else {a: tensors(row) or {}
                                                  for a, row in hessian.items()},
            warnings=list(body.get("warnings") or []),
            raw=body,
        )


@dataclass
class MLPGradients:
    """The answer of ``/v1/mlp/gradients``. ``layers[i]`` is ``{"weight": dW, "bias": db}``
    (present when weights were asked for, the default); ``inputs`` when asked for."""

    output: Any
    loss: float | None
    layers: list[dict[str, Any]] | None
    inputs: Any
    graph_id: str
    cache: str
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> MLPGradients:
        grads = body.get("gradients") or {}
        layers = grads.get("layers")
        loss = body.get("loss")
        return cls(
            output=from_wire(body["output"]),
            loss=None if loss is None else float(loss),
            layers=None if layers is None else [
                {"weight": from_wire(g["weight"]), "bias": from_wire(g["bias"])}
                for g in layers],
            inputs=from_wire(grads["inputs"]) if "inputs" in grads else None,
            graph_id=body.get("graph_id", ""),
            cache=body.get("cache", ""),
            warnings=list(body.get("warnings") or []),
            raw=body,
        )


class Client(OnnxMethods):
    """A gradserve client. ``url`` is the server's base URL; ``api_key`` is sent as a bearer
    token; ``timeout`` (seconds) bounds each attempt; ``retries`` counts the repeats after a
    connection failure or a 503 (``backoff`` seconds, doubling, or the server's Retry-After,
    capped at ``max_retry_after``). Arrays of ``b64_threshold`` elements or more are sent in
    the binary form, and then the answer is asked for in it too."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.2,
                 max_retry_after: float = 30.0, b64_threshold: int = B64_THRESHOLD,
                 pool_size: int = 10) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.b64_threshold = b64_threshold
        self.retry = Retry(
            total=retries, connect=retries, read=1, status=retries, other=1,
            # Every call here is safe to repeat, POSTs included (see the module docstring).
            allowed_methods=None, status_forcelist=(503,), backoff_factor=backoff,
            backoff_max=max_retry_after, backoff_jitter=backoff / 2,
            respect_retry_after_header=True, retry_after_max=int(max_retry_after),
            raise_on_status=False, redirect=0,
        )
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=pool_size, block=False)
        # graph_id -> the registration body, for re-registering on 404.
        self._registered: dict[str, dict[str, Any]] = {}

    # --- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                content_type: str | None = None) -> tuple[int, Any, dict[str, str]]:
        """One call with retries; returns ``(status, parsed body, headers)`` of a 2xx and
        raises the typed :class:`~gradserve.errors.APIError` of anything else. ``data`` is
        a raw body of ``content_type`` instead of JSON; a binary answer (an ONNX model) is
        returned as bytes."""
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, allow_nan=True).encode()
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            resp = self._pool.request(method, self.url + path, body=data, headers=headers,
                                      retries=self.retry, timeout=Timeout(total=self.timeout),
                                      preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach the server at {self.url} "
                                   f"({_reason(exc)}; {method} {path})", url=self.url,
                                   reason=_reason(exc)) from exc
        resp_headers = {k.lower(): v for k, v in resp.headers.items()}
        ctype = resp_headers.get("content-type", "")
        parsed: Any = resp.data
        if "json" in ctype:
            try:
                parsed = json.loads(resp.data)
            except ValueError:
                parsed = resp.data.decode("utf-8", "replace")
        elif isinstance(parsed, bytes) and not ctype.startswith(ONNX_MEDIA):
            parsed = parsed.decode("utf-8", "replace")
        if resp.status >= 400:
            raise error_from_response(resp.status, parsed, resp_headers)
        return resp.status, parsed, resp_headers

    def _options(self, values: Mapping[str, Any] | None, *, wrt: str | Sequence[str] | None,
                 upstream: Any, jacobian: bool, trace: bool, check: bool, dtype: str | None,
                 encoding: str | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"values": values_to_wire(values, self.b64_threshold)}
        if wrt is not None:  # names, or a model's word: "inputs", "parameters", "all"
            body["wrt"] = wrt if isinstance(wrt, str) else list(wrt)
        if upstream is not None:
            body["upstream"] = to_wire(upstream, self.b64_threshold)
        for key, flag in (("jacobian", jacobian), ("trace", trace), ("check", check)):
            if flag:
                body[key] = True
        if dtype is not None:
            body["dtype"] = dtype
        for key, value in extra.items():
            # tangents / hvp (name -> tensor), hessian (bool), and anything newer.
            if isinstance(value, Mapping):
                value = {k: _maybe_tensor(v, self.b64_threshold) for k, v in value.items()}
            else:
                value = _maybe_tensor(value, self.b64_threshold)
            body[key] = value
        body["encoding"] = encoding or self._auto_encoding(body)
        return body

    @staticmethod
    def _auto_encoding(body: Mapping[str, Any]) -> str:
        def any_b64(v: Any) -> bool:
            if is_b64(v):
                return True
            if isinstance(v, Mapping):
                return any(any_b64(x) for x in v.values())
            if isinstance(v, list):
                return any(any_b64(x) for x in v if isinstance(x, dict))
            return False
        return "b64" if any(any_b64(v) for v in body.values()) else "json"

    # --- the API -------------------------------------------------------------------------------

    def grad(self, expression: str, /, *, wrt: str | Sequence[str] | None = None,
             upstream: Any = None, **values: Any) -> Gradients:
        """Value and gradients of ``expression`` at the keyword values:
        ``grad("(x + y) * z", x=-2, y=5, z=-4)``."""
        return self.gradients(expression, values, wrt=wrt, upstream=upstream)

    def gradients(self, graph: str | Mapping[str, Any], values: Mapping[str, Any] | None = None,
                  *, wrt: str | Sequence[str] | None = None, upstream: Any = None,
                  jacobian: bool = False, trace: bool = False, check: bool = False,
                  dtype: str | None = None, encoding: str | None = None,
                  batched: Sequence[str] | None = None, per_example: bool = False,
                  directions: int | None = None, **extra: Any) -> Gradients:
        """``POST /v1/gradients`` (or ``/v1/graphs/{id}/gradients`` for a graph id).

        ``graph`` is an expression (``"sum((W @ x) ** 2)"``), a graph spec (a dict with
        ``inputs``, ``nodes``, ``output``) or a graph id from :meth:`register`. Further
        keyword fields (``tangents={...}``, ``hvp={...}``, ``hessian=True``) are sent as
        they are, arrays converted.

        ``batched=["x"]``: ``x``'s leading axis indexes independent examples (each with its
        own objective; the answer's tensors get a leading batch axis); ``per_example=True``
        returns the other inputs' gradients per example too; ``directions=K``: every
        tangent / hvp direction has a leading axis of ``K`` directions, one pass.
        """
        body = self._options(values, wrt=wrt, upstream=upstream, jacobian=jacobian,
                             trace=trace, check=check, dtype=dtype, encoding=encoding,
                             extra=extra)
        if batched is not None:
            body["batched"] = list(batched)
        if per_example:
            body["per_example"] = True
        if directions is not None:
            body["directions"] = int(directions)
        if isinstance(graph, str) and GRAPH_ID.match(graph):
            return Gradients.from_body(self._by_id(graph, body))
        body.update(_graph_field(graph))
        return Gradients.from_body(self.request("POST", "/v1/gradients", body)[1])

    def _by_id(self, graph_id: str, body: dict[str, Any], action: str = "gradients"
               ) -> dict[str, Any]:
        path = f"/v1/graphs/{quote(graph_id)}/{action}"
        try:
            return self.request("POST", path, body)[1]
        except NotFound:
            registration = self._registered.get(graph_id)
            if registration is None:
                raise
        # The server lost a graph this client registered: register it again (same content,
        # same id) and repeat once.
        if "onnx_bytes" in registration:
            answer = {"graph_id": self.register_onnx(registration["onnx_bytes"],
                                                     name=registration["name"])}
        else:
            answer = self.request("POST", "/v1/graphs", registration)[1]
        if answer.get("graph_id") != graph_id:  # pragma: no cover - a server bug
            raise NotFound(404, "Not Found", f"re-registering {graph_id} gave "
                           f"{answer.get('graph_id')}", body=answer)
        return self.request("POST", path, body)[1]

    def register(self, graph: str | Mapping[str, Any], *, name: str | None = None) -> str:
        """``POST /v1/graphs``: register an expression or graph spec; returns its id (the
        same id for the same graph, however it is written). ``name`` also gives it a model
        name (the server answers 409, raised as Conflict, when another graph has it)."""
        registration = _graph_field(graph)
        if name is not None:
            registration["name"] = name
        _, body, _ = self.request("POST", "/v1/graphs", registration)
        graph_id = body["graph_id"]
        self._registered[graph_id] = registration
        return graph_id

    def iter_graphs(self, *, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """``GET /v1/graphs``, page after page: each registered graph's ``graph_id``,
        ``kind``, ``inputs``, ``output`` and ``name`` (when it has one), in id order."""
        cursor: str | None = None
        while True:
            query = f"?limit={int(page_size)}" + (f"&cursor={quote(cursor)}" if cursor else "")
            page = self.request("GET", "/v1/graphs" + query)[1]
            yield from page["graphs"]
            cursor = page.get("next")
            if not cursor:
                return

    def list_graphs(self, *, page_size: int = 100) -> list[dict[str, Any]]:
        """Every registered graph (all the pages of ``GET /v1/graphs``)."""
        return list(self.iter_graphs(page_size=page_size))

    def delete(self, graph_id: str) -> None:
        """``DELETE /v1/graphs/{graph_id}``: remove a registered graph and free its names
        (no error when it is not registered). This client stops re-registering it."""
        self._registered.pop(graph_id, None)
        self.request("DELETE", f"/v1/graphs/{quote(graph_id, safe='')}")

    def graph(self, graph_id: str) -> dict[str, Any]:
        """``GET /v1/graphs/{graph_id}``: the canonical spec of a registered graph."""
        return self.request("GET", f"/v1/graphs/{quote(graph_id)}")[1]

    def mlp_gradients(self, layers: Sequence[Any], inputs: Any, loss: Any = None, *,
                      upstream: Any = None, l2: float = 0.0,
                      wrt: Sequence[str] | None = None, dtype: str | None = None,
                      encoding: str | None = None, per_example: bool = False
                      ) -> MLPGradients:
        """``POST /v1/mlp/gradients``. ``layers`` holds ``{"weight", "bias", "activation"}``
        dicts or ``(weight, bias, activation)`` tuples, weights ``(out, in)`` as in
        ``torch.nn.Linear``; ``loss`` is ``{"type": ..., "targets": ...}`` or a
        ``(type, targets)`` tuple; without a loss give ``upstream``. ``per_example=True``:
        each example's gradients of its own loss (``layers[i].weight`` is ``(batch, out,
        in)``, no l2 term; ``loss`` stays the batch loss)."""
        t = self.b64_threshold
        wire_layers = layers_body(layers, t)
        body: dict[str, Any] = {"layers": wire_layers, "inputs": to_wire(inputs, t)}
        if loss is not None:
            body["loss"] = loss_body(loss, t)
        if upstream is not None:
            body["upstream"] = to_wire(upstream, t)
        if l2:
            body["l2"] = l2
        if wrt is not None:
            body["wrt"] = list(wrt)
        if dtype is not None:
            body["dtype"] = dtype
        if per_example:
            body["per_example"] = True
        body["encoding"] = encoding or self._auto_encoding(
            {"layers": {str(i): v for i, layer in enumerate(wire_layers)
                        for v in (layer["weight"], layer["bias"])}, **body})
        return MLPGradients.from_body(self.request("POST", "/v1/mlp/gradients", body)[1])

    def graph_id_of(self, graph: str | Mapping[str, Any]) -> str:
        """A graph id as it is, or the id of an expression / spec (registered here)."""
        if isinstance(graph, str) and GRAPH_ID.match(graph):
            return graph
        return self.register(graph)

    def step(self, graph: str | Mapping[str, Any], values: Mapping[str, Any],
             optimizer: str | Mapping[str, Any], *, params: Sequence[str] | None = None,
             state: Mapping[str, Any] | None = None, steps: int = 1, loss: Any = None,
             dtype: str | None = None, encoding: str | None = None) -> StepResult:
        """``POST /v1/graphs/{id}/step`` (docs/training.md): ``steps`` optimizer steps on
        the inputs ``params`` of ``graph`` (an id, or an expression / spec registered
        first). ``optimizer`` is ``{"type": "adam", "lr": ...}`` (torch.optim's names) or
        a type; ``state`` is the previous answer's ``state``, absent on the first step."""
        t = self.b64_threshold
        body = {"values": values_to_wire(values, t),
                **step_options(optimizer, state, steps, dtype, t)}
        if params is not None:
            body["params"] = list(params)
        if loss is not None:
            body["loss"] = loss_body(loss, t)
        body["encoding"] = encoding or self._auto_encoding(body)
        return StepResult.from_body(self._by_id(self.graph_id_of(graph), body, "step"))

    def mlp_step(self, layers: Sequence[Any], inputs: Any, loss: Any,
                 optimizer: str | Mapping[str, Any], *, params: Sequence[str] | None = None,
                 state: Mapping[str, Any] | None = None, steps: int = 1, l2: float = 0.0,
                 dtype: str | None = None, encoding: str | None = None) -> StepResult:
        """``POST /v1/mlp/step``: :meth:`mlp_gradients`'s network and loss, then
        ``steps`` optimizer steps; the answer's ``layers`` are the updated network."""
        t = self.b64_threshold
        body = {"layers": layers_body(layers, t), "inputs": to_wire(inputs, t),
                "loss": loss_body(loss, t), **step_options(optimizer, state, steps, dtype, t)}
        if l2:
            body["l2"] = l2
        if params is not None:
            body["params"] = list(params)
        body["encoding"] = encoding or self._auto_encoding(body)  # layers' b64 tensors too
        return StepResult.from_body(self.request("POST", "/v1/mlp/step", body)[1])

    def ops(self) -> list[dict[str, Any]]:
        """``GET /v1/ops``: every op with its arity, attrs and local gradient."""
        return self.request("GET", "/v1/ops")[1]["ops"]

    def ready(self) -> dict[str, Any]:
        """``GET /readyz`` (a 503 while starting or draining raises ServiceUnavailable)."""
        return self.request("GET", "/readyz")[1]


def _graph_field(graph: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(graph, str):
        return {"expression": graph}
    if isinstance(graph, Mapping):
        if "nodes" in graph:
            return {"graph": dict(graph)}
        if "expression" in graph or "graph" in graph:
            return dict(graph)
    raise TypeError("a graph is an expression string, a graph spec dict (inputs, nodes, "
                    f"output) or a graph id, got {type(graph).__name__}")


def _reason(exc: Exception) -> str:
    """Why a connection failed, in a few words ("Connection refused", "timed out")."""
    cause: Any = getattr(exc, "reason", None) or exc
    text = str(cause)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if isinstance(cause, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    return type(cause).__name__


def _maybe_tensor(value: Any, threshold: int) -> Any:
    if isinstance(value, bool | str) or value is None:
        return value
    try:
        return to_wire(value, threshold)
    except (TypeError, ValueError):  # not numbers (a list of names): sent as it is
        return value
