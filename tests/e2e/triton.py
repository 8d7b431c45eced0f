"""tritonclient.http against a test's gunicorn: the client, and its tensors' wrappers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tritonclient.http as tritonclient_http

from tests.e2e.server import GunicornServer

DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


@contextmanager
def triton_client(server: GunicornServer) -> Iterator[Any]:
    """A tritonclient for the server (10 s to connect, 20 s a call), closed at the end."""
    client = tritonclient_http.InferenceServerClient(
        f"{server.host}:{server.port}", connection_timeout=10, network_timeout=20)
    try:
        yield client
    finally:
        client.close()


def infer_input(name: str, arr: np.ndarray, binary: bool = True,
                datatype: str | None = None) -> Any:
    """An input tensor (binary framing unless ``binary=False``), its datatype the array's
    unless given."""
    i = tritonclient_http.InferInput(name, list(arr.shape), datatype or DATATYPES[str(arr.dtype)])
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def requested(name: str, binary: bool = True) -> Any:
    return tritonclient_http.InferRequestedOutput(name, binary_data=binary)
