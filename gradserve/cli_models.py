"""The ``gradserve`` commands for ONNX models (see :mod:`gradserve.cli`):

    gradserve register model.onnx --name mnist       # prints the graph id
    gradserve grad --model mnist --input x.npy --wrt inputs --out g.npy
    gradserve grad --model mnist --input batch.npz --wrt parameters \\
        --loss softmax_cross_entropy --targets labels.npy --out grads.npz
    gradserve export mnist --gradients --shape x:1,1,28,28 --out mnist-grad.onnx

``--input`` is a ``.npy`` (the model's one input) or a ``.npz`` (input name → array);
``--out`` a ``.npy`` (the one gradient asked for) or a ``.npz`` holding ``output``,
``loss`` (with ``--loss``) and ``grad:<name>`` per gradient. Arrays are read with
``allow_pickle=False``: a file holding Python objects is refused, never unpickled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gradserve.client import GRAPH_ID, Client
from gradserve.errors import GradserveError


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key, timeout=args.timeout)


def graph_id_of(client: Client, model: str) -> str:
    """A graph id as given, or the id of the graph registered under the name ``model``."""
    if GRAPH_ID.match(model):
        return model
    for graph in client.iter_graphs():
        if graph.get("name") == model:
            return str(graph["graph_id"])
    raise GradserveError(f"no registered graph is named {model!r} (gradserve graphs lists "
                         "them; gradserve register model.onnx --name NAME makes one)")


def register(args: argparse.Namespace) -> int:
    path = Path(args.model)
    with _client(args) as client:
        if path.suffix == ".onnx" or path.is_file():
            graph_id = client.register_onnx(path, name=args.name)
        else:  # an expression, as POST /v1/graphs takes it
            graph_id = client.register(args.model, name=args.name)
        body = client.model(graph_id)
    if args.json:
        print(json.dumps({**body, **({"name": args.name} if args.name else {})}))
    else:
        print(graph_id)
        for what in ("inputs", "parameters"):
            items = body.get(what) or {}
            if items:
                shapes = ", ".join(f"{n}{list(d.get('shape') or [])}" for n, d in items.items())
                print(f"{what}: {shapes}", file=sys.stderr)
    return 0


def load_array(path: str | Path) -> Any:
    """``np.load`` without pickles; a file it cannot read is one clear error."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GradserveError(f"{path}: not a NumPy .npy/.npz of numbers ({exc})") from None


def read_arrays(path: str, inputs: list[str]) -> dict[str, np.ndarray]:
    """``.npz``: every array by its name; ``.npy``: the model's one input."""
    file = Path(path)
    if file.suffix == ".npz":
        with load_array(file) as z:
            try:
                return {k: z[k] for k in z.files}
            except ValueError as exc:
                raise GradserveError(f"{path}: {exc}") from None
    if len(inputs) != 1:
        raise GradserveError(f"{path}: a .npy holds one array and the model has inputs "
                             f"{', '.join(inputs)}: give a .npz with one array per input")
    return {inputs[0]: load_array(file)}


def write_arrays(path: str, output: Any, loss: Any, gradients: dict[str, Any]) -> None:
    file = Path(path)
    if file.suffix == ".npz":
        arrays = {"output": np.asarray(output),
                  **({} if loss is None else {"loss": np.asarray(loss)}),
                  **{f"grad:{n}": np.asarray(g) for n, g in gradients.items()}}
        np.savez(file, **arrays)
        return
    if len(gradients) != 1:
        raise GradserveError(f"{path}: a .npy holds one array and there are "
                             f"{len(gradients)} gradients ({', '.join(gradients)}): "
                             "write a .npz, or ask for one with --wrt NAME")
    np.save(file, np.asarray(next(iter(gradients.values()))))


def model_grad(args: argparse.Namespace) -> int:
    """``gradserve grad --model``: gradients of a registered graph at arrays from files."""
    with _client(args) as client:
        graph_id = graph_id_of(client, args.model)
        info = client.model(graph_id)
        inputs = list(info.get("inputs") or {})
        values: dict[str, Any] = read_arrays(args.input, inputs) if args.input else {}
        extra: dict[str, Any] = {}
        if args.loss is not None:
            if args.targets is None:
                raise GradserveError("--loss needs --targets FILE.npy (class labels or a "
                                     "tensor shaped like the output)")
            extra["loss"] = {"type": args.loss,
                             "targets": load_array(args.targets)}
        wrt: Any = args.wrt  # grad's --wrt, split at the commas
        if wrt is not None and len(wrt) == 1 and wrt[0] in ("inputs", "parameters", "all"):
            wrt = wrt[0]
        r = client.gradients(graph_id, values, wrt=wrt, dtype=args.dtype, **extra)
    loss = r.raw.get("loss")
    if args.out:
        write_arrays(args.out, r.output, loss, r.gradients)
    if args.json:
        print(json.dumps({"graph_id": graph_id, "loss": loss, "output_shape":
                          list(np.shape(r.output)), "gradients": {
                              n: list(np.shape(g)) for n, g in r.gradients.items()}}))
        return 0
    print(f"output  shape {list(np.shape(r.output))}" + ("" if loss is None else
                                                         f"  loss {float(loss):.8g}"))
    for name, g in r.gradients.items():
        arr = np.abs(np.asarray(g, dtype=np.float64))
        print(f"grad:{name}  shape {list(arr.shape)}  max |g| {float(np.max(arr, initial=0)):.6g}")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def export(args: argparse.Namespace) -> int:
    shapes = {}
    for item in args.shape or []:
        name, _, dims = item.partition(":")
        shapes[name] = [int(d) for d in dims.split(",") if d.strip()]
    with _client(args) as client:
        graph_id = graph_id_of(client, args.model)
        data = client.export_onnx(graph_id, gradients=args.gradients, wrt=args.wrt,
                                  loss=args.loss, dtype=args.dtype, shapes=shapes)
    out = args.out or f"{graph_id}{'-grad' if args.gradients else ''}.onnx"
    Path(out).write_bytes(data)
    print(out)
    return 0


def add_parsers(sub: Any, client_options: Any) -> None:
    """The ``register`` and ``export`` subcommands."""
    p = sub.add_parser("register", help="register an ONNX model file (or an expression)")
    p.add_argument("model", help="model.onnx, or an expression")
    p.add_argument("--name", help="the model's name (OIP clients ask for it by name)")
    client_options(p)
    p.set_defaults(func=register)

    p = sub.add_parser("export", help="write a registered graph as an ONNX model file")
    p.add_argument("model", help="a graph id or a registered name")
    p.add_argument("--gradients", action="store_true",
                   help="also the backward graph: outputs grad:<input>")
    p.add_argument("--wrt", help="comma-separated inputs, or inputs / parameters / all")
    p.add_argument("--loss", choices=("softmax_cross_entropy", "hinge", "mse"))
    p.add_argument("--dtype", choices=("float64", "float32"))
    p.add_argument("--shape", action="append", metavar="NAME:D0,D1",
                   help="the shape of an input the graph does not fix (repeatable)")
    p.add_argument("--out", help="the file (default: GRAPH_ID[-grad].onnx)")
    client_options(p)
    p.set_defaults(func=export)


def add_grad_options(p: argparse.ArgumentParser) -> None:
    """``grad --model``'s options (``grad`` itself is in :mod:`gradserve.cli`)."""
    p.add_argument("--model", help="a registered graph's name or id (instead of an "
                   "expression); arrays from --input")
    p.add_argument("--input", help="with --model: x.npy (its one input) or inputs.npz")
    p.add_argument("--out", help="with --model: g.npy (one gradient) or grads.npz")
    p.add_argument("--loss", choices=("softmax_cross_entropy", "hinge", "mse"),
                   help="with --model: the objective, a loss of the output")
    p.add_argument("--targets", help="with --loss: labels or targets (.npy)")
    p.add_argument("--dtype", choices=("float64", "float32"),
                   help="with --model: the compute dtype (default: the model's)")
