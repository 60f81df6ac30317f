"""Schemathesis over the service's own OpenAPI spec, bounded: no 5xx, every response as documented."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Server

EXAMPLES = 25  # per operation; bounded so CI stays quick


@pytest.fixture(scope="module")
def api_schema(model_repo):
    srv = Server(model_repo)
    srv.wait_ready()
    yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    srv.stop()


def operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_covers_the_api(api_schema):
    paths = {op.path for op in operations(api_schema)}
    assert {"/v1/models/{name}/predict", "/v2/models/{name}/infer", "/v1/models/{name}/score"} <= paths


def test_every_operation_conforms(api_schema):
    ops = operations(api_schema)
    assert len(ops) >= 20
    for operation in ops:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate()

        check()
