"""TLS termination through nuncio (issue 3, Acceptance 1): grpcio TLS clients on an
HTTPS Listener, ALPN h2, SNI picking each Host's certificate, the insecure actions
(Redirect / Route / Reject) for cleartext on the same port, client certificates
(cert_required), and clients that send garbage, stall mid-handshake or offer only
old protocol versions.

Certificates are made by `openssl` at import (spec/helpers/certs.py). Run by ctest
as `/usr/bin/python3 -m unittest -v test_tls` in spec/04-integration with
NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan) set.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from certs import cert_text, certs  # noqa: E402
from nuncio_fixture import (CALL_TIMEOUT, SETTLE_TIMEOUT, SLOW, SRC, NuncioTestCase, case, host,  # noqa: E402
                            mapping, s_client, secret, stubs, tls_context)

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
C = certs()


def _handshake_timeout(default=10.0):
    """The proxy's handshake deadline, CONN_HANDSHAKE_TIMEOUT in csrc/conn.h: a client
    that has not finished its TLS handshake (or sent its first byte) by then is cut."""
    try:
        with open(os.path.join(SRC, "csrc", "conn.h")) as f:
            m = re.search(r"#define\s+CONN_HANDSHAKE_TIMEOUT\s+([0-9.]+)", f.read())
        return float(m.group(1)) if m else default
    except OSError:
        return default


HANDSHAKE_TIMEOUT = _handshake_timeout()
# A connection the proxy can judge at once (garbage) must be closed well before that.
PROMPT = 5.0 * SLOW

SUBJECT_SERVER = "CN = localhost"              # SAN: localhost, api.example.com
SUBJECT_OTHER = "CN = other.example.com"

ACME_PREFIX = "/.well-known/acme-challenge/"


def say_hello(channel, name="tls", path="/helloworld.Greeter/SayHello", metadata=None):
    call = channel.unary_unary(path, request_serializer=hw.HelloRequest.SerializeToString,
                               response_deserializer=hw.HelloReply.FromString)
    return call(hw.HelloRequest(name=name), timeout=CALL_TIMEOUT, metadata=metadata)


def curl_h2c(port, authority, path="/helloworld.Greeter/SayHello", headers=()):
    """A cleartext HTTP/2 (prior knowledge) GET; returns (status, redirect_url)."""
    args = ["curl", "--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
            "--max-time", str(CALL_TIMEOUT), "-H", "Host: " + authority]
    for h in headers:
        args += ["-H", h]
    p = subprocess.run(args + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True, text=True,
                       timeout=CALL_TIMEOUT + 5)
    status, _, location = p.stdout.partition(" ")
    return status, location.strip()


# A TLS ClientHello cut short: the record header announces 512 bytes, a few follow.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32)
# 0x16 makes the proxy start TLS; the "handshake message" that follows is nonsense.
TLS_GARBAGE = b"\x16\x03\x01\x00\x40" + b"\xff" * 0x40
# Neither TLS nor an HTTP/2 preface nor HTTP/1.
PLAIN_GARBAGE = b"\x00\x13\x37" + os.urandom(61)


def raw_connect(port, data=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT)
    if data:
        s.sendall(data)
    return s


def is_open(sock):
    """True while the peer has not closed (no EOF, no reset) - without blocking. (A
    socket with a timeout waits for data even with MSG_DONTWAIT: peek in non-blocking
    mode.)"""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def wait_closed_by_peer(sock, deadline):
    """Reads (and drops: an alert, a 505...) until EOF or a reset; returns the time it
    happened, or None if the deadline came first."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(min(left, 1.0))
        try:
            if sock.recv(4096) == b"":
                return time.monotonic()
        except socket.timeout:
            continue
        except OSError:  # ECONNRESET: closed too
            return time.monotonic()


class TlsTerminationTest(NuncioTestCase):
    """One HTTPS Listener (TLS and cleartext on one port, securityModel XFP) and four
    Hosts with certificates from Kubernetes Secrets:

      other      other.example.com  other-cert   insecure Reject   (first in the file)
      api        api.example.com    server-cert  insecure Route
      localhost  localhost          server-cert  insecure Redirect
      fallback   *                  server-cert  (default action: Redirect)

    A client without SNI gets the "*" Host's certificate (the default), not the
    first one in the file."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        docs = [
            secret("server-cert", C.server.cert_pem, C.server.key_pem),
            secret("other-cert", C.other.cert_pem, C.other.key_pem),
            host("other", "other.example.com", tls_secret="other-cert", insecure="Reject"),
            host("api", "api.example.com", tls_secret="server-cert", insecure="Route"),
            host("localhost", "localhost", tls_secret="server-cert", insecure="Redirect"),
            host("fallback", "*", tls_secret="server-cert"),
        ]
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.up.address),
                         mapping("acme", ACME_PREFIX, cls.up.address, rewrite="/helloworld.Greeter/")],
                        docs=docs, default_host=False, listener_protocol="HTTPS")

    def upstream_saw(self, test_id):
        return [md for md in self.up.calls_to("/helloworld.Greeter/SayHello") if md.get("x-test-id") == test_id]

    # ------------------------------------------------------------ resumption

    def test_sessions_resume_by_ticket_and_by_session_id(self):
        """A returning client skips the full handshake: by session ticket, and by
        session id from the server's cache when it does not use tickets."""
        with tempfile.TemporaryDirectory() as d:
            for how, extra in (("ticket", []), ("session id", ["-no_ticket"])):
                with case(how):
                    sess = os.path.join(d, how.replace(" ", "-"))
                    rc, out, _ = s_client(self.proxy.port, servername="localhost", alpn="h2",
                                          extra=["-tls1_2", "-sess_out", sess] + extra)
                    self.assertEqual(rc, 0, out)
                    self.assertIn("New, TLSv1.2", out)
                    if how == "ticket":
                        self.assertIn("TLS session ticket lifetime hint: 7200", out)
                    rc, out, _ = s_client(self.proxy.port, servername="localhost", alpn="h2",
                                          extra=["-tls1_2", "-sess_in", sess] + extra)
                    self.assertEqual(rc, 0, out)
                    self.assertIn("Reused, TLSv1.2", out)

    # ------------------------------------------------------------ gRPC over TLS

    def test_grpc_tls_client_through_the_tls_listener(self):
        for name in ("localhost", "api.example.com"):
            with case(name), self.proxy.tls_channel(C.ca.cert_pem, name=name) as channel:
                test_id = uuid.uuid4().hex
                reply = say_hello(channel, "tls", metadata=[("x-test-id", test_id)])
                self.assertEqual(reply.message, "Hello, tls!")
                replies = list(hw_grpc.GreeterStub(channel).SayHelloStreamReply(hw.HelloRequest(name="s"),
                                                                               timeout=CALL_TIMEOUT))
                self.assertEqual(len(replies), 50)
                seen = self.upstream_saw(test_id)
                self.assertEqual(len(seen), 1)
                # l7Depth 0: the proxy says what it saw on the wire.
                self.assertEqual(seen[0].get("x-forwarded-proto"), "https")
        self.proxy.wait_stats(live_streams=0)

    def test_alpn_h2_negotiated(self):
        rc, out, _ = s_client(self.proxy.port, servername="localhost", alpn="h2", cafile=C.ca.cert_path,
                              verify_name="localhost")
        self.assertEqual(rc, 0, out)
        self.assertIn("ALPN protocol: h2", out)
        self.assertIn("Verify return code: 0 (ok)", out)

    def test_key_exchange_prefers_x25519_then_p256_as_envoy(self):
        # Without ecdh_curves, Envoy's default order: X25519, then P-256 (mbedTLS
        # alone would pick secp521r1 for a client that offers it, at ~4x the cost).
        for label, groups, expect in (("client's default groups", None, "Server Temp Key: X25519"),
                                      ("client prefers P-521, then P-384, then P-256", "P-521:P-384:P-256",
                                       "ECDH, prime256v1")):
            with case(label):
                rc, out, _ = s_client(self.proxy.port, servername="localhost", alpn="h2", cafile=C.ca.cert_path,
                                      extra=["-groups", groups] if groups else [])
                self.assertEqual(rc, 0, out)
                self.assertIn(expect, out)

    # ------------------------------------------------------------ SNI

    def test_sni_picks_each_hosts_certificate(self):
        cases = [("other.example.com", SUBJECT_OTHER, "DNS:other.example.com"),
                 ("api.example.com", SUBJECT_SERVER, "DNS:api.example.com"),
                 ("localhost", SUBJECT_SERVER, "DNS:localhost"),
                 # no Host of that name: the "*" Host's certificate
                 ("unknown.example.com", SUBJECT_SERVER, "DNS:api.example.com")]
        for servername, subject, san in cases:
            with case("SNI %s" % servername):
                rc, out, pem = s_client(self.proxy.port, servername=servername, alpn="h2", cafile=C.ca.cert_path)
                self.assertEqual(rc, 0, out)
                self.assertIsNotNone(pem, "no server certificate in:\n" + out)
                text = cert_text(pem.encode())
                self.assertIn("subject=" + subject, text)
                self.assertIn(san, text)
                self.assertIn("Verify return code: 0 (ok)", out)

    def test_no_sni_gets_the_default_certificate(self):
        rc, out, pem = s_client(self.proxy.port, servername=None, alpn="h2", cafile=C.ca.cert_path)
        self.assertEqual(rc, 0, out)
        self.assertIsNotNone(pem, "no server certificate in:\n" + out)
        text = cert_text(pem.encode())
        self.assertIn("subject=" + SUBJECT_SERVER, text, "the '*' Host's certificate, not the first Host's")
        self.assertIn("ALPN protocol: h2", out)

    def test_grpc_client_sees_the_certificate_of_its_name(self):
        # grpcio checks the certificate against the name it sends as SNI: each call
        # succeeding means each got a certificate valid for its name.
        for name in ("other.example.com", "api.example.com"):
            with case(name), self.proxy.tls_channel(C.ca.cert_pem, name=name) as channel:
                self.assertEqual(say_hello(channel, name).message, "Hello, %s!" % name)

    # ------------------------------------------------------------ insecure actions (cleartext, same port)

    def test_insecure_redirect(self):
        # Explicit Redirect, and the "*" Host's default (a Host with TLS redirects).
        for authority in ("localhost", "unknown.example.com"):
            with case("authority %s" % authority):
                status, location = curl_h2c(self.proxy.port, authority)
                self.assertEqual((status, location), ("301", "https://%s/helloworld.Greeter/SayHello" % authority))
        # x-forwarded-proto from a client is not trusted (l7Depth 0): still a redirect.
        status, location = curl_h2c(self.proxy.port, "localhost", headers=["X-Forwarded-Proto: https"])
        self.assertEqual(status, "301")
        test_id = uuid.uuid4().hex
        with self.proxy.channel(authority="localhost") as channel:
            with self.assertRaises(grpc.RpcError):
                say_hello(channel, "redirected", metadata=[("x-test-id", test_id), ("x-forwarded-proto", "https")])
        self.assertEqual(self.upstream_saw(test_id), [], "a redirected request must not reach the upstream")

    def test_insecure_route(self):
        test_id = uuid.uuid4().hex
        with self.proxy.channel(authority="api.example.com") as channel:
            self.assertEqual(say_hello(channel, "clear", metadata=[("x-test-id", test_id)]).message, "Hello, clear!")
        seen = self.upstream_saw(test_id)
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0].get("x-forwarded-proto"), "http")

    def test_insecure_reject(self):
        status, location = curl_h2c(self.proxy.port, "other.example.com")
        self.assertEqual((status, location), ("404", ""))
        test_id = uuid.uuid4().hex
        with self.proxy.channel(authority="other.example.com") as channel:
            with self.assertRaises(grpc.RpcError) as cm:
                say_hello(channel, "rejected", metadata=[("x-test-id", test_id)])
            self.assertRpcCode(cm, grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(self.upstream_saw(test_id), [])
        # The same Host over TLS is served: secure requests are always routed.
        with self.proxy.tls_channel(C.ca.cert_pem, name="other.example.com") as channel:
            self.assertEqual(say_hello(channel, "secure").message, "Hello, secure!")

    def test_acme_challenge_is_routed_on_reject_and_redirect_hosts(self):
        for authority in ("other.example.com", "localhost"):
            with case("authority %s" % authority), self.proxy.channel(authority=authority) as channel:
                reply = say_hello(channel, "acme", path=ACME_PREFIX + "SayHello")
                self.assertEqual(reply.message, "Hello, acme!")

    # ------------------------------------------------------------ bad clients

    def test_bad_clients_do_not_disturb_others_and_are_cut_at_the_handshake_timeout(self):
        port = self.proxy.port
        # live_conns counts upstream connections too: make that one exist first.
        with self.proxy.tls_channel(C.ca.cert_pem, name="localhost") as channel:
            self.assertEqual(say_hello(channel, "warm").message, "Hello, warm!")
        base = self.proxy.wait_stats(live_streams=0)["live_conns"]
        t0 = time.monotonic()
        garbage = [raw_connect(port, TLS_GARBAGE), raw_connect(port, PLAIN_GARBAGE)]
        stalled = [raw_connect(port, PARTIAL_CLIENT_HELLO),   # stops mid-handshake
                   raw_connect(port)]                         # connects, never speaks
        try:
            # Garbage is judged at once: closed long before the handshake timeout.
            for i, s in enumerate(garbage):
                self.assertIsNotNone(wait_closed_by_peer(s, t0 + PROMPT),
                                     "garbage connection %d still open after %.0f s" % (i, PROMPT))
            # Everyone else is served while the stalled ones hang on, over TLS and in cleartext.
            with self.proxy.tls_channel(C.ca.cert_pem, name="localhost") as channel:
                self.assertEqual(say_hello(channel, "good").message, "Hello, good!")
            with self.proxy.channel(authority="api.example.com") as channel:
                self.assertEqual(say_hello(channel, "good").message, "Hello, good!")
            for i, s in enumerate(stalled):
                self.assertTrue(is_open(s), "stalled connection %d was closed before the handshake timeout" % i)
            # The handshake timeout cuts them.
            deadline = t0 + HANDSHAKE_TIMEOUT + SETTLE_TIMEOUT
            for i, s in enumerate(stalled):
                closed_at = wait_closed_by_peer(s, deadline)
                self.assertIsNotNone(closed_at, "stalled connection %d still open %.0f s after it connected"
                                     % (i, deadline - t0))
            self.assertIn("no TLS handshake within", self.proxy_log())
        finally:
            for s in garbage + stalled:
                s.close()
        self.proxy.wait_stats_until(lambda st: st["live_conns"] <= base,
                                    "live_conns back to %d (no bad connection left)" % base)
        with self.proxy.tls_channel(C.ca.cert_pem, name="localhost") as channel:
            self.assertEqual(say_hello(channel, "after").message, "Hello, after!")

    def test_client_that_gives_up_mid_handshake_is_closed_at_once(self):
        s = raw_connect(self.proxy.port, PARTIAL_CLIENT_HELLO)
        try:
            s.shutdown(socket.SHUT_WR)  # our side is done: the proxy must not wait for the timeout
            self.assertIsNotNone(wait_closed_by_peer(s, time.monotonic() + PROMPT),
                                 "the proxy kept a half-closed handshake open for %.0f s" % PROMPT)
        finally:
            s.close()
        with self.proxy.tls_channel(C.ca.cert_pem, name="localhost") as channel:
            self.assertEqual(say_hello(channel, "after").message, "Hello, after!")

    def test_old_protocol_version_is_refused(self):
        # nuncio's minimum is TLS 1.2; OpenSSL needs SECLEVEL=0 to even offer 1.1.
        rc, out, _ = s_client(self.proxy.port, servername="localhost", extra=["-tls1_1", "-cipher",
                                                                             "DEFAULT:@SECLEVEL=0"])
        self.assertNotEqual(rc, 0, out)
        self.assertIn("Cipher is (NONE)", out)
        with self.proxy.tls_channel(C.ca.cert_pem, name="localhost") as channel:
            self.assertEqual(say_hello(channel, "after").message, "Hello, after!")


class ClientCertificateTest(NuncioTestCase):
    """Termination from a TLSContext with files (the guide's form: hosts, cert_chain_file,
    private_key_file, alpn_protocols: h2) that requires client certificates
    (cacert_chain_file + cert_required)."""

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        # ecdh_curves leaves P-256, the curve of every test certificate, out: it
        # still verifies (Envoy checks no certificate curve against the list).
        docs = [tls_context("mtls-context", hosts=["localhost"], cert_chain_file=C.server.cert_path,
                            private_key_file=C.server.key_path, alpn_protocols="h2",
                            cacert_chain_file=C.ca.cert_path, cert_required=True,
                            ecdh_curves=["P-384", "X25519"])]
        cls.start_proxy([mapping("grpc-py", "/helloworld.Greeter/", cls.up.address)], docs=docs,
                        listener_protocol="HTTPS")

    def test_client_with_a_certificate_is_served(self):
        with self.proxy.tls_channel(C.ca.cert_pem, name="localhost", client_cert=C.client) as channel:
            self.assertEqual(say_hello(channel, "mtls").message, "Hello, mtls!")
        rc, out, _ = s_client(self.proxy.port, servername="localhost", alpn="h2", cafile=C.ca.cert_path,
                              cert=C.client.cert_path, key=C.client.key_path)
        self.assertEqual(rc, 0, out)
        self.assertIn("ALPN protocol: h2", out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertIn("ECDH, secp384r1", out, "the context's ecdh_curves put P-384 first")

    def test_client_without_a_certificate_is_refused(self):
        for label, client_cert in (("no certificate", None), ("certificate of an unrelated CA", C.wrong_client)):
            with case(label), self.proxy.tls_channel(C.ca.cert_pem, name="localhost",
                                                             client_cert=client_cert) as channel:
                with self.assertRaises(grpc.RpcError) as cm:
                    say_hello(channel, "stranger")
                self.assertRpcCode(cm, grpc.StatusCode.UNAVAILABLE)
        # ... and the proxy goes on serving those who have one.
        with self.proxy.tls_channel(C.ca.cert_pem, name="localhost", client_cert=C.client) as channel:
            self.assertEqual(say_hello(channel, "after").message, "Hello, after!")


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
