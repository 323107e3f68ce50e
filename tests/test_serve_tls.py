"""Transport security of `semiflow serve`: wss:// through the Zeek double serving TLS with a
test CA (trustme), certificate errors as one line (no retry loop), the plain-text warning,
the bounded message size, and world-writable model/allow-list files refused."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.zeek_ws import (
    FRAME_MAX,
    ZeekClient,
    max_message_size,
    plaintext_warning,
)

sys.path.insert(0, str(Path(__file__).parent))
from packets import ether, ip4, tcp  # noqa: E402
from serve_helpers import tiny_model  # noqa: E402
from test_serve import start_serve, stop, wait_for  # noqa: E402
from zeek_double import ZeekDouble, zeek_json  # noqa: E402

K = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny", k=K, l=256)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, Zeek's server certificate for localhost, a client certificate, and a CA that
    signed none of them; PEM files for the command line."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("semiflow-detector")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(d / "client.crt"))
    client.private_key_pem.write_to_path(str(d / "client.key"))

    def server_context(require_client: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.configure_cert(ctx)
        if require_client:  # Zeek's enable_peer_verification
            ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
    return d, server_context


def _request(uid: str) -> list:
    """A three-packet TCP flow_request, as Zeek publishes it."""
    frames = [ether(ip4("192.0.2.1", "192.0.2.2", tcp(40000, 80, p, flags=f), 6))
              for p, f in ((b"", 0x02), (b"", 0x12), (b"GET / HTTP/1.1\r\n\r\n", 0x18))]
    return zw.flow_request_args(uid, zw.DEFAULT_VERDICT_TOPIC, "192.0.2.1", "40000/tcp",
                                "192.0.2.2", "80/tcp", 1, K, 320, frames, [1.0, 1.1, 1.2],
                                [len(f) for f in frames], [True, False, True])


def _exit_by_itself(proc, timeout: float = 120.0) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError("serve kept running (retry loop?):\n" + out[-3000:]) from None


def _serve_session(model, dbl_ctx, url_of, *args, publish: bool = True):
    async def main():
        dbl = await ZeekDouble(ssl_context=dbl_ctx).start()
        proc = start_serve(model, url_of(dbl), *args)
        try:
            if publish:
                await wait_for(lambda: dbl.clients, 90, "serve connect over TLS")
                await dbl.publish(zw.DEFAULT_REQUEST_TOPIC + "0/", zw.FLOW_REQUEST,
                                  _request("Ctls1"))
                await wait_for(lambda: dbl.verdicts(), 60, "verdict over TLS")
                out = stop(proc)
            else:  # it must give up by itself, not retry forever
                out = await asyncio.to_thread(_exit_by_itself, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            await dbl.stop()
        return dbl, out, proc.returncode
    return asyncio.run(main())


def test_wss_with_ca_and_client_certificate_end_to_end(model, pki):
    d, server_context = pki
    dbl, out, rc = _serve_session(
        model, server_context(True), lambda dbl: dbl.url, "--tls-ca", str(d / "ca.pem"),
        "--tls-cert", str(d / "client.crt"), "--tls-key", str(d / "client.key"))
    assert rc == 0, out[-2000:]
    [v] = dbl.verdicts()
    assert (v.uid, v.status, v.model) == ("Ctls1", "ok", "tiny")


def _one_line_failure(out: str, rc: int, *words: str) -> None:
    errors = [line for line in out.splitlines() if line.startswith("semiflow serve: error:")]
    assert rc == 2, out[-2000:]
    assert len(errors) == 1, out[-2000:]
    assert "Traceback" not in out and "retrying" not in out, out[-2000:]
    for w in words:
        assert w in errors[0], errors[0]


def test_wss_wrong_ca_fails_with_one_line(model, pki):
    d, server_context = pki
    _, out, rc = _serve_session(model, server_context(False), lambda dbl: dbl.url,
                                "--tls-ca", str(d / "other-ca.pem"), publish=False)
    _one_line_failure(out, rc, "does not verify", "--tls-ca")


def test_wss_wrong_host_name_fails_with_one_line(model, pki):
    d, server_context = pki
    _, out, rc = _serve_session(model, server_context(False),
                                lambda dbl: f"wss://127.0.0.1:{dbl.port}",
                                "--tls-ca", str(d / "ca.pem"), publish=False)
    _one_line_failure(out, rc, "does not verify", "host name")


def test_wss_without_the_required_client_certificate_says_what_to_check(pki, caplog):
    """Zeek refusing our (missing) client certificate: the double's TLS server closes without
    the alert that would make it certain, so the client keeps retrying, saying what to check."""
    d, server_context = pki

    async def main():
        dbl = await ZeekDouble(ssl_context=server_context(True)).start()
        client = ZeekClient(dbl.url, ["t/"], lambda m: None, backoff_initial=0.05,
                            ssl_context=ssl.create_default_context(cafile=str(d / "ca.pem")))
        task = asyncio.create_task(client.run())
        try:
            await wait_for(lambda: "check --tls-cert and --tls-key" in caplog.text, 30,
                           "the hint")
        finally:
            client.stop()
            await asyncio.wait_for(task, 10)
            await dbl.stop()
    with caplog.at_level(logging.WARNING, logger="semiflow.zeek_ws"):
        asyncio.run(main())


def test_refused_client_certificate_alert_is_fatal():
    """What a TLS server that sends its alert (OpenSSL's, as Zeek's) makes the client see."""
    from semiflow.plugin.zeek_ws import tls_failure

    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    try:
        try:
            raise alert
        except ssl.SSLError as e:
            raise ConnectionError("handshake failed") from e
    except ConnectionError as wrapped:
        msg = tls_failure(wrapped, "wss://zeek:27759/v1/messages/json")
    assert msg and "refused our client certificate" in msg and "--tls-cert" in msg
    assert tls_failure(ConnectionRefusedError(111, "refused"), "wss://z:1/") is None


def test_plain_ws_to_a_remote_host_warns(caplog):
    for url in ("ws://127.0.0.1:27759", "ws://localhost:1", "ws://[::1]:1",
                "wss://zeek.example:27759"):
        assert plaintext_warning(url) is None, url
    with caplog.at_level(logging.WARNING, logger="semiflow.zeek_ws"):
        ZeekClient("ws://192.0.2.7:27759", ["t/"], lambda m: None)
    assert "PLAIN-TEXT WEBSOCKET to 192.0.2.7" in caplog.text


def test_largest_legal_request_fits_the_bound():
    """K frames of the longest possible frame, with Zeek's widest values everywhere."""
    frames = [bytes(range(256)) * (FRAME_MAX // 256)] * K
    addr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    args = zw.flow_request_args("C" + "x" * 40, zw.DEFAULT_VERDICT_TOPIC + "0/" * 20, addr,
                                "65535/tcp", addr, "65535/tcp", 2**64 - 1, K, 2**64 - 1,
                                frames, [1e10 + 0.123456] * K, [2**64 - 1] * K, [True] * K)
    msg = zw.event_message(zw.DEFAULT_REQUEST_TOPIC + "0/" * 20, zw.FLOW_REQUEST, args)
    msg["data"][2]["data"].append({"@data-type": "vector", "data": [
        {"@data-type": "vector", "data": [{"@data-type": "count", "data": 2**64 - 1},
                                          {"@data-type": "timestamp",
                                           "data": "2026-11-30T07:00:00.000000"}]}]})
    text = zeek_json(msg)
    assert len(text.encode()) <= max_message_size(K)
    assert max_message_size(K) < 2 * len(text.encode())  # a bound, not a guess far above


def test_client_refuses_messages_over_its_bound():
    got: list[str] = []

    async def main():
        dbl = await ZeekDouble().start()
        client = ZeekClient(dbl.url, ["t/"], got.append, max_size=10_000, backoff_initial=0.05)
        task = asyncio.create_task(client.run())
        try:
            await wait_for(lambda: dbl.clients, 30, "connect")
            ws = next(iter(dbl.clients))
            await ws.send(b"\x00binary")  # not the API's: counted, skipped
            await ws.send("x" * 10_001)   # one byte over: the client drops the connection
            await wait_for(lambda: client.connects >= 2, 30, "reconnect after 1009")
            await next(iter(dbl.clients)).send(json.dumps({"fits": "y" * 9_000}))
            await wait_for(lambda: got, 30, "message within the bound")
        finally:
            client.stop()
            await asyncio.wait_for(task, 10)
            await dbl.stop()
        return client
    client = asyncio.run(main())
    assert len(got) == 1 and got[0].startswith('{"fits"')
    assert client.binary_ignored == 1


# ---- world-writable files --------------------------------------------------------------
def test_world_writable_model_file_is_refused(model, tmp_path):
    import shutil

    from semiflow.detector.scoring import load_scorer

    d = tmp_path / "m"
    shutil.copytree(model, d)
    os.chmod(d / "model.safetensors", 0o666)
    with pytest.raises(ValueError, match=r"world-writable .* chmod o-w .*model.safetensors"):
        load_scorer(d, device="cpu")
    os.chmod(d / "model.safetensors", 0o644)
    os.chmod(d, 0o777)  # anyone could swap the files
    with pytest.raises(ValueError, match="directory that is world-writable"):
        load_scorer(d, device="cpu")
    os.chmod(d, 0o1777)  # sticky (as /tmp): others cannot replace our files
    load_scorer(d, device="cpu")


def test_world_writable_allowlist_is_refused(tmp_path):
    from semiflow.plugin.allowlist import AllowRule, read_allowlist, write_allowlist

    p = write_allowlist(tmp_path / "allow.tsv", [AllowRule(host="192.0.2.0/24")])
    assert len(read_allowlist(p)) == 1
    os.chmod(p, 0o646)
    with pytest.raises(ValueError, match="allow-list .* world-writable"):
        read_allowlist(p)
