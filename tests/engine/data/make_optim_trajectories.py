"""Record torch.optim trajectories for tests/engine/test_optim.py and tests/flows/test_step.py.

Run with a PyTorch environment (never needed by the test suite, which reads the JSON):

    /work/torchvenv/bin/python tests/engine/data/make_optim_trajectories.py

Every case: one optimizer and options on the objective
``sum((tanh(W @ x + b) - t) ** 2)`` in float64, STEPS steps with torch keeping the state;
each step records the loss at the values it starts from, the gradients, and the parameters
and state (torch.optim's state keys) after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STEPS = 6
CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.02}),
    ("sgd", {"lr": 0.01, "maximize": True}),
    ("adam", {"lr": 0.01}),
    ("adam", {}),
    ("adam", {"lr": 0.02, "weight_decay": 0.1, "amsgrad": True}),
    ("adam", {"lr": 0.01, "maximize": True}),
    ("adam", {"lr": 0.01, "betas": [0.5, 0.9], "eps": 1e-4}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.05,
               "amsgrad": True}),
    ("adamw", {"lr": 0.01, "maximize": True}),
    ("rmsprop", {}),
    ("rmsprop", {"lr": 0.005, "maximize": True}),
    ("rmsprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.01}),
    ("rmsprop", {"lr": 0.005, "centered": True}),
    ("rmsprop", {"lr": 0.003, "momentum": 0.7, "centered": True, "eps": 1e-6}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.05, "maximize": True}),
    ("adagrad", {"lr": 0.05, "lr_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6,
                 "weight_decay": 0.05}),
]
CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}


def tolist(t: torch.Tensor) -> object:
    return t.detach().tolist()


#: Recorded in float32 too: the service's float32 steps against torch's float32 steps.
FLOAT32 = [
    ("adam", {"lr": 0.02, "weight_decay": 0.1, "amsgrad": True}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.02}),
    ("rmsprop", {"lr": 0.003, "momentum": 0.7, "centered": True, "eps": 1e-6}),
    ("adagrad", {"lr": 0.05, "lr_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6,
                 "weight_decay": 0.05}),
]


def record(kind: str, options: dict, seed: int, dtype: torch.dtype = torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, 3, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(2, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    x = torch.randn(3, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randn(2, generator=g, dtype=torch.float64).to(dtype)
    params = {"W": W, "b": b}
    opts = {k: tuple(v) if k == "betas" else v for k, v in options.items()}
    opt = CLASSES[kind]([W, b], foreach=False, **opts)
    case = {"type": kind, "options": options,
            "values": {"W": tolist(W), "b": tolist(b), "x": tolist(x), "t": tolist(t)},
            "steps": []}
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((torch.tanh(W @ x + b) - t) ** 2).sum()
        loss.backward()
        grads = {n: tolist(p.grad) for n, p in params.items()}
        opt.step()
        slots, step = {}, 0
        for n, p in params.items():
            st = opt.state[p]
            slots[n] = {k: tolist(v) for k, v in st.items() if k != "step"}
            if "step" in st:
                step = int(st["step"])
        case["steps"].append({"loss": loss.item(), "grads": grads,
                              "params": {n: tolist(p) for n, p in params.items()},
                              "state": {"step": step, "slots": slots}})
    return case


def main() -> None:
    cases = [record(kind, options, seed) for seed, (kind, options) in enumerate(CASES)]
    f32 = [record(kind, options, 100 + seed, torch.float32)
           for seed, (kind, options) in enumerate(FLOAT32)]
    out = Path(__file__).with_name("optim_trajectories.json")
    out.write_text(json.dumps({"torch": torch.__version__, "expression":
                               "sum((tanh(W @ x + b) - t) ** 2)", "cases": cases,
                               "float32": f32}, indent=1))
    print(f"wrote {out} ({len(cases)} cases, {STEPS} steps each)")


if __name__ == "__main__":
    main()
