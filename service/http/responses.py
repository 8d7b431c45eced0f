"""JSON responses, written with orjson (NumPy arrays natively); errors are
rendered by ``service.http.problems``"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    # content_type, not mimetype: the header as is, without werkzeug's charset logic.
    return Response(orjson.dumps(body, option=_OPTS), status=status, headers=headers,
                    content_type="application/json")
