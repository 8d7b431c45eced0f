"""Client.step, Client.mlp_step, the Trainer and ``gradserve train`` against the app served
on a local port: torch.optim's recorded trajectory reached through the client with the
state it keeps, the CS231n spiral trained past 95% in a handful of requests through the API
alone, and the CLI's progress, output file and resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gradserve.cli import main
from gradserve.client import Client
from gradserve.errors import APIError
from gradserve.trainer import Trainer
from tests.client.served import serving
from tests.client.spiral import spiral

DATA = json.loads((Path(__file__).parents[1] / "engine" / "data" /
                   "optim_trajectories.json").read_text())


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving() as base:  # one app for the module's trajectories
        yield base


def _case(kind: str, **options: object) -> dict:
    return next(c for c in DATA["cases"] if c["type"] == kind and c["options"] == options)


@pytest.mark.parametrize("kind,options", [("adam", {"lr": 0.02, "weight_decay": 0.1,
                                                    "amsgrad": True}),
                                           ("sgd", {"lr": 0.1, "momentum": 0.9})])
def test_trainer_follows_torch_with_the_state_it_keeps(url, kind, options):
    case = _case(kind, **options)
    values = {k: np.asarray(v) for k, v in case["values"].items()}
    with Client(url) as gs:
        t = Trainer(gs, DATA["expression"], values, ["W", "b"], {"type": kind, **options})
        for _ in range(3):
            t.step(steps=2)
    assert t.step_count == 6
    np.testing.assert_allclose(t.losses, [s["loss"] for s in case["steps"]], rtol=1e-12)
    for n in ("W", "b"):
        np.testing.assert_allclose(t.values[n], case["steps"][-1]["params"][n], rtol=1e-12)
        assert isinstance(t.values[n], np.ndarray)
        for slot, v in case["steps"][-1]["state"]["slots"][n].items():
            np.testing.assert_allclose(t.state["slots"][n][slot], v, rtol=1e-12)


def test_client_step_registers_an_expression_and_b64_round_trips(url):
    with Client(url, b64_threshold=1) as gs:  # every array in the binary form, both ways
        r = gs.step("sum((W @ x) ** 2)", {"W": np.eye(2), "x": np.array([1.0, 2.0])},
                    "adagrad", params=["W"])
        again = gs.step(r.graph_id, {"W": r.values["W"], "x": np.array([1.0, 2.0])},
                        "adagrad", params=["W"], state=r.state)
    assert r.raw["values"]["W"]["b64"]  # asked for and answered in b64
    assert again.state["step"] == 2
    # Adagrad's first step moves every entry with a gradient by lr (=0.01) exactly-ish.
    g = 2 * np.outer(np.eye(2) @ [1.0, 2.0], [1.0, 2.0])
    np.testing.assert_allclose(r.values["W"], np.eye(2) - 0.01 * g / (np.abs(g) + 1e-10))


def test_a_failed_step_leaves_the_trainer_as_it_was(url):
    with Client(url) as gs:
        t = Trainer(gs, "sum(w * w)", {"w": np.array([1.0, -2.0])}, ["w"],
                    {"type": "sgd", "lr": 0.1, "momentum": 0.5})
        t.step()
        before = (t.values["w"].copy(), t.step_count, list(t.losses))
        t.optimizer = {"type": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": True,
                       "dampening": 0.5}
        with pytest.raises(APIError) as err:
            t.step()
    assert err.value.status == 422
    assert np.array_equal(t.values["w"], before[0]) and t.step_count == before[1]
    assert t.losses == before[2]


def _accuracy(gs: Client, layers: list, x: np.ndarray, y: np.ndarray) -> float:
    r = gs.mlp_gradients(layers, x, ("softmax_cross_entropy", y), wrt=[])
    return float(np.mean(np.argmax(r.output, axis=1) == y))


def test_the_spiral_trains_past_95_percent_in_a_handful_of_requests(url):
    x, y = spiral()
    rng = np.random.default_rng(1)
    layers = [{"weight": 0.5 * rng.standard_normal((100, 2)), "bias": np.zeros(100),
               "activation": "relu"},
              {"weight": 0.1 * rng.standard_normal((3, 100)), "bias": np.zeros(3)}]
    with Client(url) as gs:
        t = Trainer.mlp(gs, layers, x, ("softmax_cross_entropy", y),
                        {"type": "adam", "lr": 0.02})
        start = _accuracy(gs, t.layers, x, y)
        for _ in range(5):
            t.step(steps=300)
        acc = _accuracy(gs, t.layers, x, y)
    assert start < 0.7
    assert acc > 0.95, (acc, t.losses[-1])
    assert t.losses[-1] < t.losses[0] / 5


def test_cli_train_prints_progress_writes_and_resumes(url, tmp_path, capsys):
    x, y = spiral(points=40)
    data = tmp_path / "spiral.npz"
    np.savez(data, x=x, y=y)
    out = tmp_path / "w.npz"
    assert main(["train", str(data), "--url", url, "--hidden", "32", "--steps", "60",
                 "--per-request", "20", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].split()[:2] == ["step", "60"]
    assert "loss" in lines[-1] and lines[-1].endswith("steps/s")
    saved = np.load(out)
    assert saved["layers.0.weight"].shape == (32, 2) and saved["layers.1.bias"].shape == (3,)
    assert int(saved["state.step"]) == 60 and "state.slots.layers.0.weight.exp_avg" in saved
    assert len(saved["losses"]) == 60
    assert main(["train", str(data), "--url", url, "--hidden", "32", "--steps", "20",
                 "--per-request", "20", "--init", str(out), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["steps"] == 80 and body["losses"][0] == pytest.approx(
        saved["losses"][-1], rel=0.2)


def test_cli_train_names_a_bad_dataset(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((3, 2)))
    assert main(["train", str(bad), "--url", "http://127.0.0.1:9"]) == 1
    assert "no x or y array" in capsys.readouterr().err


def test_client_step_registers_again_after_a_404(url):
    """A graph the server lost (another replica's store, a wiped one): the client registers
    it again (same content, same id) and repeats the step once."""
    import urllib.request

    with Client(url) as gs:
        first = gs.step("sum(w * w) + 1", {"w": np.array([1.0, 2.0])},
                        {"type": "sgd", "lr": 0.25}, params=["w"])
        req = urllib.request.Request(f"{url}/v1/graphs/{first.graph_id}", method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the test server
            assert resp.status == 204
        again = gs.step(first.graph_id, {"w": first.values["w"]}, {"type": "sgd", "lr": 0.25},
                        params=["w"])
    assert again.graph_id == first.graph_id
    np.testing.assert_allclose(first.values["w"], [0.5, 1.0])
    np.testing.assert_allclose(again.values["w"], [0.25, 0.5])
