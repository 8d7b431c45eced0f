"""A standard code generator can use the served /openapi.json: openapi-python-client builds a
client (once per session, into a temporary directory) whose calls to every compute route
succeed against a real gunicorn, with the request bodies built from the document's own
examples through the generated models.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import SIGMOID_GRADIENTS, SIGMOID_OUTPUT
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

PACKAGE = "gradserve_generated_client"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture(scope="module")
def server():
    with GunicornServer(workers=1, threads=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def document(server):
    import json

    status, _, raw = server.get("/openapi.json")
    assert status == 200
    return json.loads(raw)


@pytest.fixture(scope="module")
def generated(server, tmp_path_factory):
    """The generated package, imported. The generator must not drop a route or a model."""
    workdir = tmp_path_factory.mktemp("codegen")
    spec = workdir / "openapi.json"
    spec.write_bytes(server.get("/openapi.json")[2])
    out = workdir / PACKAGE
    proc = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(out)],
        capture_output=True, text=True, timeout=180, cwd=workdir)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    # Its only warnings may be about the optional post-generation formatter (ruff), and
    # about ONNX bytes (GET /v1/graphs/{id}/onnx's answer, POST /v1/graphs's
    # application/onnx body): a media type it has no Python type for, so that one
    # operation's answer is untyped in the generated client; every JSON one must be typed.
    problems = [line for line in log.splitlines()
                if ("Unable" in line or "Cannot" in line or "Invalid" in line
                    or "removal" in line) and "application/onnx" not in line]
    assert not problems, log
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _example(document, path: str, name: str) -> dict:
    content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return content["examples"][name]["value"]


def test_generated_client_computes_gradients_registers_and_runs_mlps(generated, document,
                                                                      server):
    from importlib import import_module

    api = f"{PACKAGE}.api"
    compute_gradients = import_module(f"{api}.gradients.compute_gradients")
    register_graph = import_module(f"{api}.graphs.register_graph")
    compute_graph_gradients = import_module(f"{api}.graphs.compute_graph_gradients")
    compute_mlp_gradients = import_module(f"{api}.mlp.compute_mlp_gradients")
    models = import_module(f"{PACKAGE}.models")
    client = generated.Client(base_url=server.url, raise_on_unexpected_status=True)

    body = models.GradientRequestExpression.from_dict(
        _example(document, "/v1/gradients", "expression"))
    resp = compute_gradients.sync_detailed(client=client, body=body)
    assert resp.status_code == 200, resp.content
    assert resp.parsed.output == pytest.approx(SIGMOID_OUTPUT, rel=1e-12)
    grads = resp.parsed.gradients.to_dict()
    assert grads == pytest.approx(SIGMOID_GRADIENTS, rel=1e-12)

    body = models.GradientRequestGraph.from_dict(_example(document, "/v1/gradients", "graph"))
    resp = compute_gradients.sync_detailed(client=client, body=body)
    assert resp.status_code == 200, resp.content
    assert resp.parsed.output == pytest.approx(0.116)

    body = models.RegisterRequestExpression.from_dict({"expression": "(x + y) * z"})
    resp = register_graph.sync_detailed(client=client, body=body)
    assert resp.status_code in (200, 201), resp.content
    graph_id = resp.parsed.graph_id

    body = models.GraphGradientRequest.from_dict(
        _example(document, "/v1/graphs/{graph_id}/gradients", "values"))
    resp = compute_graph_gradients.sync_detailed(graph_id, client=client, body=body)
    assert resp.status_code == 200, resp.content
    assert resp.parsed.output == -12
    assert resp.parsed.gradients.to_dict() == {"x": -4, "y": -4, "z": 3}

    for name, form in (("loss", models.MLPRequestLoss), ("upstream", models.MLPRequestUpstream),
                       ("mse_l2", models.MLPRequestLoss)):
        body = form.from_dict(_example(document, "/v1/mlp/gradients", name))
        resp = compute_mlp_gradients.sync_detailed(client=client, body=body)
        assert resp.status_code == 200, (name, resp.content)
        assert len(resp.parsed.gradients.layers) == 2

    # An error answer parses as the Problem model.
    body = models.GradientRequestExpression.from_dict({"expression": "sigmod(x)",
                                                       "values": {"x": 1}})
    resp = compute_gradients.sync_detailed(client=client, body=body)
    assert resp.status_code == 422
    assert "sigmoid" in resp.parsed.detail and resp.parsed.errors[0].loc


def test_generated_client_takes_training_steps(generated, document, server):
    """The step routes through the generated client: the document's examples as models,
    the answers parsed (the optimizer a discriminated union, the state passed back)."""
    from importlib import import_module

    api = f"{PACKAGE}.api"
    register_graph = import_module(f"{api}.graphs.register_graph")
    step_graph = import_module(f"{api}.training.step_graph")
    step_mlp = import_module(f"{api}.training.step_mlp")
    models = import_module(f"{PACKAGE}.models")
    client = generated.Client(base_url=server.url, raise_on_unexpected_status=True)

    resp = register_graph.sync_detailed(client=client, body=models.RegisterRequestExpression
                                        .from_dict({"expression": "(x + y) * z"}))
    graph_id = resp.parsed.graph_id
    example = _example(document, "/v1/graphs/{graph_id}/step", "sgd")
    resp = step_graph.sync_detailed(graph_id, client=client,
                                    body=models.GraphStepRequest.from_dict(example))
    assert resp.status_code == 200, resp.content
    # d/dx of (x + y) * z is z = -4: x moves up by lr * 4, then with momentum 0.9 again.
    assert resp.parsed.values.to_dict()["x"] == pytest.approx(-2 + 0.4 + 0.4 * 1.9)
    assert resp.parsed.state.step == 2 and len(resp.parsed.losses) == 2

    example = _example(document, "/v1/mlp/step", "adam")
    resp = step_mlp.sync_detailed(client=client, body=models.MLPStepRequest.from_dict(example))
    assert resp.status_code == 200, resp.content
    first = resp.parsed
    again = {**example, "layers": [layer.to_dict() for layer in first.layers],
             "state": first.state.to_dict()}
    resp = step_mlp.sync_detailed(client=client, body=models.MLPStepRequest.from_dict(again))
    assert resp.status_code == 200, resp.content
    assert resp.parsed.state.step == 2 and resp.parsed.loss < first.loss
