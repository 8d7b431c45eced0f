"""The ``gradserve`` command.

    gradserve serve                          # gunicorn with gunicorn.conf.py (exec'd)
    gradserve grad "(x + y) * z" x=-2 y=5 z=-4
    gradserve grad "sum((W @ x) ** 2)" 'W=[[0.1,0.5],[-0.3,0.8]]' 'x=[0.2,0.4]' --json
    gradserve check "tanh(x) * y" x=0.3 y=2   # analytic vs central differences
    gradserve grad "sum(tanh(W @ x))" W=@w.npy x=@xs.npy --batched x --per-example
    gradserve ops
    gradserve graphs                         # the registered graphs, as a table
    gradserve register model.onnx --name mnist
    gradserve grad --model mnist --input x.npy --wrt inputs --out g.npy
    gradserve export mnist --gradients --shape x:1,1,28,28
    gradserve rm GRAPH_ID [GRAPH_ID ...]     # remove registered graphs (and free their names)
    gradserve train data.npz --hidden 100 --optimizer adam --steps 500   # an MLP, by steps

The client commands ask the server at ``--url`` (default: GRADSERVE_URL, else the address
``gradserve serve`` binds, from GRADSERVE_HOST / GRADSERVE_PORT). With ``--local``, ``grad``
and ``check`` run the engine in this process instead, with no server: the one place this
package imports the server side (``service.engine``), lazily, so the client works without it.

Values are JSON (a number or nested lists), parsed with ``json.loads``, or ``@file.npy``, a
NumPy array file read with ``numpy.load(allow_pickle=False)``: never evaluated. ``--batched``
names the inputs whose leading axis indexes examples (a ``.npy`` batch, say); with
``--per-example`` every gradient comes per example.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradserve import cli_models, train_cli
from gradserve.client import Client
from gradserve.errors import APIError, ConnectionFailed, GradserveError


def default_url() -> str:
    url = os.environ.get("GRADSERVE_URL", "").strip()
    if url:
        return url
    host = os.environ.get("GRADSERVE_HOST", "127.0.0.1")
    # A bind-all address is not one to connect to: talk to this host.
    if host in ("0.0.0.0", "::", ""):  # noqa: S104  # nosec B104
        host = "127.0.0.1"
    return f"http://{host}:{os.environ.get('GRADSERVE_PORT', '8000')}"


# --- serve -------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn: signals (SIGTERM, SIGHUP) then reach its master
    directly, and nothing is left behind when it exits."""
    config = Path(args.config)
    if not config.is_file():
        print(f"gradserve serve: no gunicorn config at {config} (run from the repository "
              "root or pass --config)", file=sys.stderr)
        return 2
    if args.host is not None:
        os.environ["GRADSERVE_HOST"] = args.host
    if args.port is not None:
        os.environ["GRADSERVE_PORT"] = str(args.port)
    if args.workers is not None:
        os.environ["GRADSERVE_WORKERS"] = str(args.workers)
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), "service.wsgi:app"]
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - fixed argv, no shell
    return 0  # pragma: no cover - execvp does not return


# --- grad / check ------------------------------------------------------------------------------


def parse_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``["x=1", "W=[[1,2],[3,4]]"]`` → ``{"x": 1, "W": [[1, 2], [3, 4]]}`` (JSON values);
    ``x=@batch.npy`` reads a ``.npy`` file (no pickles)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"gradserve: expected name=value, got {pair!r}")
        if text.startswith("@"):
            try:
                values[name.strip()] = np.load(text[1:], allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise SystemExit(f"gradserve: {name}: cannot read {text[1:]!r} as a .npy "
                                 f"array: {exc}") from None
            continue
        try:
            values[name.strip()] = json.loads(text)
        except ValueError:
            raise SystemExit(f"gradserve: {name}: not a number or JSON array: {text!r}") from None
    return values


def _local(expression: str, values: dict[str, Any], wrt: list[str] | None,
           check: bool, batched: list[str] | None = None, per_example: bool = False
           ) -> dict[str, Any]:
    """The engine in this process (no server), answering as the server's JSON would."""
    from service.engine import REGISTRY, Query, compile_graph, execute, parse_expression
    from service.engine.errors import ProblemError

    try:
        plan = compile_graph(parse_expression(expression, REGISTRY).graph, REGISTRY)
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        result = execute(plan, arrays, Query(wrt=wrt, check=check, batched=batched,
                                             per_example=per_example))
    except ProblemError as exc:
        raise APIError(exc.status, exc.title, exc.detail, body=exc.problem()) from None
    body: dict[str, Any] = {"graph_id": plan.graph_id, "output": result.output,
                            "gradients": result.gradients, "cache": "local"}
    if result.check is not None:
        body["check"] = result.check
    return body


def _remote(args: argparse.Namespace, values: dict[str, Any], check: bool) -> dict[str, Any]:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        return client.gradients(args.expression, values, wrt=args.wrt, check=check,
                                encoding="json", batched=args.batched,
                                per_example=args.per_example).raw


def _text(value: Any) -> str:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return f"{float(arr):.10g}"
    return np.array2string(arr, precision=8, separator=", ", max_line_width=1 << 20)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i].split("\n")[0]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.replace("\n", " ") for c in row]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def _run(args: argparse.Namespace, check: bool) -> dict[str, Any]:
    values = parse_values(args.values)
    if args.local:
        return _local(args.expression, values, args.wrt, check, args.batched,
                      args.per_example)
    return _remote(args, values, check)


def grad(args: argparse.Namespace) -> int:
    if getattr(args, "model", None):
        if args.expression is not None or args.local:
            raise GradserveError("give an expression or --model, not both (--model runs on "
                                 "the server)")
        return cli_models.model_grad(args)
    if args.expression is None:
        raise GradserveError("give an expression, or --model NAME with --input FILE")
    body = _run(args, check=False)
    if args.json:
        print(json.dumps(_jsonable(body)))
        return 0
    values = parse_values(args.values)
    print(f"output  {_text(_decoded(body['output']))}")
    rows = [["input", "value", "gradient"]]
    rows += [[name, _text(values.get(name, float("nan"))), _text(_decoded(g))]
             for name, g in body["gradients"].items()]
    print(_table(rows))
    return 0


def check(args: argparse.Namespace) -> int:
    body = _run(args, check=True)
    report = body.get("check") or {}
    worst = max((r["max_rel_error"] for r in report.values()), default=0.0)
    ok = worst <= args.tolerance
    if args.json:
        print(json.dumps(_jsonable({**body, "ok": ok, "tolerance": args.tolerance})))
    else:
        rows = [["input", "max_abs_error", "max_rel_error"]]
        rows += [[n, f"{r['max_abs_error']:.3g}", f"{r['max_rel_error']:.3g}"]
                 for n, r in report.items()]
        print(_table(rows))
        verdict = "ok" if ok else "FAILED"
        print(f"{verdict}: largest relative error {worst:.3g} (tolerance {args.tolerance:g})")
    return 0 if ok else 1


def _decoded(value: Any) -> Any:
    from gradserve.tensors import from_wire

    return from_wire(value) if not isinstance(value, np.ndarray | np.generic) else value


# --- ops ---------------------------------------------------------------------------------------


def ops(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        listing = client.ops()
    if args.json:
        print(json.dumps(listing))
        return 0
    rows = [["op", "arity", "attrs", "gradient"]]
    rows += [[op["name"], str(op["arity"]), ", ".join(a["name"] for a in op["attrs"]) or "-",
              op["gradient"]] for op in listing]
    print(_table(rows))
    return 0


# --- graphs / rm -------------------------------------------------------------------------------


def _inputs_text(inputs: dict[str, Any]) -> str:
    parts = []
    for name, spec in inputs.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        parts.append(f"{name}{list(shape)}" if shape is not None else name)
    return ", ".join(parts) or "-"


def graphs(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        listing = client.list_graphs()
    if args.json:
        print(json.dumps(listing))
        return 0
    if not listing:
        print("no registered graphs")
        return 0
    rows = [["graph_id", "name", "kind", "inputs", "output"]]
    rows += [[g["graph_id"], g.get("name") or "-", g.get("kind", "-"),
              _inputs_text(g.get("inputs") or {}), str(g.get("output", "-"))]
             for g in listing]
    print(_table(rows))
    return 0


def rm(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        for graph_id in args.graph_ids:
            client.delete(graph_id)
            if not args.json:
                print(f"removed {graph_id}")
    if args.json:
        print(json.dumps({"removed": args.graph_ids}))
    return 0


# --- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradserve", description="gradserve: gradients by "
                                     "backpropagation as a service (docs/api.md).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server (execs gunicorn -c gunicorn.conf.py)")
    p.add_argument("--host", help="bind address (default: GRADSERVE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: GRADSERVE_PORT or 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default: GRADSERVE_WORKERS)")
    p.add_argument("--config", default="gunicorn.conf.py", help="gunicorn config file")
    p.set_defaults(func=serve)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=default_url(),
                       help="server URL (default: GRADSERVE_URL, else from "
                            "GRADSERVE_HOST/GRADSERVE_PORT)")
        p.add_argument("--api-key", default=None, help="API key, sent as a bearer token")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
        p.add_argument("--json", action="store_true", help="print the JSON answer")

    for name, func, doc in (("grad", grad, "output and gradients of an expression"),
                            ("check", check, "compare gradients with central differences")):
        p = sub.add_parser(name, help=doc)
        p.add_argument("expression", nargs="?" if name == "grad" else None,
                       help='e.g. "(x + y) * z"')
        p.add_argument("values", nargs="*", metavar="name=value",
                       help="input values as JSON: x=1 'W=[[1,2],[3,4]]'")
        p.add_argument("--wrt", type=lambda s: [n for n in s.split(",") if n],
                       help="comma-separated inputs to differentiate (default: all); with "
                            "--model also inputs, parameters or all")
        p.add_argument("--local", action="store_true",
                       help="run the engine in this process, no server")
        p.add_argument("--batched", type=lambda s: [n for n in s.split(",") if n],
                       help="comma-separated inputs whose leading axis indexes examples")
        p.add_argument("--per-example", action="store_true",
                       help="with --batched: every gradient per example")
        client_options(p)
        if name == "grad":
            cli_models.add_grad_options(p)
        if name == "check":
            p.add_argument("--tolerance", type=float, default=1e-6,
                           help="largest relative error accepted (exit 1 above it)")
        p.set_defaults(func=func)

    p = sub.add_parser("ops", help="list the ops")
    client_options(p)
    p.set_defaults(func=ops)

    p = sub.add_parser("graphs", help="list the registered graphs")
    client_options(p)
    p.set_defaults(func=graphs)

    cli_models.add_parsers(sub, client_options)
    train_cli.add_parser(sub, client_options)

    p = sub.add_parser("rm", help="remove registered graphs (and free their names)")
    p.add_argument("graph_ids", nargs="+", metavar="GRAPH_ID", help="g- and 64 hex digits")
    client_options(p)
    p.set_defaults(func=rm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except APIError as exc:
        print(f"gradserve: {exc}", file=sys.stderr)
        # The detail already says the first error: list the others, each once.
        shown: set[str] = set()
        for err in exc.errors[:10]:
            loc = ".".join(str(p) for p in err.get("loc", []))
            msg = str(err.get("msg", ""))
            line = f"{loc}: {msg}"
            if line not in shown and msg not in exc.detail:
                print(f"  {line}", file=sys.stderr)
                shown.add(line)
        return 1
    except ConnectionFailed as exc:
        print(f"gradserve: {exc}. Is the server running there? Point the command at it "
              "with --url URL or the GRADSERVE_URL environment variable.", file=sys.stderr)
        return 1
    except GradserveError as exc:
        print(f"gradserve: {exc}", file=sys.stderr)
        return 1
