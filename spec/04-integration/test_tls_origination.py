"""TLS origination through nuncio (issue 3, Acceptance 1): the Greeter server serves
TLS itself (grpc ssl_server_credentials, ALPN h2) and the Mapping originates TLS
(`service: https://...`, `tls: <TLSContext>` with `alpn_protocols: h2`), as the
guide's "Originating TLS with gRPC service" section. Failures to the upstream
(unknown CA, a name that does not match, no ALPN h2, no client certificate for an
upstream that wants one) reach the client as UNAVAILABLE with the reason.

Run by ctest as `/usr/bin/python3 -m unittest -v test_tls_origination` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from certs import certs  # noqa: E402
from nuncio_fixture import (SLOW, NuncioTestCase, case, mapping, stubs, tls_channel, tls_context)  # noqa: E402

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc
C = certs()

# Every call here is a few milliseconds on loopback (plus one handshake): a short
# deadline makes a stalled upstream connection fail fast instead of 20 s per call.
CALL_TIMEOUT = 5.0 * SLOW


def say_hello(channel, service, name):
    call = channel.unary_unary("/%s/SayHello" % service, request_serializer=hw.HelloRequest.SerializeToString,
                               response_deserializer=hw.HelloReply.FromString)
    return call(hw.HelloRequest(name=name), timeout=CALL_TIMEOUT)


class NoAlpnTlsServer:
    """A TLS server (Python's ssl, the upstream certificate) that negotiates no ALPN
    protocol: a handshake any client completes, and then only reads until the
    client leaves. Counts the handshakes it completed."""

    def __init__(self):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(C.upstream.cert_path, C.upstream.key_path)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.handshakes = 0
        self.lock = threading.Lock()
        self.threads = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        conn.settimeout(CALL_TIMEOUT)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                with self.lock:
                    self.handshakes += 1
                while tls.recv(4096):
                    pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self):
        # shutdown() wakes the accept() blocked in the other thread; close() alone may not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.accepter.join(5)
        for t in self.threads:
            t.join(CALL_TIMEOUT)


class TlsOriginationTest(NuncioTestCase):
    """A cleartext listener in front of TLS upstreams:

      /helloworld.Greeter/  -> https://tls-greeter, tls: upstream (CA, ALPN h2, no SNI: Emissary's default)
      /scheme.Greeter/      -> https://tls-greeter, no tls: (TLS, ALPN h2 for gRPC, nothing verified)
      /sni.Greeter/         -> https://tls-greeter, tls: upstream-sni (sni: localhost, checked)
      /wrongca.Greeter/     -> https://tls-greeter, tls: upstream-wrong-ca (an unrelated CA)
      /badname.Greeter/     -> https://tls-greeter, tls: upstream-bad-name (sni: other.example.com)
      /noalpn.Greeter/      -> https://no-alpn-server, tls: upstream
      /mtls.Greeter/        -> https://mtls-greeter, tls: upstream-client (a client certificate)
      /mtlsnocert.Greeter/  -> https://mtls-greeter, tls: upstream (none)
      /silent.Greeter/      -> https://silent, tls: upstream, connect_timeout_ms 1000: the TCP
                               connect succeeds (a listening socket nobody accepts on), the
                               handshake never gets an answer
    """

    @classmethod
    def setUpClass(cls):
        tls = (C.upstream.key_pem, C.upstream.cert_pem)
        cls.up = cls.start_upstream(tls=tls)
        cls.mtls = cls.start_upstream(tls=tls, client_ca=C.ca.cert_pem)
        cls.noalpn = NoAlpnTlsServer()
        cls.addClassCleanup(cls.noalpn.stop)
        # The kernel completes TCP connects into the backlog: the ClientHello goes
        # nowhere, nothing ever comes back.
        cls.silent = socket.socket()
        cls.silent.bind(("127.0.0.1", 0))
        cls.silent.listen(64)
        cls.addClassCleanup(cls.silent.close)
        silent_address = "127.0.0.1:%d" % cls.silent.getsockname()[1]

        def route(name, service, upstream, ctx=None, **extra):
            if ctx:
                extra["tls"] = ctx
            address = upstream if isinstance(upstream, str) else upstream.address
            return mapping(name, "/%s/" % service, "https://" + address, rewrite="/helloworld.Greeter/", **extra)

        ca, wrong_ca = C.ca.cert_path, C.wrong_ca.cert_path
        docs = [
            tls_context("upstream", alpn_protocols="h2", cacert_chain_file=ca),
            tls_context("upstream-sni", alpn_protocols="h2", cacert_chain_file=ca, sni="localhost"),
            tls_context("upstream-wrong-ca", alpn_protocols="h2", cacert_chain_file=wrong_ca, sni="localhost"),
            tls_context("upstream-bad-name", alpn_protocols="h2", cacert_chain_file=ca, sni="other.example.com"),
            tls_context("upstream-client", alpn_protocols="h2", cacert_chain_file=ca, sni="localhost",
                        cert_chain_file=C.client.cert_path, private_key_file=C.client.key_path),
        ]
        cls.start_proxy([route("grpc-py", "helloworld.Greeter", cls.up, "upstream"),
                         route("scheme-only", "scheme.Greeter", cls.up),
                         route("sni", "sni.Greeter", cls.up, "upstream-sni"),
                         route("wrong-ca", "wrongca.Greeter", cls.up, "upstream-wrong-ca"),
                         route("bad-name", "badname.Greeter", cls.up, "upstream-bad-name"),
                         route("no-alpn", "noalpn.Greeter", cls.noalpn, "upstream"),
                         route("mtls", "mtls.Greeter", cls.mtls, "upstream-client"),
                         route("mtls-no-cert", "mtlsnocert.Greeter", cls.mtls, "upstream"),
                         route("silent", "silent.Greeter", silent_address, "upstream", connect_timeout_ms=1000)],
                        docs=docs)

    def setUp(self):
        super().setUp()
        self.channel = self.proxy.channel()
        self.addCleanup(self.channel.close)

    def assertUnavailable(self, service, *reasons):
        """The call fails with UNAVAILABLE; its grpc-message names TLS and one of reasons."""
        with self.assertRaises(grpc.RpcError) as cm:
            say_hello(self.channel, service, "doomed")
        err = self.assertRpcCode(cm, grpc.StatusCode.UNAVAILABLE)
        details = err.details() or ""
        self.assertIn("TLS", details, "the grpc-message should say TLS failed: %r" % details)
        self.assertTrue(any(r.lower() in details.lower() for r in reasons),
                        "the grpc-message should name the reason (one of %s): %r" % (reasons, details))
        # ... and the proxy goes on: the good route still works.
        self.assertEqual(say_hello(self.channel, "helloworld.Greeter", "still").message, "Hello, still!")
        return details

    # ------------------------------------------------------------ scaffolding

    def test_upstreams_serve_tls_themselves(self):
        # The harness's upstreams, called directly: TLS with ALPN h2 (grpcio insists),
        # the mTLS one only with a client certificate.
        with tls_channel(self.up.address, C.ca.cert_pem) as ch:
            self.assertEqual(say_hello(ch, "helloworld.Greeter", "direct").message, "Hello, direct!")
        with tls_channel(self.mtls.address, C.ca.cert_pem, client_cert=C.client) as ch:
            self.assertEqual(say_hello(ch, "helloworld.Greeter", "direct").message, "Hello, direct!")

    # ------------------------------------------------------------ origination works

    def test_originate_tls_with_alpn_h2(self):
        before = len(self.up.auth)
        for service in ("helloworld.Greeter", "scheme.Greeter", "sni.Greeter"):
            with case(service):
                self.assertEqual(say_hello(self.channel, service, service).message, "Hello, %s!" % service)
        with self.up.lock:
            auth = self.up.auth[before:]
        self.assertEqual(len(auth), 3)
        for a in auth:
            self.assertEqual(a.get("transport_security_type"), ["ssl"])
        replies = list(hw_grpc.GreeterStub(self.channel).SayHelloStreamReply(hw.HelloRequest(name="s"),
                                                                            timeout=CALL_TIMEOUT))
        self.assertEqual(len(replies), 50)
        self.proxy.wait_stats(live_streams=0)

    def test_mutual_tls_upstream_with_a_client_certificate(self):
        before = len(self.mtls.auth)
        self.assertEqual(say_hello(self.channel, "mtls.Greeter", "mtls").message, "Hello, mtls!")
        with self.mtls.lock:
            auth = self.mtls.auth[before:]
        self.assertEqual(len(auth), 1)
        self.assertEqual(auth[0].get("x509_common_name"), ["nuncio-test-client"],
                         "the upstream should see the TLSContext's client certificate")

    # ------------------------------------------------------------ origination fails

    def test_wrong_ca_is_unavailable(self):
        self.assertUnavailable("wrongca.Greeter", "certificate", "verify")

    def test_name_mismatch_is_unavailable(self):
        self.assertUnavailable("badname.Greeter", "certificate", "verify", "CN", "name")

    def test_upstream_without_alpn_h2_is_unavailable(self):
        details = self.assertUnavailable("noalpn.Greeter", "ALPN")
        self.assertGreaterEqual(self.noalpn.handshakes, 1, "the proxy should have completed a handshake: %r"
                                % details)

    def test_mutual_tls_upstream_without_a_client_certificate_is_unavailable(self):
        self.assertUnavailable("mtlsnocert.Greeter", "certificate", "handshake", "alert")

    def test_upstream_that_never_answers_the_handshake_times_out(self):
        # connect_timeout_ms covers the TLS handshake too: UNAVAILABLE after about
        # 1 s, long before the call's own deadline.
        started = time.monotonic()
        self.assertUnavailable("silent.Greeter", "timeout")
        self.assertLess(time.monotonic() - started, CALL_TIMEOUT / 2, "the handshake should time out after ~1 s")


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
