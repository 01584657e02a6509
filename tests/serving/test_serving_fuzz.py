"""A property-based fuzz of the HTTP API from its own OpenAPI document (schemathesis, in-process over ASGI, no
network): generated requests, valid and invalid, never get a 5xx, and every answer conforms to the document
(status code declared for the route, content type, body schema). Bounded: a fixed number of examples per
operation and no per-example deadline, so it takes seconds, not minutes, on a shared 2-core machine.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fusionrec.serving.api import create_api  # noqa: E402
from fusionrec.serving.auth import TokenAuth  # noqa: E402
from fusionrec.serving.engine import VersionEngine  # noqa: E402
from fusionrec.serving.router import LocalClient, Router  # noqa: E402
from fusionrec.serving.scorer import VersionScorer  # noqa: E402
from fusionrec.spec import ServingLimits  # noqa: E402

TOKEN = "fuzz-token"
EXAMPLES = 200  # per mode, spread over the operations (~3 s each on a 2-core machine)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(artifacts, monkeypatch_module):
    """The app with a ranking (v1) and a ctr (c1) version and auth on, as a schemathesis schema."""
    monkeypatch_module.setenv("FUSIONREC_FUZZ_TOKENS", TOKEN)
    clients = {v: LocalClient(VersionEngine(VersionScorer.load(artifacts[v]))) for v in ("v1", "c1")}
    router = Router("shop-recs", clients, {"v1": 50, "c1": 50})
    limits = ServingLimits(max_k=20, max_history=8, max_candidates=10, max_body_bytes=4096)
    app = create_api(router, TokenAuth(token_env="FUSIONREC_FUZZ_TOKENS"), limits)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_requests_get_no_5xx_and_documented_answers(api_schema, mode):
    """Requests that fit the document, then requests that break it (wrong types, missing or extra fields,
    out-of-range values): either way a documented answer, never a 5xx."""
    strategy = api_schema.as_strategy(GenerationMode(mode))

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

    fuzz()
