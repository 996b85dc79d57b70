"""`GET /openapi.json`: the OpenAPI 3.1 document of every route the server has, with its
bodies, answers and error shapes (SPEC.md "The server", OpenAPI). Written by hand from
SPEC.md's tables; tests/server/test_openapi.py keeps it true (each route of the app is
in it, the document is valid, and schemathesis finds no answer of a real `serve` outside
it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from patientkit import __version__
from patientkit.core import validation
from patientkit.server.records import MAX_BATCH

Schema = dict[str, Any]

UUID4 = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:?\d{2}$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    answer: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        answer["headers"] = headers
    return answer


CHALLENGE = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}
ALLOW = {"Allow": {"description": "The methods the route takes.", "schema": {"type": "string"}}}


def _errors(shape: str, statuses: dict[int, str]) -> dict[str, Schema]:
    """Error answers in one API's shape, with the 401 of authentication."""
    answers = {str(status): _json(_ref(shape), why) for status, why in statuses.items()}
    answers["401"] = _json(
        _ref(shape), "No or wrong bearer token (`Not authenticated`).", CHALLENGE
    )
    return answers


COMPONENTS: Schema = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
        "ExportError": {
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string"}},
        },
        "ReadingsError": {
            "type": "object",
            "required": ["status", "error_message", "status_code", "error_code"],
            "properties": {
                "status": {"const": "error"},
                "error_message": {"type": "string"},
                "status_code": {"type": "integer"},
                "error_code": {"type": "integer"},
            },
        },
        "RecordsError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "Download": {
            "type": "object",
            "required": ["id", "rows", "event_types", "patients", "start_time", "end_time"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "rows": {"type": "integer", "minimum": 0},
                "event_types": {"type": "array", "items": {"type": "string"}},
                "patients": {"type": "array", "items": {"type": "string"}},
                "start_time": {"type": ["string", "null"]},
                "end_time": {"type": ["string", "null"]},
            },
        },
        "Reading": {
            "type": "object",
            "required": ["count", "timestamp"],
            "properties": {
                "count": {"type": "integer", "minimum": 1, "maximum": validation.MAX_COUNT},
                "timestamp": {"type": "string", "pattern": TIMESTAMP},
            },
        },
        "CreateReadings": {
            "type": "object",
            "required": ["id", "readings"],
            "properties": {
                "id": {"type": "string", "pattern": UUID4},
                "readings": {"type": "array", "items": _ref("Reading")},
            },
        },
        "Record": {
            "type": "object",
            "required": ["test_id", "patient_id", "clinic_id", "test_type", "result"],
            "properties": {
                name: {"type": "string", "minLength": 1}
                for name in ("test_id", "patient_id", "clinic_id", "test_type", "result")
            },
        },
        "StoredRecord": {
            "type": "object",
            "required": ["test_id", "patient_id", "clinic_id", "test_type", "result", "created_at"],
            "properties": {
                name: {"type": "string"}
                for name in (
                    "test_id",
                    "patient_id",
                    "clinic_id",
                    "test_type",
                    "result",
                    "created_at",
                )
            },
        },
        "BatchAnswer": {
            "type": "object",
            "required": ["results", "created", "duplicates", "invalid"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["test_id", "status"],
                        "properties": {
                            "test_id": {"type": ["string", "null"]},
                            "status": {"enum": [200, 400, 409]},
                            "error": {"type": "string"},
                        },
                    },
                },
                "created": {"type": "integer", "minimum": 0},
                "duplicates": {"type": "integer", "minimum": 0},
                "invalid": {"type": "integer", "minimum": 0},
            },
        },
    },
}


def _path_parameter(name: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def document(bulk: bool = True, metrics: bool = True) -> Schema:
    """The OpenAPI 3.1 document of a server built with these options (see build_app)."""
    export_id = _path_parameter("export_id")
    download_id = _path_parameter("download_id")
    device_id = _path_parameter("device_id", {"type": "string", "pattern": UUID4})
    export_errors = {404: "`Export not found` or `Download not found`."}
    device_errors = {
        400: "`Device ID must be valid UUID string.`",
        404: "`Device readings not found.` (the device has no readings)",
    }
    paths: Schema = {
        "/api/ping": {
            "get": {
                "summary": "Is the server up? (needs no token)",
                "security": [],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "Up."
                    )
                },
            }
        },
        "/api/export": {
            "get": {
                "summary": "The exports served.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "data": {
                                    "type": "object",
                                    "properties": {
                                        "export_ids": {"type": "array", "items": {"type": "string"}}
                                    },
                                }
                            },
                        },
                        "Export ids, sorted.",
                    ),
                    **_errors("ExportError", {}),
                },
            }
        },
        "/api/export/{export_id}": {
            "get": {
                "summary": "An export's downloads.",
                "parameters": [export_id],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "data": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "string"},
                                        "download_ids": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        },
                        "The export's download ids.",
                    ),
                    **_errors("ExportError", export_errors),
                },
            }
        },
        "/api/export/{export_id}/{download_id}": {
            "get": {
                "summary": "A download's metadata.",
                "parameters": [export_id, download_id],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"data": _ref("Download")}},
                        "`rows` is the number of data rows of its CSV.",
                    ),
                    **_errors("ExportError", export_errors),
                },
            }
        },
        "/api/export/{export_id}/{download_id}/data": {
            "get": {
                "summary": "A download's CSV, streamed.",
                "parameters": [export_id, download_id],
                "responses": {
                    "200": {
                        "description": "`patient_id,event_time,event_type,value` CSV.",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    **_errors("ExportError", export_errors),
                },
            }
        },
        "/api/device-readings/create": {
            "post": {
                "summary": "Store a device's readings, all or nothing; duplicates ignored.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateReadings")}},
                },
                "responses": {
                    "201": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "Stored."
                    ),
                    **_errors(
                        "ReadingsError",
                        {
                            400: "A field is missing or invalid; nothing stored.",
                            413: "Body too large.",
                        },
                    ),
                },
            }
        },
        "/api/device-readings/{device_id}/latest-timestamp": {
            "get": {
                "summary": "The device's latest reading instant, in its stored offset.",
                "parameters": [device_id],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"timestamp": {"type": "string"}}},
                        "`%Y-%m-%dT%H:%M:%S%z`.",
                    ),
                    **_errors("ReadingsError", device_errors),
                },
            }
        },
        "/api/device-readings/{device_id}/cumulative-count": {
            "get": {
                "summary": "The sum of the device's reading counts: an exact integer of any size.",
                "parameters": [device_id],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"cumulative_count": {"type": "integer"}}},
                        "The total.",
                    ),
                    **_errors("ReadingsError", device_errors),
                },
            }
        },
        "/tests": {
            "post": {
                "summary": "Create a test record (never overwritten). A repeated X-Request-ID "
                "gets the original answer.",
                "parameters": [_request_id()],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Record")}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "test_id"],
                            "properties": {
                                "status": {"const": "success"},
                                "test_id": {"type": "string"},
                            },
                        },
                        "Created.",
                    ),
                    **_errors(
                        "RecordsError",
                        {
                            400: "`Invalid JSON` or `Invalid or missing field: <name>`.",
                            409: "`Conflict: test_id exists`.",
                            413: "Body too large.",
                            503: "The store is unavailable; retry later.",
                        },
                    ),
                },
            },
            "get": {
                "summary": "A clinic's records, oldest first; `[]` when none.",
                "parameters": [
                    {
                        "name": "clinic_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("StoredRecord")}, "The records."),
                    **_errors("RecordsError", {400: "`clinic_id is required`."}),
                },
            },
        },
    }
    if bulk:
        paths["/tests/batch"] = {
            "post": {
                "summary": f"Many records in one request (at most {MAX_BATCH}), each with its "
                "own verdict, stored in one transaction.",
                "parameters": [_request_id()],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "array", "items": {}}},
                    },
                },
                "responses": {
                    "200": _json(_ref("BatchAnswer"), "Each record's verdict, in input order."),
                    **_errors(
                        "RecordsError",
                        {
                            400: "`Invalid JSON`: neither NDJSON nor a JSON array.",
                            413: "Too many records, or body too large.",
                            503: "The store is unavailable; retry later.",
                        },
                    ),
                },
            }
        }
    if metrics:
        paths["/metrics"] = {
            "get": {
                "summary": "Counters and histograms in Prometheus text format.",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors("ExportError", {}),
                },
            }
        }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document.",
            "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3.1."),
                **_errors("ExportError", {}),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "patientkit serve",
            "version": __version__,
            "description": "The export, device readings and test records APIs of "
            "`patientkit serve` (SPEC.md). Errors come in the shape of the API they belong "
            "to; with tokens set, every request but GET /api/ping needs "
            "`Authorization: Bearer <token>`.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": COMPONENTS,
    }


def _request_id() -> Schema:
    return {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "A correlation id; repeated, it gets the original answer.",
        "schema": {"type": "string", "maxLength": 200},
    }


def endpoint(bulk: bool = True, metrics: bool = True) -> Callable[[Request], Response]:
    """The handler of GET /openapi.json (the document made once)."""
    body = json.dumps(document(bulk, metrics), indent=1).encode()

    def answer(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return answer
