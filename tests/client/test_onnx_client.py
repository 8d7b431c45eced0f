"""The client's and the CLI's ONNX calls against the app served on a local port:
``Client.register_onnx`` (path, bytes, ModelProto; re-registered after a 404),
``Client.export_onnx``, ``gradserve register model.onnx --name``, ``gradserve grad --model
--input --wrt --out`` (.npy and .npz in and out) and ``gradserve export``; gradients
compared with the PyTorch values recorded beside the fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gradserve.cli import main
from gradserve.client import Client
from gradserve.errors import NotFound, Unprocessable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"
MLP = FIXTURES / "mlp.onnx"
REC = np.load(FIXTURES / "mlp.npz")




def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.max(np.abs(want)))


def test_register_onnx_from_a_path_bytes_or_a_model_is_one_graph(url: str) -> None:
    with Client(url) as gs:
        gid = gs.register_onnx(MLP, name="mlp")
        assert gs.register_onnx(MLP.read_bytes()) == gid
        assert gs.register_onnx(onnx.load(MLP)) == gid
        info = gs.model(gid)
        assert info["dtype"] == "float32" and "net.0.weight" in info["parameters"]
        with pytest.raises(TypeError):
            gs.register_onnx(12)  # type: ignore[arg-type]
        with pytest.raises(Unprocessable):
            gs.register_onnx(b"not a model")


def test_gradients_of_a_model_with_wrt_words_and_a_loss(url: str) -> None:
    with Client(url) as gs:
        gid = gs.register_onnx(MLP)
        r = gs.gradients(gid, {"x": REC["x"]}, wrt="all",
                         loss={"type": "softmax_cross_entropy", "targets": REC["targets"]})
        assert float(r.raw["loss"]) == pytest.approx(float(REC["loss"]), rel=1e-5)
        for key in REC.files:
            if key.startswith("grad:"):
                _close(r.gradients[key[5:]], REC[key])


def test_a_model_the_server_lost_is_registered_again(url: str) -> None:
    with Client(url) as gs:
        gid = gs.register_onnx(MLP, name="again")
        other = Client(url)
        other.delete(gid)  # another client removes it: this one still knows the bytes
        other.close()
        r = gs.gradients(gid, {"x": REC["x"]}, wrt="parameters",
                         loss={"type": "softmax_cross_entropy", "targets": REC["targets"]})
        _close(r.gradients["net.0.weight"], REC["grad:net.0.weight"])


def test_export_onnx_runs_in_onnxruntime(url: str) -> None:
    with Client(url) as gs:
        gid = gs.register_onnx(MLP)
        data = gs.export_onnx(gid, gradients=True, wrt="inputs",
                              loss="softmax_cross_entropy", shapes={"x": REC["x"].shape})
        with pytest.raises(NotFound):
            gs.export_onnx("g-" + "0" * 64)
        with pytest.raises(Unprocessable):
            gs.export_onnx(gid, shapes={"nope": (1,)})
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"x": REC["x"], "targets": REC["targets"]})))
    assert set(out) == {"output", "loss", "grad:x"}
    _close(out["grad:x"], REC["grad:x"])
    _close(out["output"], REC["output"])


def test_cli_register_grad_and_export(url: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", str(MLP), "--name", "mnist", "--url", url]) == 0
    gid = capsys.readouterr().out.strip()
    assert gid.startswith("g-")
    x, g = tmp_path / "x.npy", tmp_path / "g.npy"
    np.save(x, REC["x"])
    # The input gradient of the loss (a saliency map), one .npy in and one out.
    assert main(["grad", "--model", "mnist", "--input", str(x), "--wrt", "inputs",
                 "--out", str(g), "--url", url, "--loss", "softmax_cross_entropy",
                 "--targets", str(_saved(tmp_path, "t.npy", REC["targets"]))]) == 0
    assert "grad:x" in capsys.readouterr().out
    _close(np.load(g), REC["grad:x"])
    # Every gradient into a .npz, the inputs from one.
    inputs, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, x=REC["x"])
    assert main(["grad", "--model", gid, "--input", str(inputs), "--wrt", "all", "--out",
                 str(out), "--loss", "softmax_cross_entropy", "--targets",
                 str(tmp_path / "t.npy"), "--url", url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gradients"]["net.0.weight"] == [16, 8]
    with np.load(out) as z:
        assert float(z["loss"]) == pytest.approx(float(REC["loss"]), rel=1e-5)
        for key in REC.files:
            if key.startswith("grad:"):
                _close(z[key], REC[key])
    model = tmp_path / "m.onnx"
    assert main(["export", "mnist", "--gradients", "--shape", "x:5,8", "--loss",
                 "softmax_cross_entropy", "--out", str(model), "--url", url]) == 0
    onnx.checker.check_model(onnx.load(model), full_check=True)


def test_cli_refusals_are_one_line_and_exit_1(url: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", REC["x"])
    assert main(["grad", "--model", "nobody", "--input", str(tmp_path / "x.npy"),
                 "--url", url]) == 1
    assert "no registered graph is named 'nobody'" in capsys.readouterr().err
    assert main(["register", str(MLP), "--url", url]) == 0
    capsys.readouterr()
    gid_err = main(["grad", "--model", "g-" + "0" * 64, "--url", url])
    assert gid_err == 1 and "404" in capsys.readouterr().err
    assert main(["grad", "--url", url]) == 1
    assert "give an expression" in capsys.readouterr().err
    # Two gradients do not fit a .npy.
    gid = Client(url).register_onnx(MLP)
    assert main(["grad", "--model", gid, "--input", str(tmp_path / "x.npy"), "--wrt",
                 "parameters", "--loss", "softmax_cross_entropy", "--targets",
                 str(_saved(tmp_path, "t.npy", REC["targets"])), "--out",
                 str(tmp_path / "g.npy"), "--url", url]) == 1
    assert "write a .npz" in capsys.readouterr().err
    # Pickled objects are refused, never loaded.
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["grad", "--model", gid, "--input", str(tmp_path / "obj.npy"),
                 "--url", url]) == 1


def _saved(tmp_path: Path, name: str, arr: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, arr)
    return path
