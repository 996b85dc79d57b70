"""SPEC.md "The server", Authentication: bearer tokens from --token-file or
PATIENTKIT_TOKEN; every route but GET /api/ping answers 401 without the right one, with
`WWW-Authenticate: Bearer` and its own API's error shape; a readable token file and a
non-loopback bind without tokens are refused (exit 2); tokens are never logged."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.helpers import Server, default_tls, run_cli, serve_refused, web

TOKEN = "tok-" + "s3cr3t" * 6
OTHER = "tok-other-9"
DEVICE = str(uuid.UUID(int=7, version=4))
DOWNLOAD = str(uuid.UUID(int=9, version=4))

EXPORTS = {"detail": "Not authenticated"}
READINGS = {
    "status": "error",
    "error_message": "Not authenticated",
    "status_code": 401,
    "error_code": 401,
}
RECORDS = {"error": "Not authenticated"}

# every route of the app, with the error shape of its API
ROUTES = [
    ("GET", "/api/export", EXPORTS),
    ("GET", "/api/export/demo", EXPORTS),
    ("GET", f"/api/export/demo/{DOWNLOAD}", EXPORTS),
    ("GET", f"/api/export/demo/{DOWNLOAD}/data", EXPORTS),
    ("POST", "/api/device-readings/create", READINGS),
    ("GET", f"/api/device-readings/{DEVICE}/latest-timestamp", READINGS),
    ("GET", f"/api/device-readings/{DEVICE}/cumulative-count", READINGS),
    ("POST", "/tests", RECORDS),
    ("GET", "/tests?clinic_id=C-AUTH", RECORDS),
    ("POST", "/tests/batch", RECORDS),
    ("GET", "/metrics", EXPORTS),
    ("GET", "/openapi.json", EXPORTS),
    ("GET", "/no/such/route", EXPORTS),
]

# what each route answers with the right token (an empty store, the demo export)
RIGHT = {
    "/api/export": 200,
    "/api/export/demo": 200,
    f"/api/export/demo/{DOWNLOAD}": 404,
    f"/api/export/demo/{DOWNLOAD}/data": 404,
    "/api/device-readings/create": 201,
    f"/api/device-readings/{DEVICE}/latest-timestamp": 200,
    f"/api/device-readings/{DEVICE}/cumulative-count": 200,
    "/tests": 200,
    "/tests?clinic_id=C-AUTH": 200,
    "/tests/batch": 200,
    "/metrics": 200,
    "/openapi.json": 200,
    "/no/such/route": 404,
}


def body(path: str) -> dict | None:
    if path == "/api/device-readings/create":
        return {"id": DEVICE, "readings": [{"count": 3, "timestamp": "2021-09-29T16:09:15+01:00"}]}
    if path == "/tests":
        return {
            "test_id": "T-AUTH",
            "patient_id": "P",
            "clinic_id": "C-AUTH",
            "test_type": "t",
            "result": "r",
        }
    if path == "/tests/batch":
        return []
    return None


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, exports_dir):
    folder = tmp_path_factory.mktemp("auth")
    tokens = folder / "tokens"
    tokens.write_text(f"# who may come in\n\n  {OTHER}  \n{TOKEN}\n")
    tokens.chmod(0o600)
    server = Server(
        folder / "serve.log",
        "--db",
        str(folder / "a.db"),
        "--exports",
        str(exports_dir),
        "--token-file",
        str(tokens),
        env={},
    )
    yield server
    server.stop()


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_every_route_but_ping_refuses_a_missing_or_wrong_token(guarded, header):
    headers = {"authorization": header} if header else {}
    with httpx.Client(verify=default_tls(), base_url=guarded.url, headers=headers) as http:
        for method, path, shape in ROUTES:
            answer = http.request(method, path, json=body(path))
            assert (answer.status_code, answer.json()) == (401, shape), (method, path)
            assert answer.headers["www-authenticate"] == "Bearer"
        ping = http.get("/api/ping")
        assert (ping.status_code, ping.json()) == (200, {"status": "ok"})


def test_the_right_token_opens_every_route(guarded):
    for token in (TOKEN, OTHER):  # every token of the file
        with httpx.Client(
            verify=default_tls(), base_url=guarded.url, headers={"authorization": f"Bearer {token}"}
        ) as http:
            # the first pass creates; read answers as they then are
            found = {}
            for method, path, _ in ROUTES:
                answer = http.request(method, path, json=body(path))
                found[path] = answer.status_code
                assert "www-authenticate" not in answer.headers
        expected = dict(RIGHT)
        if token == OTHER:
            expected["/tests"] = 409  # T-AUTH was created with the first token
        assert found == expected
    text = guarded.log.read_text()
    assert TOKEN not in text and OTHER not in text and "s3cr3t" not in text


def test_the_cli_sends_patientkit_token(guarded):
    ok = run_cli("readings", "total", DEVICE, "--to", guarded.url, env={"PATIENTKIT_TOKEN": TOKEN})
    assert (ok.code, ok.json()) == (0, {"cumulative_count": 3, "device_id": DEVICE}), ok.err
    refused = run_cli("readings", "total", DEVICE, "--to", guarded.url)
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"error: {guarded.url} answered 401: it needs a bearer token and PATIENTKIT_TOKEN is "
        "not set; set it to one of the server's tokens\n"
    )


@pytest.mark.parametrize(
    "command",
    [
        ("readings", "latest", DEVICE, "--to"),
        ("records", "list", "--clinic", "C1", "--to"),
        ("export", "list", "--server"),
        ("export", "aggregate", "demo", "--server"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_every_command_says_the_token_was_refused_in_one_line(guarded, command):
    refused = run_cli(*command, guarded.url, env={"PATIENTKIT_TOKEN": "tok-wrong"})
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"error: {guarded.url} answered 401: it needs a bearer token and PATIENTKIT_TOKEN "
        "was refused; set it to one of the server's tokens\n"
    )


@pytest.fixture(scope="module")
def from_the_environment(tmp_path_factory):
    """`serve --host 0.0.0.0` with PATIENTKIT_TOKEN set and no --token-file, for the two
    tests of it (each only reads); `loopback` is its URL on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("auth-env")
    server = Server(
        folder / "serve.log",
        "--host",
        "0.0.0.0",
        "--db",
        str(folder / "e.db"),
        env={"PATIENTKIT_TOKEN": TOKEN},
    )
    server.loopback = "http://127.0.0.1:" + server.url.rsplit(":", 1)[1]  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_patientkit_token_is_the_servers_token_without_a_file(from_the_environment):
    server = from_the_environment
    url = server.loopback
    assert web.get(f"{url}/api/export").status_code == 401
    answer = web.get(f"{url}/api/export", headers={"authorization": f"Bearer {TOKEN}"})
    assert (answer.status_code, answer.json()) == (200, {"data": {"export_ids": []}})
    assert server.log_lines()[1]["auth"] is True  # the serving line
    assert TOKEN not in server.log.read_text()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_may_read_is_refused(tmp_path, mode):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tokens.chmod(mode)
    done = serve_refused("--port", "0", "--token-file", str(tokens))
    assert done.code == 2
    assert done.err == (
        f"error: --token-file {tokens}: others may read it (mode {mode:04o}); "
        f"make it private with `chmod 600 {tokens}`\n"
    )


def test_a_token_file_without_tokens_is_refused(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# nobody yet\n\n")
    tokens.chmod(0o600)
    done = serve_refused("--port", "0", "--token-file", str(tokens))
    assert (done.code, done.err) == (
        2,
        f"error: --token-file {tokens}: no token in it (one a line, # for comments)\n",
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_a_non_loopback_bind_without_tokens_is_refused(host):
    done = serve_refused("--host", host, "--port", "0")
    assert (done.code, done.err) == (
        2,
        f"error: refusing to serve {host} without authentication: give --token-file FILE or "
        "set PATIENTKIT_TOKEN (or --insecure-no-auth to let anyone who reaches it in)\n",
    )


def test_insecure_no_auth_serves_every_address(serve, tmp_path):
    server = serve("--host", "0.0.0.0", "--insecure-no-auth", "--db", str(tmp_path / "o.db"))
    assert server.url.startswith("http://0.0.0.0:")
    port = server.url.rsplit(":", 1)[1]
    answer = web.get(f"http://127.0.0.1:{port}/api/export")
    assert (answer.status_code, answer.json()) == (200, {"data": {"export_ids": []}})


def test_a_loopback_bind_with_tokens_from_the_environment_needs_no_flag(from_the_environment):
    server = from_the_environment  # --host 0.0.0.0, PATIENTKIT_TOKEN, no flag
    assert server.url.startswith("http://0.0.0.0:")
    port = server.url.rsplit(":", 1)[1]
    assert web.get(f"http://127.0.0.1:{port}/tests?clinic_id=C").status_code == 401


@pytest.mark.parametrize("token", [None, "tok-wrong"], ids=["no token", "a wrong token"])
@pytest.mark.parametrize(
    "command",
    [("readings", "replay"), ("records", "submit"), ("records", "submit", "--no-batch")],
    ids=" ".join,
)
def test_a_replay_or_submit_without_the_right_token_is_one_line_before_any_work(
    guarded, tmp_path, token, command
):
    """A missing or wrong PATIENTKIT_TOKEN is found before the first reading or record is
    sent: one line, exit 2, nothing refused one by one, nothing stored."""
    source, device = tmp_path / "in.ndjson", str(uuid.uuid4())
    if command[0] == "readings":
        line = {"id": device, "count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}
    else:
        line = {"test_id": "T-auth", "patient_id": "P", "clinic_id": "C-auth",
                "test_type": "x", "result": "r"}  # fmt: skip
    source.write_text(json.dumps(line) + "\n")
    env = {"PATIENTKIT_TOKEN": token} if token else {}
    done = run_cli(*command[:2], str(source), "--to", guarded.url, *command[2:], env=env)
    given = "was refused" if token else "is not set"
    assert (done.code, done.out) == (2, "")
    assert done.err == (
        f"error: {guarded.url} answered 401: it needs a bearer token and PATIENTKIT_TOKEN "
        f"{given}; set it to one of the server's tokens\n"
    )
    right = {"authorization": f"Bearer {TOKEN}"}
    assert (
        web.get(f"{guarded.url}/api/device-readings/{device}/latest", headers=right).status_code
        == 404
    )
    assert web.get(f"{guarded.url}/tests?clinic_id=C-auth", headers=right).json() == []
