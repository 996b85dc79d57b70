"""SPEC.md "The server", TLS: `serve --tls-cert --tls-key` serves HTTPS; every client
trusts PATIENTKIT_CA_CERT for https:// URLs; an untrusted certificate is one line, exit
2, at once (never retried). Certificates are made in the test (cryptography)."""

from __future__ import annotations

import json
import ssl
import time
import uuid

import httpx
import pytest

from tests.helpers import Server, run_cli, serve_refused
from tests.server.certs import make_certs

DEVICE = str(uuid.UUID(int=11, version=4))


@pytest.fixture(scope="module")
def tls(tmp_path_factory, exports_dir):
    folder = tmp_path_factory.mktemp("tls")
    certs = make_certs(folder)
    server = Server(
        folder / "serve.log",
        "--db",
        str(folder / "tls.db"),
        "--exports",
        str(exports_dir),
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        env={},
        verify=str(certs.ca),
    )
    server.certs = certs
    yield server
    server.stop()


def test_serves_https_that_a_client_trusting_the_ca_reads(tls):
    assert tls.url.startswith("https://127.0.0.1:")
    answer = httpx.get(f"{tls.url}/api/export", verify=tls.verify)
    assert answer.json() == {"data": {"export_ids": ["demo"]}}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls.url}/api/export")  # the system store does not know our CA


def test_every_client_trusts_patientkit_ca_cert(tls, tmp_path):
    env = {"PATIENTKIT_CA_CERT": str(tls.certs.ca)}
    listed = run_cli("export", "list", "--server", tls.url, env=env)
    assert (listed.code, listed.json()) == (0, {"export_ids": ["demo"]}), listed.err
    counted = run_cli("export", "aggregate", "demo", "--server", tls.url, env=env)
    assert counted.code == 0, counted.err
    readings = tmp_path / "r.ndjson"
    readings.write_text(
        json.dumps(
            {"id": DEVICE, "readings": [{"count": 4, "timestamp": "2021-09-29T16:09:15+01:00"}]}
        )
        + "\n"
    )
    replayed = run_cli("readings", "replay", str(readings), "--to", tls.url, env=env)
    assert replayed.code == 0, replayed.err
    total = run_cli("readings", "total", DEVICE, "--to", tls.url, env=env)
    assert total.json() == {"cumulative_count": 4, "device_id": DEVICE}
    records = tmp_path / "rec.ndjson"
    records.write_text(
        "".join(
            json.dumps(
                {
                    "test_id": f"TLS-{n}",
                    "patient_id": "P",
                    "clinic_id": "C-TLS",
                    "test_type": "t",
                    "result": "r",
                }
            )
            + "\n"
            for n in range(50)
        )
    )
    # the records client posts through transports of its own, per thread
    submitted = run_cli(
        "records", "submit", str(records), "--to", tls.url, "--concurrency", "4", env=env
    )
    assert submitted.code == 0, submitted.err
    assert submitted.json()["created"] == 50
    listed = run_cli("records", "list", "--clinic", "C-TLS", "--to", tls.url, env=env)
    assert len(listed.out.splitlines()) == 50


@pytest.mark.parametrize(
    "args",
    [
        ("export", "list", "--server"),
        ("readings", "total", DEVICE, "--to"),
        ("records", "list", "--clinic", "C", "--to"),
        ("records", "submit", "-", "--to"),
        ("readings", "replay", "-", "--to"),
    ],
)
def test_an_untrusted_certificate_is_one_line_exit_2_not_retried(tls, args):
    started = time.monotonic()
    done = run_cli(*args, tls.url, input="")
    assert time.monotonic() - started < 10  # no retries with backoff
    assert (done.code, done.out) == (2, "")
    assert done.err == (
        f"error: {tls.url}: TLS certificate not trusted (unable to get local issuer "
        "certificate); set PATIENTKIT_CA_CERT to the CA bundle that signed it\n"
    )


def test_a_ca_bundle_that_cannot_be_read_is_exit_2(tls, tmp_path):
    missing = tmp_path / "nope.pem"
    done = run_cli("export", "list", "--server", tls.url, env={"PATIENTKIT_CA_CERT": str(missing)})
    assert (done.code, done.err) == (
        2,
        f"error: PATIENTKIT_CA_CERT {missing}: cannot load it as a CA bundle "
        "(No such file or directory)\n",
    )


def test_a_key_that_does_not_fit_is_refused_at_start(tmp_path):
    one, other = make_certs(tmp_path / "one"), make_certs(tmp_path / "two")
    done = serve_refused("--port", "0", "--tls-cert", str(one.cert), "--tls-key", str(other.key))
    assert done.code == 2
    assert done.err.startswith(
        f"error: --tls-cert {one.cert} --tls-key {other.key}: cannot load them ("
    )
    assert len(done.err.splitlines()) == 1


def test_cert_without_key_is_a_usage_error(tmp_path):
    certs = make_certs(tmp_path)
    done = serve_refused("--port", "0", "--tls-cert", str(certs.cert))
    assert (done.code, done.err) == (
        2,
        "error: --tls-cert and --tls-key go together: give both or neither\n",
    )


def test_the_default_verification_is_loaded_once_and_honours_ssl_cert_file(tls):
    """Without PATIENTKIT_CA_CERT a client verifies as httpx does by default (the bundle
    SSL_CERT_FILE names, else certifi's), from one context a process: loading a bundle
    for every client was 25-50 ms of CPU each (every worker, every records thread)."""
    from patientkit.client.http import tls_verify

    first = tls_verify("http://127.0.0.1:1")
    assert isinstance(first, ssl.SSLContext)
    assert tls_verify("https://example.org") is first
    # SSL_CERT_FILE still chooses the bundle, as it does for httpx
    listed = run_cli(
        "export", "list", "--server", tls.url, env={"SSL_CERT_FILE": str(tls.certs.ca)}
    )
    assert (listed.code, listed.json()) == (0, {"export_ids": ["demo"]}), listed.err
    refused = run_cli("export", "list", "--server", tls.url)
    assert refused.code == 2 and "certificate" in refused.err, refused.err
