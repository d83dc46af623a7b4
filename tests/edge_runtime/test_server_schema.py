"""Property-based runs against the service: schemathesis over its OpenAPI schema, hypothesis over raw bodies.

Both assert the same contract: whatever arrives, the answer is never a 5xx and the service keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.bundle import Bundle
from edge_runtime.scoring import Scorer
from edge_runtime.server import create_app
from edge_runtime.settings import ServeSettings
from tests.edge_runtime.asgi import ASGIClient


@pytest.fixture
def app(model_bundle: Bundle) -> Any:
    settings = ServeSettings(bundle=model_bundle.path, max_batch=20, max_body_bytes=8192, max_stream_id_length=32)
    return create_app(Scorer.load(model_bundle, max_streams=8), settings)


@pytest.fixture
def api_schema(app: Any) -> Any:
    # The service also rejects bad input with 408 (body too slow) and 413 (body too large), both declared
    # in its schema; schemathesis's default list of rejection codes has neither.
    rejections = [400, 401, 403, 404, 405, 406, 408, 409, 413, 415, 422, 428, 429, "5XX"]
    config = schemathesis.config.SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejections}}}
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


def test_schemathesis_finds_no_server_errors(api_schema: Any) -> None:
    """Valid and schema-violating requests for every operation; all of schemathesis's checks must pass."""
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    cases = st.one_of([api_schema.as_strategy(generation_mode=mode) for mode in modes])

    # (schemathesis.pytest.from_fixture does not work with pytest 9 yet, so drive hypothesis directly)
    @given(case=cases)
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate()

    run()


def _values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


_rows = st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), _values()), max_size=4)
_bodies = st.one_of(
    st.fixed_dictionaries({"stream": st.text(max_size=40), "readings": st.lists(_rows, max_size=25)}),
    st.fixed_dictionaries(
        {
            "stream": _values(),
            "records": st.lists(
                st.dictionaries(st.sampled_from(["temperature", "vibration", "pressure", "rpm"]), _values()), max_size=4
            ),
        }
    ),
    _values(),
)


@given(body=_bodies)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_bodies_never_cause_server_errors(app: Any, body: Any) -> None:
    try:
        content = json.dumps(body).encode()  # NaN/Infinity become JSON literals the service must refuse
    except ValueError:
        content = b"[]"
    response = ASGIClient(app).post("/v1/score", content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"code", "message"}


@given(raw=st.binary(max_size=300))
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_bytes_never_cause_server_errors(app: Any, raw: bytes) -> None:
    response = ASGIClient(app).post("/v1/score", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 or response.status_code == 200
