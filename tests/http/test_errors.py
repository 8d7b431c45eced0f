"""Every status of docs/api.md §7 as an RFC 9457 problem+json body, and 500s nowhere."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from service.store.base import GraphStore, StoreUnavailable
from tests.lecture import EX3, LECTURE, assert_lecture, lecture_request, locs, problem

GOOD = lecture_request("neuron_sum", "expression")


# --- 400 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["{bad", '{"expression": "x"', "", "nul", '{"a": 1,}',
                                  "{'a': 1}", '{"a": 1} trailing'])
def test_400_body_not_json(client, text):
    body = problem(client.post("/v1/gradients", data=text, content_type="application/json"),
                   400)
    assert body["title"] == "Bad Request"
    assert "JSON" in body["detail"]


def test_400_on_every_json_endpoint(client):
    gid = "g-" + "0" * 64
    for path in ("/v1/gradients", "/v1/graphs", f"/v1/graphs/{gid}/gradients"):
        problem(client.post(path, data=b"\xff\xfe{", content_type="application/json"), 400)


# --- 401 -----------------------------------------------------------------------------------


@pytest.fixture
def keyed(make_app):
    return make_app(api_keys=("k1", "k2")).test_client()


def test_401_without_key(keyed):
    resp = keyed.post("/v1/gradients", json=GOOD)
    body = problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "k1" not in resp.get_data(as_text=True)
    assert body["title"] == "Unauthorized"


@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer k1x", "Bearer ", "Basic k1", "k1",
                                    "Bearer k", "Token k1"])
def test_401_with_wrong_key(keyed, header):
    resp = keyed.post("/v1/gradients", json=GOOD, headers={"Authorization": header})
    problem(resp, 401)
    assert "WWW-Authenticate" in resp.headers


@pytest.mark.parametrize("key", ["k1", "k2"])
def test_200_with_a_right_key(keyed, key):
    resp = keyed.post("/v1/gradients", json=GOOD, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200
    assert_lecture(resp.get_json(), "neuron_sum")


def test_401_covers_every_v1_route(keyed):
    gid = "g-" + "0" * 64
    problem(keyed.get("/v1/ops"), 401)
    problem(keyed.post("/v1/graphs", json={"graph": EX3["graph"]}), 401)
    problem(keyed.get(f"/v1/graphs/{gid}"), 401)
    problem(keyed.post(f"/v1/graphs/{gid}/gradients", json={"values": {}}), 401)
    # The key is checked before the body is even read.
    problem(keyed.post("/v1/gradients", data="{bad", content_type="application/json"), 401)


def test_operational_endpoints_stay_open(keyed):
    health = keyed.get("/healthz")
    assert health.status_code == 200
    assert keyed.get("/readyz").status_code == 200
    assert keyed.get("/metrics").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200


def test_metrics_behind_the_key_when_asked(make_app):
    client = make_app(api_keys=("k1",), metrics_require_key=True).test_client()
    problem(client.get("/metrics"), 401)
    assert client.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_no_key_configured_means_open(client):
    assert client.post("/v1/gradients", json=GOOD,
                       headers={"Authorization": "Bearer anything"}).status_code == 200


# --- 404 -----------------------------------------------------------------------------------


# (An unknown path under /v2 is a 404 in OIP's {"error"} form: tests/flows/test_oip.py.)
@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v2x/gradients", "/v1/gradients/x",
                                  "/v1/graphs/g-1/gradients/extra"])
def test_404_unknown_path(client, path):
    body = problem(client.get(path), 404)
    assert body["title"] == "Not Found"
    problem(client.post(path, json={}), 404)


def test_404_unknown_graph_id(client):
    gid = "g-" + "ab" * 32
    body = problem(client.get(f"/v1/graphs/{gid}"), 404)
    assert gid in body["detail"]
    assert ["graph_id"] in locs(body)
    problem(client.post(f"/v1/graphs/{gid}/gradients", json={"values": {"x": 1}}), 404)
    problem(client.post("/v1/gradients", json={"graph_id": gid, "values": {"x": 1}}), 404)


@pytest.mark.parametrize("gid", ["g-123", "x" * 66, "g-" + "G" * 64, "g-" + "0" * 65,
                                 "%2e%2e"])
def test_404_malformed_graph_id(client, gid):
    problem(client.get(f"/v1/graphs/{gid}"), 404)
    problem(client.post(f"/v1/graphs/{gid}/gradients", json={"values": {}}), 404)


# --- 405 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/v1/gradients", "POST"),
    ("PUT", "/v1/gradients", "POST"),
    ("DELETE", "/v1/graphs", "POST"),
    ("PUT", "/v1/graphs/g-" + "0" * 64, "GET"),
    ("POST", "/v1/graphs/g-" + "0" * 64, "DELETE"),
    ("GET", "/v1/graphs/g-" + "0" * 64 + "/gradients", "POST"),
    ("POST", "/healthz", "GET"),
    ("POST", "/v1/ops", "GET"),
    ("POST", "/metrics", "GET"),
])
def test_405_wrong_method(client, method, path, allowed):
    resp = client.open(path, method=method, json={})
    body = problem(resp, 405)
    assert body["title"] == "Method Not Allowed"
    assert allowed in resp.headers["Allow"]


# --- 413 -----------------------------------------------------------------------------------


def test_413_body_over_max_body_bytes(make_app):
    client = make_app(max_body_bytes=2048).test_client()
    big = {**GOOD, "values": {"x": [0.5] * 1000, "y": 5, "z": -4}}
    body = problem(client.post("/v1/gradients", json=big), 413)
    assert "MAX_BODY_BYTES" in body["detail"]
    assert body["title"] == "Content Too Large"
    # Just under the limit is fine.
    assert client.post("/v1/gradients", json=GOOD).status_code == 200


def test_413_on_registration(make_app):
    client = make_app(max_body_bytes=100).test_client()
    resp = client.post("/v1/graphs", data=b"{" + b" " * 500 + b"}",
                       content_type="application/json")
    problem(resp, 413)


# --- 415 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/xml", "multipart/form-data; boundary=x",
                                   "application/jsonx", None])
def test_415_not_json(client, ctype):
    import json

    data = json.dumps(GOOD)
    resp = client.post("/v1/gradients", data=data, content_type=ctype) if ctype else \
        client.post("/v1/gradients", data=data)
    body = problem(resp, 415)
    assert body["title"] == "Unsupported Media Type"
    assert "application/json" in body["detail"]


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "APPLICATION/JSON"])
def test_json_content_types_accepted(client, ctype):
    import json

    resp = client.post("/v1/gradients", data=json.dumps(GOOD), content_type=ctype)
    assert resp.status_code == 200


def test_415_on_registry_routes(client):
    problem(client.post("/v1/graphs", data="{}", content_type="text/plain"), 415)
    problem(client.post("/v1/graphs/g-" + "0" * 64 + "/gradients", data="{}",
                        content_type="text/plain"), 415)


# --- 422: graph errors name the node -------------------------------------------------------


def graph_request(nodes, inputs=None, output="f", values=None):
    return {"graph": {"inputs": {"x": {}} if inputs is None else inputs, "nodes": nodes,
                      "output": output},
            "values": {"x": 1.0} if values is None else values}


def test_422_unknown_op_did_you_mean(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "a", "op": "exp", "args": ["x"]}, {"id": "f", "op": "sigmod", "args": ["a"]}])),
        422)
    assert body["title"] == "Unprocessable Content"
    assert "node 'f'" in body["detail"]
    assert "unknown op 'sigmod'" in body["detail"]
    assert "did you mean 'sigmoid'" in body["detail"]
    assert ["graph", "nodes", 1, "op"] in locs(body)


def test_422_unknown_function_in_expression_did_you_mean(client):
    body = problem(client.post("/v1/gradients", json={"expression": "sigmod(x) + tanhh(x)",
                                                       "values": {"x": 1}}), 422)
    assert "sigmod" in body["detail"] and "did you mean 'sigmoid'" in body["detail"]
    assert ["expression"] in locs(body)


def test_422_wrong_arity(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "f", "op": "add", "args": ["x"]}])), 422)
    assert "node 'f'" in body["detail"] and "2" in body["detail"]
    assert ["graph", "nodes", 0, "args"] in locs(body)
    body = problem(client.post("/v1/gradients", json={"expression": "exp(x, x)",
                                                       "values": {"x": 1}}), 422)
    assert ["expression"] in locs(body)


def test_422_unknown_arg(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "f", "op": "mul", "args": ["x", "nope"]}])), 422)
    assert "node 'f'" in body["detail"] and "'nope'" in body["detail"]
    assert ["graph", "nodes", 0, "args", 1] in locs(body)


def test_422_unknown_output(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "a", "op": "exp", "args": ["x"]}], output="zz")), 422)
    assert "'zz'" in body["detail"]
    assert ["graph", "output"] in locs(body)


def test_422_duplicate_ids(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "f", "op": "exp", "args": ["x"]}, {"id": "f", "op": "neg", "args": ["x"]}])),
        422)
    assert "node 'f'" in body["detail"] and "duplicate" in body["detail"]
    assert ["graph", "nodes", 1, "id"] in locs(body)


def test_422_node_id_shadows_an_input(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "x", "op": "exp", "args": ["x"]}], output="x")), 422)
    assert "node 'x'" in body["detail"]
    assert ["graph", "nodes", 0, "id"] in locs(body)


@pytest.mark.parametrize("nodes,on_cycle", [
    ([{"id": "f", "op": "exp", "args": ["f"]}], {"f"}),
    ([{"id": "a", "op": "exp", "args": ["f"]}, {"id": "f", "op": "neg", "args": ["a"]}],
     {"a", "f"}),
    ([{"id": "f", "op": "add", "args": ["x", "c"]}, {"id": "a", "op": "exp", "args": ["b"]},
      {"id": "b", "op": "exp", "args": ["c"]}, {"id": "c", "op": "mul", "args": ["a", "x"]}],
     {"a", "b", "c"}),
])
def test_422_cycle(client, nodes, on_cycle):
    body = problem(client.post("/v1/gradients", json=graph_request(nodes)), 422)
    assert "cycle" in body["detail"]
    named = body["detail"].split("'")[1]
    assert named in on_cycle, body["detail"]
    (loc,) = locs(body)
    assert loc[:2] == ["graph", "nodes"]
    assert nodes[loc[2]]["id"] in on_cycle


@pytest.mark.parametrize("op,attrs,word", [
    ("sum", {"axis": "zero"}, "axis"),
    ("sum", {"axes": 0}, "axes"),
    ("sum", {"keepdims": 1}, "keepdims"),
    ("sum", {"axis": [0, 0]}, "axis"),
    ("sum", {"axis": 1.5}, "axis"),
    ("softmax", {"axis": None}, "axis"),
    ("reshape", {"shape": "2x2"}, "shape"),
    ("reshape", {"shape": [-1, -1]}, "shape"),
    ("transpose", {"axes": 1}, "axes"),
    ("exp", {"axis": 0}, "axis"),
])
def test_422_bad_attrs(client, op, attrs, word):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "f", "op": op, "args": ["x"], "attrs": attrs}],
        inputs={"x": {"shape": [2, 2]}}, values={"x": [[1, 2], [3, 4]]})), 422)
    assert "node 'f'" in body["detail"] and word in body["detail"]
    assert ["graph", "nodes", 0, "attrs"] in locs(body)


def test_422_attr_out_of_range_names_the_node(client):
    body = problem(client.post("/v1/gradients", json=graph_request(
        [{"id": "a", "op": "exp", "args": ["x"]},
         {"id": "f", "op": "sum", "args": ["a"], "attrs": {"axis": 5}}],
        inputs={"x": {"shape": [2, 2]}}, values={"x": [[1, 2], [3, 4]]})), 422)
    assert "node 'f'" in body["detail"] and "axis" in body["detail"]
    assert locs(body)[0][:3] == ["graph", "nodes", 1]


@pytest.mark.parametrize("nodes,shapes", [
    ([{"id": "f", "op": "add", "args": ["x", "y"]}], ([2], [3])),
    ([{"id": "f", "op": "matmul", "args": ["x", "y"]}], ([2, 3], [2])),
    ([{"id": "f", "op": "reshape", "args": ["x"], "attrs": {"shape": [5]}}], ([2, 2], [1])),
    ([{"id": "f", "op": "mse", "args": ["x", "y"]}], ([2], [3])),
])
def test_422_shape_mismatch_names_the_node(client, nodes, shapes):
    inputs = {"x": {"shape": shapes[0]}, "y": {"shape": shapes[1]}}
    # Declared shapes: the mismatch is found at compile time, before any value is looked at.
    body = problem(client.post("/v1/gradients", json=graph_request(nodes, inputs=inputs,
                                                                   values={})), 422)
    assert "node 'f'" in body["detail"]
    assert locs(body)[0][:3] == ["graph", "nodes", 0]


def test_422_shape_mismatch_from_values(client):
    """Shapes known only from the values: still a 422 naming the node, not a NumPy error."""
    nodes = [{"id": "a", "op": "exp", "args": ["x"]}, {"id": "f", "op": "add", "args": ["a", "y"]}]
    body = problem(client.post("/v1/gradients", json=graph_request(
        nodes, inputs={"x": {}, "y": {}}, values={"x": [1, 2], "y": [1, 2, 3]})), 422)
    assert "node 'f'" in body["detail"]
    body = problem(client.post("/v1/gradients", json={"expression": "x @ y",
                                                       "values": {"x": [1, 2], "y": [1, 2, 3]}}),
                   422)
    assert "matmul" in body["detail"] or "@" in body["detail"]


def test_422_value_shape_differs_from_declared(client):
    body = problem(client.post("/v1/gradients", json={"graph": EX3["graph"], "values": {
        "W": [[1, 2, 3], [4, 5, 6]], "x": [1, 2]}}), 422)
    assert ["values", "W"] in locs(body)


def test_422_missing_and_extra_values(client):
    body = problem(client.post("/v1/gradients", json={"expression": "x * y",
                                                       "values": {"x": 1}}), 422)
    assert ["values", "y"] in locs(body)
    body = problem(client.post("/v1/gradients", json={"expression": "x * y",
                                                       "values": {"x": 1, "y": 2, "q": 3}}), 422)
    assert ["values", "q"] in locs(body)


def test_422_validation_errors_name_the_field(client):
    body = problem(client.post("/v1/gradients", json={**GOOD, "dtype": "float16"}), 422)
    assert ["dtype"] in locs(body)
    body = problem(client.post("/v1/gradients", json={**GOOD, "trace": "yes"}), 422)
    assert ["trace"] in locs(body)
    body = problem(client.post("/v1/gradients", json={**GOOD, "colour": "red"}), 422)
    assert ["colour"] in locs(body)
    body = problem(client.post("/v1/gradients", json={**GOOD, "values": {"x": "abc", "y": 1,
                                                                         "z": 2}}), 422)
    assert any(loc[:2] == ["values", "x"] for loc in locs(body))


def test_422_expression_and_graph_both_or_none(client):
    problem(client.post("/v1/gradients", json={**GOOD, "graph": EX3["graph"]}), 422)
    problem(client.post("/v1/gradients", json={"values": {}}), 422)
    problem(client.post("/v1/graphs", json={}), 422)
    problem(client.post("/v1/graphs", json={"expression": "x", "graph": EX3["graph"]}), 422)


def test_422_on_registration_names_the_node(client):
    body = problem(client.post("/v1/graphs", json={"graph": {
        "inputs": {"x": {}}, "nodes": [{"id": "f", "op": "sigmod", "args": ["x"]}],
        "output": "f"}}), 422)
    assert "node 'f'" in body["detail"] and "sigmoid" in body["detail"]
    assert ["graph", "nodes", 0, "op"] in locs(body)


# --- 503 -----------------------------------------------------------------------------------


class DownStore(GraphStore):
    """A store whose backend is unreachable: every call raises StoreUnavailable."""

    name = "down"

    def _fail(self) -> StoreUnavailable:
        return StoreUnavailable("the graph store is unavailable; retry later",
                                reason="test: down", retry_after=7)

    def get(self, graph_id):
        raise self._fail()

    def put(self, graph_id, blob):
        raise self._fail()

    def delete(self, graph_id):
        raise self._fail()

    def bind_name(self, name, graph_id):
        raise self._fail()

    def lookup_name(self, name):
        raise self._fail()

    def ping(self):
        return False

    def close(self):
        pass


@pytest.fixture
def down(make_app):
    return make_app(store=DownStore()).test_client()


def _unavailable(resp):
    body = problem(resp, 503)
    assert resp.headers["Retry-After"] == "7"
    assert body["title"] == "Service Unavailable"
    assert "test: down" not in body["detail"]  # the driver's reason stays in the logs
    return body


def test_503_register_with_store_down(down):
    _unavailable(down.post("/v1/graphs", json={"graph": EX3["graph"]}))


def test_503_registered_graph_with_store_down(down):
    gid = "g-" + "3" * 64
    _unavailable(down.get(f"/v1/graphs/{gid}"))
    _unavailable(down.post(f"/v1/graphs/{gid}/gradients", json={"values": EX3["values"]}))
    _unavailable(down.post("/v1/gradients", json={"graph_id": gid, "values": EX3["values"]}))


def test_inline_graphs_need_no_store(down):
    for name in LECTURE:
        resp = down.post("/v1/gradients", json=lecture_request(name, "graph"))
        assert resp.status_code == 200
        assert_lecture(resp.get_json(), name)


def test_registered_graph_in_l1_survives_a_store_outage(make_app):
    """A plan already in this worker's L1 keeps working while the store is down."""
    from service.store.memory import MemoryStore

    class Flaky(MemoryStore):
        down = False

        def get(self, graph_id):
            if self.down:
                raise StoreUnavailable("the graph store is unavailable; retry later",
                                       retry_after=7)
            return super().get(graph_id)

    store = Flaky()
    client = make_app(store=store).test_client()
    gid = client.post("/v1/graphs", json={"graph": EX3["graph"]}).get_json()["graph_id"]
    store.down = True
    resp = client.post(f"/v1/graphs/{gid}/gradients", json={"values": EX3["values"]})
    assert resp.status_code == 200
    _unavailable(client.get("/v1/graphs/g-" + "4" * 64))


# --- never a 500 ---------------------------------------------------------------------------


def test_unexpected_error_is_a_problem_without_internals(make_app, monkeypatch):
    """The last-resort handler: a bug answers problem+json 500 naming only the request id."""
    from service.flows import driver

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(driver, "execute", broken)
    app = make_app()
    app.test_client_class = FlaskClient  # this test expects the 500
    resp = app.test_client().post("/v1/gradients", json=GOOD,
                                  headers={"X-Request-ID": "req-123"})
    body = problem(resp, 500)
    assert "secret" not in resp.get_data(as_text=True)
    assert "req-123" in body["detail"]
    assert resp.headers["X-Request-ID"] == "req-123"


def test_error_responses_do_not_change_later_answers(client):
    for bad in ({"expression": "x +"}, {"graph": {"nodes": "x"}}, {"expression": "a.b"}):
        assert client.post("/v1/gradients", json=bad).status_code == 422
    resp = client.post("/v1/gradients", json=GOOD)
    assert resp.status_code == 200
    assert_lecture(resp.get_json(), "neuron_sum")
