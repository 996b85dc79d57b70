"""Every command that talks to a server says the same line, quickly, when nothing listens
at its URL on first contact: which URL, and that `patientkit serve` starts one (exit 2)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import run_cli

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commands(url: str, folder: str) -> dict[str, list[str]]:
    return {
        "export list": ["export", "list", "--server", url],
        "export aggregate": ["export", "aggregate", "demo", "--server", url],
        "readings replay": ["readings", "replay", f"{folder}/r.ndjson", "--to", url],
        "readings latest": ["readings", "latest", DEVICE, "--to", url],
        "readings total": ["readings", "total", DEVICE, "--to", url],
        "records submit": ["records", "submit", f"{folder}/t.ndjson", "--to", url],
        "records list": ["records", "list", "--clinic", "C1", "--to", url],
    }


@pytest.mark.parametrize("command", list(commands("", "")))
def test_a_refused_first_contact_names_the_url_and_serve_at_once(command, tmp_path):
    (tmp_path / "r.ndjson").write_text(
        f'{{"id": "{DEVICE}", "count": 1, "timestamp": "2024-01-01T00:00:00Z"}}\n'
    )
    (tmp_path / "t.ndjson").write_text(
        '{"test_id": "T1", "patient_id": "P1", "clinic_id": "C1", "test_type": "x", '
        '"result": "r"}\n'
    )
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli(*commands(url, str(tmp_path))[command])
    took = time.monotonic() - started
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"error: cannot connect to {url} (connection refused): is the server running? "
        "Start one with `patientkit serve`\n"
    )
    assert took < 10  # no retry storm (the CLI itself starts in well under a second)


def test_a_url_with_a_trailing_slash_is_named_without_it():
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("export", "list", "--server", url + "/")
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(f"error: cannot connect to {url} (connection refused)")


def test_a_server_that_answered_once_is_retried_when_it_goes_away(tmp_path, serve):
    """Only the first contact fails fast: the mechanism is per client, and a client that
    has had an answer retries a refused connection (a server restarting)."""
    import httpx

    from patientkit.client.http import NoServer, make_client, transport_failure
    from patientkit.core.retry import RetryPolicy, with_retries

    server = serve("--db", str(tmp_path / "store.db"))
    client = make_client(server.url)
    assert client.get("/api/ping").status_code == 200
    server.stop()
    tries: list[int] = []
    with pytest.raises(Exception) as caught:
        with_retries(
            lambda: client.get("/api/ping"),
            RetryPolicy(attempts=3, initial=0.01),
            lambda n, why, wait: tries.append(n),
            transient=transport_failure,
        )
    assert not isinstance(caught.value, NoServer)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert tries == [1, 2]
    client.close()
