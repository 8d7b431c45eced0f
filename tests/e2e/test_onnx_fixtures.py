"""The PyTorch-exported fixtures (tests/fixtures/onnx) end to end on a real gunicorn: each
registered over /v1 as ``application/onnx``; its forward equal to onnxruntime's on the same
file; its input and parameter gradients (with the loss the fixture recorded) equal to
PyTorch autograd's; the same over the real ``tritonclient.http`` (a saliency map, and each
parameter's gradient as ``grad:<parameter>``); and its
exported gradient model (``GET /v1/graphs/{id}/onnx?gradients=true``) run in onnxruntime
giving PyTorch's gradients too. float32 throughout, as the modules ran: rel 1e-4, and an
absolute floor of 1e-5 of the model's largest gradient (the key bias of softmax attention
has an exactly-zero gradient that both sides round differently)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gradserve.client import Client
from tests.e2e.conftest import assert_clean_logs
from tests.e2e.server import GunicornServer
from tests.e2e.triton import infer_input, requested, triton_client

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"
NAMES = ("mlp", "cnn", "transformer")
LOSS = {"mlp": "softmax_cross_entropy", "cnn": "softmax_cross_entropy", "transformer": "mse"}


def recorded(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def assert_grads(got: dict[str, np.ndarray], rec: dict[str, np.ndarray], prefix: str = ""
                 ) -> None:
    keys = [k for k in rec if k.startswith("grad:")]
    floor = 1e-5 * max(float(np.max(np.abs(rec[k]))) for k in keys)
    for k in keys:
        have = got[prefix + k[5:] if prefix == "" else k]
        assert have.dtype == np.float32, k
        np.testing.assert_allclose(have, rec[k], rtol=1e-4, atol=floor, err_msg=k)


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    with GunicornServer({}, workers=2, threads=2) as srv:
        yield srv
        assert_clean_logs(srv)


@pytest.fixture(scope="module")
def ids(server: GunicornServer) -> dict[str, str]:
    with Client(server.url) as gs:
        return {n: gs.register_onnx(FIXTURES / f"{n}.onnx", name=f"torch-{n}") for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_onnxruntime_at_any_batch(server, ids, name):
    rec = recorded(name)
    sess = ort.InferenceSession((FIXTURES / f"{name}.onnx").read_bytes(),
                                providers=["CPUExecutionProvider"])
    with Client(server.url) as gs:
        for x in (rec["x"], np.concatenate([rec["x"], -rec["x"], rec["x"][:1]])):
            r = gs.gradients(ids[name], {"x": x}, wrt=[], encoding="b64")  # float32 back
            assert r.gradients == {} and r.output.dtype == np.float32
            np.testing.assert_allclose(r.output, sess.run(None, {"x": x})[0], rtol=1e-5,
                                       atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_input_and_parameter_gradients_equal_pytorch(server, ids, name):
    rec = recorded(name)
    with Client(server.url) as gs:
        r = gs.gradients(ids[name], {"x": rec["x"]}, wrt="all", encoding="b64",
                         loss={"type": LOSS[name], "targets": rec["targets"]})
    assert float(r.raw["loss"]) == pytest.approx(float(rec["loss"]), rel=1e-5)
    np.testing.assert_allclose(r.output, rec["output"], rtol=1e-5, atol=1e-6)
    assert_grads(r.gradients, rec)


@pytest.mark.parametrize("name", NAMES)
def test_exported_gradient_model_gives_pytorch_gradients(server, ids, name):
    rec = recorded(name)
    with Client(server.url) as gs:
        data = gs.export_onnx(ids[name], gradients=True, wrt="all", loss=LOSS[name],
                              shapes={"x": rec["x"].shape})
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"x": rec["x"], "targets": rec["targets"]})))
    assert float(got["loss"]) == pytest.approx(float(rec["loss"]), rel=1e-5)
    np.testing.assert_allclose(got["output"], rec["output"], rtol=1e-5, atol=1e-6)
    assert_grads(got, rec, prefix="grad:")


def test_saliency_map_over_tritonclient_equals_v1(server, ids):
    """The CNN's saliency map (the gradient of each example's top class score with respect
    to its image) over tritonclient's binary framing equals /v1's: ``x`` and ``grad:output``
    in, ``grad:x`` out, the parameters the model's own."""
    rec = recorded("cnn")
    x = rec["x"]
    upstream = np.zeros(rec["output"].shape, np.float32)
    upstream[np.arange(len(x)), rec["output"].argmax(axis=1)] = 1.0  # each top class score
    with Client(server.url) as gs:
        ref = gs.gradients(ids["cnn"], {"x": x}, wrt="inputs", upstream=upstream,
                           encoding="b64")
    with triton_client(server) as triton:
        inputs = [infer_input("x", x), infer_input("grad:output", upstream)]
        res = triton.infer("torch-cnn", inputs, outputs=[requested("grad:x")])
    saliency = res.as_numpy("grad:x")
    assert saliency.shape == x.shape
    np.testing.assert_allclose(saliency, ref.gradients["x"], rtol=1e-5, atol=1e-7)


def _loss_upstream(name: str, rec: dict[str, np.ndarray]) -> np.ndarray:
    """d(loss)/d(output) of the loss the fixture recorded, by hand (float64, then float32):
    cross-entropy's (softmax - onehot) / batch, mse's 2 (output - targets) / n."""
    out = rec["output"].astype(np.float64)
    if LOSS[name] == "mse":
        return (2.0 * (out - rec["targets"]) / out.size).astype(np.float32)
    p = np.exp(out - out.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(out)), rec["targets"]] -= 1.0
    return (p / len(out)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_over_tritonclient_equal_pytorch(server, ids, name):
    """Every PyTorch parameter's gradient as an OIP output ``grad:<parameter>``, the loss's
    gradient with respect to the output given as ``grad:output``."""
    rec = recorded(name)
    wanted = [k for k in rec if k.startswith("grad:")]
    with triton_client(server) as triton:
        res = triton.infer(f"torch-{name}", [
            infer_input("x", rec["x"]), infer_input("grad:output", _loss_upstream(name, rec))],
            outputs=[requested(k) for k in wanted])
    assert_grads({k: res.as_numpy(k) for k in wanted}, rec, prefix="grad:")
