"""GET / and /playground: the computational graph drawn with its values and gradients.

The page is static (HTML, CSS and hand-written JS/SVG under ``service/static/playground``);
it has no server side of its own and calls only the public API (``POST /v1/gradients`` with
``trace: true``), so it is also a working example of that API. Nothing is fetched from
elsewhere, and the Content-Security-Policy below forbids it: no inline script or style, no
other origin, no framing.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).resolve().parents[2] / "static" / "playground"  # service/static

bp = Blueprint("playground", __name__, static_folder=str(STATIC),
               static_url_path="/static/playground")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


@bp.get("/")
@bp.get("/playground")
def page() -> Response:
    """The playground page (the same file at both paths)."""
    resp = send_from_directory(STATIC, "index.html", max_age=0)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    return resp
