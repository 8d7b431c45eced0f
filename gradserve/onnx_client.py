"""The ONNX half of :class:`gradserve.client.Client`: register a model file, export a
registered graph as an ONNX model (forward, or forward and backward).

    with Client() as gs:
        gid = gs.register_onnx("mnist.onnx", name="mnist")
        r = gs.gradients(gid, {"x": x}, wrt="inputs")          # a saliency map
        model = gs.export_onnx(gid, gradients=True, shapes={"x": x.shape})

Imports nothing from the server packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ONNX_MEDIA = "application/onnx"


def model_bytes(model: str | Path | bytes | bytearray | memoryview | Any) -> bytes:
    """A model's serialized bytes: from a path, bytes, or an ``onnx.ModelProto`` (anything
    with ``SerializeToString``)."""
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | Path):
        return Path(model).read_bytes()
    serialize = getattr(model, "SerializeToString", None)
    if callable(serialize):
        return bytes(serialize())
    raise TypeError("a model is a path, bytes or an onnx.ModelProto, got "
                    f"{type(model).__name__}")


def export_query(gradients: bool, wrt: str | Sequence[str] | None, loss: str | None,
                 dtype: str | None, shapes: Mapping[str, Sequence[int]] | None) -> str:
    """The query string of ``GET /v1/graphs/{id}/onnx``."""
    params: list[tuple[str, str]] = []
    if gradients:
        params.append(("gradients", "true"))
    if wrt is not None:
        params.append(("wrt", wrt if isinstance(wrt, str) else ",".join(wrt)))
    if loss is not None:
        params.append(("loss", loss))
    if dtype is not None:
        params.append(("dtype", dtype))
    for name, shape in (shapes or {}).items():
        params.append(("shape", f"{name}:{','.join(str(int(d)) for d in shape)}"))
    return "?" + urlencode(params) if params else ""


class OnnxMethods:
    """Mixed into :class:`~gradserve.client.Client` (which supplies ``request``)."""

    _registered: dict[str, dict[str, Any]]

    def request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                content_type: str | None = None) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError  # pragma: no cover - Client's

    def register_onnx(self, model: str | Path | bytes | Any, *, name: str | None = None
                      ) -> str:
        """``POST /v1/graphs`` with the model's bytes (``application/onnx``): register an
        ONNX model (a path, bytes or an ``onnx.ModelProto``); returns its graph id. ``name``
        also makes it the OIP model of that name (409, raised as Conflict, when another
        graph has it). A 404 later re-registers it, as for any graph this client made."""
        data = model_bytes(model)
        query = "?" + urlencode({"name": name}) if name is not None else ""
        _, body, _ = self.request("POST", "/v1/graphs" + query, data=data,
                                  content_type=ONNX_MEDIA)
        graph_id: str = body["graph_id"]
        self._registered[graph_id] = {"onnx_bytes": data, "name": name}
        return graph_id

    def model(self, graph_id: str) -> dict[str, Any]:
        """``GET /v1/graphs/{graph_id}``; for a model also its ``parameters`` (shapes and
        dtypes), ``outputs``, ``opset`` and ``dtype``."""
        return self.request("GET", f"/v1/graphs/{quote(graph_id)}")[1]  # type: ignore[no-any-return]

    def export_onnx(self, graph_id: str, *, gradients: bool = False,
                    wrt: str | Sequence[str] | None = None, loss: str | None = None,
                    dtype: str | None = None,
                    shapes: Mapping[str, Sequence[int]] | None = None) -> bytes:
        """``GET /v1/graphs/{graph_id}/onnx``: the graph as a serialized ONNX model.

        ``gradients=True`` adds the backward graph: outputs ``grad:<input>`` for the ``wrt``
        inputs (names, or ``"inputs"``, ``"parameters"``, ``"all"``); ``loss`` (a loss type)
        makes the objective that loss of the output against an input ``targets`` and adds
        the output ``loss``. ``shapes`` gives the shape of each input the graph does not
        declare (a model's batch dim; an expression's arrays): the model is written for
        those shapes. ``onnx.load_from_string`` or ``onnxruntime.InferenceSession`` take the
        bytes as they are."""
        path = f"/v1/graphs/{quote(graph_id)}/onnx" + export_query(gradients, wrt, loss,
                                                                    dtype, shapes)
        _, body, _ = self.request("GET", path)
        if not isinstance(body, bytes):  # pragma: no cover - a server bug
            raise TypeError("the server did not answer with an ONNX model")
        return body
