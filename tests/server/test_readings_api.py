"""The device readings API: the application of `patientkit serve` (build_app) in this
process, through Starlette's TestClient (pure API behaviour: statuses, bodies, what is
stored). One application for the module; each test uses devices of its own."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from patientkit.server.app import build_app
from tests.server.bodies import LEAVES, bodies, json_values

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"  # the rule tests store nothing
BAD_TIMESTAMP = (
    "Field 'readings' contains invalid 'timestamp' value. Must be ISO-8061 timestamp string."
)


@pytest.fixture(scope="module")
def api(store_target):
    """The application in this process, on each store."""
    with TestClient(build_app(store_target("api"), max_body=20000)) as client:
        yield client


@pytest.fixture
def device():
    return str(uuid.uuid4())


def error(message: str, status: int = 400) -> dict:
    return {
        "status": "error",
        "error_message": message,
        "status_code": status,
        "error_code": status,
    }


def create(api, body):
    return api.post("/api/device-readings/create", json=body)


def readings(device, *pairs):
    """A create body: the device's (count, timestamp) readings."""
    return {"id": device, "readings": [{"count": c, "timestamp": t} for c, t in pairs]}


def test_ping(api):
    response = api.get("/api/ping")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_create_then_latest_and_cumulative(api, device):
    response = create(
        api, readings(device, (5, "2021-09-29T16:09:15+01:00"), (3, "2021-09-29T16:08:15+0100"))
    )
    assert (response.status_code, response.json()) == (201, {"status": "ok"})
    latest = api.get(f"/api/device-readings/{device}/latest-timestamp")
    assert (latest.status_code, latest.json()) == (200, {"timestamp": "2021-09-29T16:09:15+0100"})
    total = api.get(f"/api/device-readings/{device}/cumulative-count")
    assert (total.status_code, total.json()) == (200, {"cumulative_count": 8})


def test_equal_instants_at_different_offsets_are_duplicates(api, device):
    create(api, readings(device, (5, "2021-09-29T16:09:15+01:00")))
    again = create(
        api,
        readings(device, (100, "2021-09-29T15:09:15+00:00"), (100, "2021-09-29T10:09:15-0500")),
    )
    assert again.status_code == 201
    assert api.get(f"/api/device-readings/{device}/cumulative-count").json() == {
        "cumulative_count": 5
    }
    assert api.get(f"/api/device-readings/{device}/latest-timestamp").json() == {
        "timestamp": "2021-09-29T16:09:15+0100"
    }


def test_latest_answers_in_the_offset_it_was_stored_with(api, device):
    create(
        api,
        readings(
            device,
            (1, "2021-09-29T10:00:00-05:00"),  # 15:00 UTC: the latest
            (1, "2021-09-29T16:30:00+02:00"),  # 14:30 UTC
        ),
    )
    assert api.get(f"/api/device-readings/{device}/latest-timestamp").json() == {
        "timestamp": "2021-09-29T10:00:00-0500"
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"readings": [{"count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}]},
            "Field 'id' is required.",
        ),
        ({"id": DEVICE}, "Field 'readings' is required."),
        (
            {
                "id": "not-a-uuid",
                "readings": [{"count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}],
            },
            "Device ID must be valid UUID string.",
        ),
        ({"id": DEVICE.upper(), "readings": []}, "Device ID must be valid UUID string."),
        (
            {"id": DEVICE, "readings": [{"count": 0, "timestamp": "2021-09-29T16:09:15+01:00"}]},
            "Field 'readings' contains invalid 'count' value. Must be positive integer.",
        ),
        (
            {"id": DEVICE, "readings": [{"count": True, "timestamp": "2021-09-29T16:09:15+01:00"}]},
            "Field 'readings' contains invalid 'count' value. Must be positive integer.",
        ),
        (
            {"id": DEVICE, "readings": [{"count": "3", "timestamp": "2021-09-29T16:09:15+01:00"}]},
            "Field 'readings' contains invalid 'count' value. Must be positive integer.",
        ),
        (
            {"id": DEVICE, "readings": [{"count": 1, "timestamp": "2021-09-29T16:09:15Z"}]},
            BAD_TIMESTAMP,
        ),
        (
            {"id": DEVICE, "readings": [{"count": 1}]},
            BAD_TIMESTAMP,
        ),
    ],
)
def test_invalid_requests_get_the_exact_message(api, body, message):
    response = create(api, body)
    assert (response.status_code, response.json()) == (400, error(message))


def test_a_body_that_is_not_a_json_object(api):
    for content in (b"[1, 2]", b"not json", b'"text"', b""):
        response = api.post("/api/device-readings/create", content=content)
        assert (response.status_code, response.json()) == (
            400,
            error("Request body must be a JSON object."),
        )


def test_all_or_nothing(api, device):
    response = create(
        api, readings(device, (1, "2021-09-29T16:09:15+01:00"), (-1, "2021-09-29T16:10:15+01:00"))
    )
    assert response.status_code == 400
    missing = api.get(f"/api/device-readings/{device}/cumulative-count")
    assert (missing.status_code, missing.json()) == (404, error("Device readings not found.", 404))


def test_unknown_and_invalid_devices_on_the_getters(api, device):
    for what in ("latest-timestamp", "cumulative-count"):
        missing = api.get(f"/api/device-readings/{device}/{what}")
        assert (missing.status_code, missing.json()) == (
            404,
            error("Device readings not found.", 404),
        )
        bad = api.get(f"/api/device-readings/nope/{what}")
        assert (bad.status_code, bad.json()) == (400, error("Device ID must be valid UUID string."))


def test_an_oversize_body_is_413(api, device):
    hour = [(1, f"2021-09-29T16:{m:02d}:{s:02d}+01:00") for m in range(60) for s in range(60)]
    response = create(api, readings(device, *hour))
    assert response.status_code == 413
    assert response.json() == error("Request body is larger than 20000 bytes.", 413)
    assert api.get(f"/api/device-readings/{device}/cumulative-count").status_code == 404


NOT_AN_OBJECT = "Request body must be a JSON object."
BAD_COUNT = "Field 'readings' contains invalid 'count' value. Must be positive integer."
ONE = '{"count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}'


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000,  # nested deeper than the parser recurses (issue 9, case 05)
        b"{" * 10_000,
        ('{"id": "%s", "readings": [{"count": ' + "9" * 5000 + ', "timestamp": "t"}]}').encode(),
        ('{"id": "%s", "readings": [' + ONE + '], "x": ' + "[" * 101 + "]" * 101 + "}").encode(),
        ('{"id": "%s", "readings": [' + ONE + '], "x": "\\udc00"}').encode(),
        ('{"id": "%s", "readings": [' + ONE + '], "x": "Jos\xe9"}').encode("latin-1"),
    ],
)
def test_a_body_that_cannot_be_parsed_is_400_never_500(api, device, body):
    response = api.post("/api/device-readings/create", content=body.replace(b"%s", device.encode()))
    assert (response.status_code, response.json()) == (400, error(NOT_AN_OBJECT))
    assert api.get(f"/api/device-readings/{device}/cumulative-count").status_code == 404
    assert create(api, readings(device, (2, "2021-09-29T16:09:15+01:00"))).status_code == 201


def test_a_count_past_int64_is_refused_and_totals_past_it_are_exact_integers(api, device):
    too_big = create(api, readings(device, (2**63, "2021-09-29T16:09:15+01:00")))
    assert (too_big.status_code, too_big.json()) == (400, error(BAD_COUNT))
    most = 2**63 - 1
    stored = create(
        api,
        readings(device, (most, "2021-09-29T16:09:15+01:00"), (most, "2021-09-29T16:09:16+01:00")),
    )
    assert stored.status_code == 201
    answer = api.get(f"/api/device-readings/{device}/cumulative-count")
    assert answer.text == '{"cumulative_count":18446744073709551614}'
    assert create(api, readings(device, (1000, "2021-09-29T16:09:17+01:00"))).status_code == 201
    assert api.get(f"/api/device-readings/{device}/cumulative-count").json() == {
        "cumulative_count": 2 * most + 1000
    }


# --- any body (issue 9: fuzzing each server body parser, through the endpoint) ----------

MESSAGES = {
    NOT_AN_OBJECT,
    BAD_COUNT,
    BAD_TIMESTAMP,
    "Field 'id' is required.",
    "Field 'readings' is required.",
    "Device ID must be valid UUID string.",
}
_leaf = st.one_of(
    LEAVES, st.sampled_from(["2021-09-29T16:09:15+01:00", "2021-09-29T16:09:15+0100"])
)
_json = json_values(_leaf)
_reading = st.fixed_dictionaries(
    {}, optional={"count": st.one_of(st.integers(-2, 2**64), _json), "timestamp": _json}
)
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.just(str(uuid.uuid4())), st.uuids().map(str), _json),
        "readings": st.one_of(st.lists(_reading, max_size=3), _json),
    },
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bodies(_bodies))
def test_any_create_body_gets_a_documented_answer(api, body):
    """Bytes of any kind, JSON of any shape: 201, or 400 with one of SPEC's messages in
    the API's error shape (413 past the body limit); never a 5xx."""
    response = api.post("/api/device-readings/create", content=body)
    if response.status_code == 201:
        assert response.json() == {"status": "ok"}
    elif response.status_code != 413:
        assert response.status_code == 400, response.text
        assert response.json()["error_message"] in MESSAGES, response.text
        assert response.json() == error(response.json()["error_message"])
