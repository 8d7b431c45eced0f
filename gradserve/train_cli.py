"""``gradserve train``: train an MLP on a ``.npz`` dataset through ``POST /v1/mlp/step``.

    gradserve train spiral.npz --hidden 100 --activation relu --optimizer adam --lr 0.01 \\
        --steps 500 --per-request 100 --out spiral-weights.npz

The dataset holds ``x`` (batch, in) and ``y``: integer labels for ``softmax_cross_entropy``
or ``hinge`` (the default loss), targets shaped as the output for ``mse`` (``--classes`` is
then the output width; for labels it defaults to ``max(y) + 1``). The first layer's weights
are drawn as ``torch.nn.Linear`` draws them (uniform in ±1/sqrt(in), ``--seed``), unless
``--init`` names an ``.npz`` this command wrote: its weights and optimizer state continue
that run. Each request runs ``--per-request`` steps (full batch); a progress line after each
says the step, the loss and the steps per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradserve.client import Client
from gradserve.errors import GradserveError
from gradserve.trainer import Trainer

LOSSES = ("softmax_cross_entropy", "hinge", "mse")


def _dataset(path: str, loss: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GradserveError(f"cannot read {path}: {exc}") from None
    missing = [k for k in ("x", "y") if k not in data.files]
    if missing:
        raise GradserveError(f"{path} has no {' or '.join(missing)} array (it has "
                             f"{', '.join(data.files) or 'none'}): x is (batch, in), y the "
                             "labels or targets")
    x, y = np.asarray(data["x"], dtype=np.float64), np.asarray(data["y"])
    if x.ndim != 2 or len(y) != len(x):
        raise GradserveError(f"{path}: x must be (batch, in) and y have one entry per row, "
                             f"got x {x.shape} and y {y.shape}")
    return x, (y.astype(np.float64) if loss == "mse" else y.astype(np.int64))


def _layers(args: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    out = args.classes or (y.shape[-1] if args.loss == "mse" and y.ndim == 2
                           else int(y.max()) + 1)
    sizes = [x.shape[1], *args.hidden, out]
    rng = np.random.default_rng(args.seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bound = 1 / np.sqrt(n_in)
        layers.append({"weight": rng.uniform(-bound, bound, (n_out, n_in)),
                       "bias": rng.uniform(-bound, bound, n_out),
                       "activation": args.activation if i < len(sizes) - 2 else "identity"})
    return layers


def _resume(path: str, trainer: Trainer) -> None:
    """Weights and state from an ``.npz`` this command wrote."""
    data = np.load(path, allow_pickle=False)
    assert trainer.layers is not None
    for i, layer in enumerate(trainer.layers):
        for part in ("weight", "bias"):
            key = f"layers.{i}.{part}"
            if key not in data.files:
                raise GradserveError(f"{path} has no {key} (it is not a file this command "
                                     "wrote for the same network)")
            layer[part] = data[key]
    if "state.step" in data.files:
        slots: dict[str, dict[str, Any]] = {}
        for key in data.files:
            if key.startswith("state.slots."):
                param, slot = key.removeprefix("state.slots.").rsplit(".", 1)
                slots.setdefault(param, {})[slot] = data[key]
        trainer.state = {"step": int(data["state.step"]), "slots": slots}


def _save(path: str, trainer: Trainer) -> None:
    arrays: dict[str, Any] = {}
    assert trainer.layers is not None
    for i, layer in enumerate(trainer.layers):
        arrays[f"layers.{i}.weight"] = layer["weight"]
        arrays[f"layers.{i}.bias"] = layer["bias"]
    if trainer.state is not None:
        arrays["state.step"] = np.asarray(trainer.state["step"])
        for param, slots in trainer.state["slots"].items():
            for slot, value in slots.items():
                arrays[f"state.slots.{param}.{slot}"] = value
    arrays["losses"] = np.asarray(trainer.losses)
    np.savez(Path(path), **arrays)


def train(args: argparse.Namespace) -> int:
    x, y = _dataset(args.dataset, args.loss)
    optimizer: dict[str, Any] = {"type": args.optimizer}
    if args.lr is not None:
        optimizer["lr"] = args.lr
    elif args.optimizer == "sgd":
        optimizer["lr"] = 0.1
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        t = Trainer.mlp(client, _layers(args, x, y), x, (args.loss, y), optimizer,
                        dtype=args.dtype)
        if args.init:
            _resume(args.init, t)
        done = 0
        start = time.perf_counter()
        while done < args.steps:
            k = min(args.per_request, args.steps - done)
            r = t.step(steps=k)
            done += k
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"step {t.step_count:>6}  loss {r.losses[-1]:.6g}  {rate:,.1f} steps/s",
                  file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.out:
        _save(args.out, t)
    if args.json:
        import json

        print(json.dumps({"steps": t.step_count, "loss": t.losses[-1] if t.losses else None,
                          "losses": t.losses}))
    return 0


def add_parser(sub: Any, client_options: Any) -> None:
    """The ``train`` subcommand, beside the others in ``gradserve.cli``."""
    p = sub.add_parser("train", help="train an MLP on a .npz dataset (x, y) by /v1/mlp/step")
    p.add_argument("dataset", help=".npz with x (batch, in) and y (labels or targets)")
    p.add_argument("--hidden", type=lambda s: [int(n) for n in s.split(",") if n],
                   default=[64], help="hidden widths, comma-separated (default 64)")
    p.add_argument("--activation", default="relu",
                   choices=("relu", "tanh", "sigmoid", "identity"))
    p.add_argument("--classes", type=int, default=None, help="output width")
    p.add_argument("--loss", default="softmax_cross_entropy", choices=LOSSES)
    p.add_argument("--optimizer", default="adam",
                   choices=("sgd", "adam", "adamw", "rmsprop", "adagrad"))
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: torch.optim's; sgd: 0.1)")
    p.add_argument("--steps", type=int, default=200, help="steps in all")
    p.add_argument("--per-request", type=int, default=50, help="steps per request")
    p.add_argument("--dtype", choices=("float64", "float32"), default=None)
    p.add_argument("--seed", type=int, default=0, help="initial weights' seed")
    p.add_argument("--init", default=None, help="continue from an .npz this command wrote")
    p.add_argument("--out", default=None, help="write weights, state and losses (.npz)")
    client_options(p)
    p.set_defaults(func=train)
