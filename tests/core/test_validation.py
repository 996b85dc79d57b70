import pytest

from patientkit.core import validation as v


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2021-09-29T16:09:15+01:00", 1632928155),
        ("2021-09-29T16:09:15+0100", 1632928155),
        ("2021-09-29T15:09:15+00:00", 1632928155),
        ("2021-09-29T10:09:15-0500", 1632928155),
        ("2020-02-29T00:00:00+0000", 1582934400),
    ],
)
def test_timestamps_in_both_offset_forms(text, instant):
    assert v.instant_of(text) == instant
    assert v.Instants().of(text) == instant


@pytest.mark.parametrize(
    "text",
    [
        "2021-09-29T16:09:15Z",
        "2021-09-29T16:09:15",
        "2021-09-29 16:09:15+01:00",
        "2021-09-29T16:09:15.5+01:00",
        "2021-02-30T16:09:15+01:00",
        "2021-09-29T24:00:00+01:00",
        "2021-09-29T16:60:15+01:00",
        "2021-09-29T16:09:60+01:00",
        "2021-09-29T16:09:15+24:00",
        "2021-09-29T16:09:15+1:00",
        "\uff12\uff10\uff12\uff11-09-29T16:09:15+01:00",  # full-width digits
        "",
        12345,
        None,
    ],
)
def test_bad_timestamps(text):
    assert v.instant_of(text) is None
    assert v.Instants().of(text) is None


def test_cached_instants_agree_across_an_hour():
    cache = v.Instants()
    for minute in range(60):
        for second in (0, 17, 59):
            text = f"2021-09-29T16:{minute:02d}:{second:02d}+05:30"
            assert cache.of(text) == v.instant_of(text)
    assert len(cache.hours) == 1


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (1, True),
        (2**63 - 1, True),
        (0, False),
        (-3, False),
        (True, False),
        (1.0, False),
        ("5", False),
        (2**63, False),
        (None, False),
    ],
)
def test_counts(value, ok):
    assert v.is_count(value) is ok


def test_device_ids_are_canonical_lowercase_uuid4():
    assert v.is_device_id("063c5957-8905-45f9-bfe3-960713788919")
    assert not v.is_device_id("063C5957-8905-45F9-BFE3-960713788919")
    assert not v.is_device_id("063c5957-8905-15f9-bfe3-960713788919")  # version 1
    assert not v.is_device_id("063c59578905-45f9-bfe3-960713788919")
    assert not v.is_device_id("{063c5957-8905-45f9-bfe3-960713788919}")
    assert not v.is_device_id(None)


def test_create_request_messages_in_order():
    good = "063c5957-8905-45f9-bfe3-960713788919"
    cases = [
        ([], v.NOT_AN_OBJECT),
        ({"readings": []}, v.ID_REQUIRED),
        ({"id": "x", "readings": []}, v.BAD_DEVICE_ID),
        ({"id": good}, v.READINGS_REQUIRED),
        ({"id": good, "readings": []}, v.READINGS_REQUIRED),
        ({"id": good, "readings": [{"count": 0, "timestamp": "x"}]}, v.BAD_COUNT),
        ({"id": good, "readings": [{"count": 1, "timestamp": "x"}]}, v.BAD_TIMESTAMP),
        (
            {"id": good, "readings": [{"count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}, 5]},
            v.BAD_COUNT,
        ),
    ]
    for body, message in cases:
        with pytest.raises(v.Invalid) as caught:
            v.create_request(body)
        assert caught.value.message == message, body
    readings = v.create_request(
        {"id": good, "readings": [{"count": 2, "timestamp": "2021-09-29T16:09:15+0100"}]}
    )
    assert readings == [(good, 2, "2021-09-29T16:09:15+0100", 1632928155)]


def test_record_problems():
    record = {k: "x" for k in ("test_id", "patient_id", "clinic_id", "test_type", "result")}
    assert v.record_problem(record) is None
    assert v.record_problem([record]) == "Invalid JSON"
    assert v.record_problem({**record, "patient_id": ""}) == "Invalid or missing field: patient_id"
    assert v.record_problem({**record, "result": 5}) == "Invalid or missing field: result"
    missing = dict(record)
    del missing["test_id"], missing["clinic_id"]
    assert v.record_problem(missing) == "Invalid or missing field: test_id"


@pytest.mark.parametrize("field", ["test_id", "patient_id", "clinic_id", "test_type", "result"])
@pytest.mark.parametrize("text", ["\x00", "a\x00", "\x00b", "a\x00b"])
def test_nul_in_any_field_is_an_invalid_field_whatever_the_store(field, text):
    # PostgreSQL text cannot hold NUL and SQLite can: refused before either store sees it
    record = {k: "x" for k in ("test_id", "patient_id", "clinic_id", "test_type", "result")}
    bad = {**record, field: text}
    assert v.record_problem(bad) == f"Invalid or missing field: {field}"
    assert v.all_records_valid([record, record]) is True
    assert v.all_records_valid([record, bad]) is False
