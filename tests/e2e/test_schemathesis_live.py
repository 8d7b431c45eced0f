"""schemathesis with its default checks (negative-data rejection included), on positive and
negative examples of every operation, against a real gunicorn serving the app's own
/openapi.json. The example budget is fixed and derandomized.

Two settings differ from schemathesis' defaults, on purpose:
- 413 counts as rejecting invalid data: a body whose declared sizes are over a limit is
  refused before its form is looked at (the limits are checked before anything is decoded).
- positive-data acceptance is off: a schema-valid request is not a meaningful one (a graph
  naming an op that does not exist, shapes that do not fit, labels out of range are all
  schema-valid), and its 422 is the contract, not a failure.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

CONFIG = SchemathesisConfig.from_dict({"checks": {
    "positive_data_acceptance": {"enabled": False},
    "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "413",
                                                      "415", "422"]},
}})
EXAMPLES = settings(max_examples=12, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server():
    with GunicornServer({"GRADSERVE_MAX_BODY_BYTES": str(1 << 20)}, workers=1,
                        threads=2) as srv:
        yield srv
        logs = srv.logs()
    assert "Traceback" not in logs and "unhandled error" not in logs


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_live_server_conforms_to_its_openapi_document(server, mode):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    exercised = []
    for operation in operations:
        @EXAMPLES
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            case.call_and_validate(base_url=server.url, session=session)

        try:
            run()
        except Unsatisfiable:
            # GET routes without parameters have nothing to make invalid.
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
            continue
        exercised.append(operation.label)
    # /v1: gradients, graphs, graph gradients, mlp gradients, mlp graphs; /v2: infer.
    assert sum(label.startswith("POST") for label in exercised) == 6, exercised
