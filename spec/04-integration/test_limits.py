"""Request and connection limits (issue 9), with real sockets:

* Module max_request_headers_kb (Envoy's default 60): an HTTP/1.1 request head
  (request line and headers) over the limit gets 431 and the connection closes,
  as Envoy's HTTP/1 codec answers; an HTTP/2 header list over it is refused
  (nghttp2, told SETTINGS_MAX_HEADER_LIST_SIZE, resets the stream; Envoy too
  resets it, or answers 431), and the connection carries on.
* Module buffer.max_request_bytes (Envoy's buffer filter): a request body is held
  whole before the upstream sees the request; over the limit: 413 (a gRPC request
  gets the trailers-only equivalent, grpc-status 2 UNKNOWN: Envoy's HTTP-to-gRPC
  table has no case for 413).
* Listener http2MaxConcurrentStreams (a nuncio extension): the SETTINGS frame the
  proxy sends says SETTINGS_MAX_CONCURRENT_STREAMS = that.
* native max_connections: at the limit the proxy stops accepting; the next
  connection waits in the kernel's accept queue and is served once one closes.
* native tls_handshake_timeout_ms: a client that starts TLS (its first byte is a
  handshake record) and then says nothing is cut when the deadline passes.

The upstream is nuncio-h2record (tools/h2record.c): it answers 200 with what it
received (x-h2record, x-h2record-body-bytes).

Run by ctest as `/usr/bin/python3 -m unittest -v test_limits` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from certs import certs  # noqa: E402
from nuncio_fixture import (start_recorder, BIN, CALL_TIMEOUT, SLOW, SRC, H2Client, Http1Conn, NuncioTestCase, host, listener,  # noqa: E402
                            mapping, secret)

def _h1_limits_wired():
    """Does csrc/worker.c hand the front's header limit to the HTTP/1.1 codec (h1s_opts)?"""
    try:
        with open(os.path.join(SRC, "csrc", "worker.c")) as f:
            return ".max_header_bytes" in f.read()
    except OSError:
        return True


H1_WIRED = _h1_limits_wired()
NOT_WIRED = "csrc/worker.c ready_front does not set h1s_opts.max_header_bytes yet (Module max_request_headers_kb)"

HEADERS_KB = 8          # the Module's max_request_headers_kb in LimitsTest
MAX_BODY = 1000         # and its buffer.max_request_bytes
MAX_STREAMS = 7         # the Listener's http2MaxConcurrentStreams
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
H2_REFUSED_STREAM, H2_PROTOCOL_ERROR = 0x7, 0x1


def module(config):
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Module",
            "metadata": {"name": "ambassador"}, "spec": {"config": config}}


def get(path, extra_headers=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: test\r\n" + extra_headers + b"\r\n"


def post(path, body):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: test\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n"
            % len(body)) + body


class LimitsTest(NuncioTestCase):
    """One proxy: Module max_request_headers_kb 8 and buffer.max_request_bytes 1000; its
    Listener says http2MaxConcurrentStreams 7."""

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        cls.start_proxy(
            [mapping("rec", "/rec/", rec)],
            docs=lambda p: [listener("limits", p.port, protocol="HTTP", http2MaxConcurrentStreams=MAX_STREAMS),
                            module({"max_request_headers_kb": HEADERS_KB,
                                    "buffer": {"max_request_bytes": MAX_BODY}})],
            default_listener=False)

    def h1(self):
        c = Http1Conn(self.proxy.port)
        self.addCleanup(c.close)
        return c

    def h2(self):
        c = H2Client(self.proxy.port)
        self.addCleanup(c.close)
        return c

    # -- max_request_headers_kb

    def test_http1_header_block_within_the_limit_passes(self):
        c = self.h1()
        c.send(get(b"/rec/ok", b"x-big: " + b"a" * ((HEADERS_KB - 1) * 1024) + b"\r\n"))
        self.assertEqual(c.read_response().status, 200)

    @unittest.skipUnless(H1_WIRED, NOT_WIRED)
    def test_http1_header_block_over_the_limit_gets_431_and_close(self):
        c = self.h1()
        c.send(get(b"/rec/big", b"x-big: " + b"a" * (HEADERS_KB * 1024) + b"\r\n"))
        r = c.read_response()
        self.assertEqual(r.status, 431)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_peer(5 * SLOW))

    @unittest.skipUnless(H1_WIRED, NOT_WIRED)
    def test_http1_many_small_headers_count_together(self):
        c = self.h1()
        fields = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(90))  # ~9.5 KiB in 90 fields
        c.send(get(b"/rec/many", fields))
        self.assertEqual(c.read_response().status, 431)

    def test_http2_header_list_over_the_limit_is_refused_and_the_connection_lives(self):
        c = self.h2()
        big = c.request([(":method", "GET"), (":scheme", "http"), (":path", "/rec/big"),
                         (":authority", c.authority), ("x-big", "a" * (HEADERS_KB * 1024))])
        c.wait(big)
        # nghttp2 (and Envoy) reset a stream whose header list is over
        # SETTINGS_MAX_HEADER_LIST_SIZE; Envoy may instead answer 431.
        if big.reset is None:
            self.assertEqual(big.header(":status"), "431")
        else:
            self.assertIn(big.reset, (H2_REFUSED_STREAM, H2_PROTOCOL_ERROR, 0x2, 0xb))
        small = c.wait(c.request([(":method", "GET"), (":scheme", "http"), (":path", "/rec/small"),
                                  (":authority", c.authority), ("x-small", "a" * 1024)]))
        self.assertIsNone(small.reset)
        self.assertEqual(small.header(":status"), "200")

    # -- http2MaxConcurrentStreams

    def test_settings_say_the_listeners_max_concurrent_streams(self):
        c = self.h2()
        deadline = time.monotonic() + CALL_TIMEOUT
        while SETTINGS_MAX_CONCURRENT_STREAMS not in c.peer_settings:
            c.read_frame(deadline)
        self.assertEqual(c.peer_settings[SETTINGS_MAX_CONCURRENT_STREAMS], MAX_STREAMS)

    # -- buffer.max_request_bytes

    def test_body_within_max_request_bytes_reaches_the_upstream_whole(self):
        c = self.h1()
        c.send(post(b"/rec/post", b"b" * MAX_BODY))
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-h2record-body-bytes"), str(MAX_BODY))

    def test_body_over_max_request_bytes_gets_413(self):
        c = self.h1()
        c.send(post(b"/rec/post", b"b" * (MAX_BODY + 1)))
        r = c.read_response()
        self.assertEqual(r.status, 413)
        self.assertEqual(r.body, b"Payload Too Large")

    def test_chunked_body_over_max_request_bytes_gets_413(self):
        c = self.h1()
        chunk = b"c" * 600
        c.send(b"POST /rec/chunked HTTP/1.1\r\nHost: test\r\ntransfer-encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n" % (len(chunk), chunk))
        time.sleep(0.1)  # the proxy holds the first chunk; the upstream has seen nothing
        c.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
        self.assertEqual(c.read_response().status, 413)

    def test_http2_body_over_max_request_bytes_gets_413(self):
        c = self.h2()
        st = c.wait(c.request([(":method", "POST"), (":scheme", "http"), (":path", "/rec/h2post"),
                               (":authority", c.authority)], body=b"d" * (MAX_BODY + 500)))
        self.assertEqual(st.header(":status"), "413")

    def test_grpc_body_over_max_request_bytes_gets_a_trailers_only_reply(self):
        c = self.h2()
        st = c.wait(c.grpc_request("/rec/pkg.Svc/Method", b"g" * (MAX_BODY + 10)))
        self.assertIsNone(st.reset)
        self.assertEqual(st.header(":status"), "200")
        self.assertEqual(st.header("grpc-status"), "2")  # Envoy: 413 has no gRPC case -> UNKNOWN
        self.assertIn("Payload Too Large", st.header("grpc-message") or "")
        self.assertTrue(st.ended)
        self.assertEqual(len(st.headers), 1)  # trailers-only

    def test_grpc_body_within_max_request_bytes_passes(self):
        c = self.h2()
        st = c.wait(c.grpc_request("/rec/pkg.Svc/Method", b"g" * (MAX_BODY - 10)))
        self.assertEqual(st.header(":status"), "200")
        self.assertEqual(st.header("grpc-status", -1), "0")


class BufferLimitTest(NuncioTestCase):
    """Module buffer_limit_bytes 16384 (Envoy's per_connection_buffer_limit_bytes): a filter
    that waits for the whole body (Module lua_scripts, handle:body()) may make the proxy hold
    that much; above it: 413, as Envoy's Lua filter answers when its buffer overflows."""

    LIMIT = 16384

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        cls.start_proxy([mapping("rec", "/rec/", rec)],
                        docs=[module({"buffer_limit_bytes": cls.LIMIT,
                                      "lua_scripts": "function envoy_on_request(h) h:body() end"})])

    def test_a_body_within_the_limit_is_held_and_sent_on(self):
        c = Http1Conn(self.proxy.port)
        self.addCleanup(c.close)
        c.send(post(b"/rec/ok", b"k" * (self.LIMIT - 100)))
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-h2record-body-bytes"), str(self.LIMIT - 100))

    def test_a_body_over_the_limit_gets_413(self):
        c = Http1Conn(self.proxy.port)
        self.addCleanup(c.close)
        c.send(post(b"/rec/big", b"k" * (self.LIMIT + 100)))
        self.assertEqual(c.read_response().status, 413)


class DefaultHeaderLimitTest(NuncioTestCase):
    """No Module: Envoy's 60 KiB."""

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        cls.start_proxy([mapping("rec", "/rec/", rec)])

    def test_http1_60_kib_default(self):
        c = Http1Conn(self.proxy.port)
        self.addCleanup(c.close)
        c.send(get(b"/rec/ok", b"x-big: " + b"a" * (58 * 1024) + b"\r\n"))
        self.assertEqual(c.read_response().status, 200)
        c2 = Http1Conn(self.proxy.port)
        self.addCleanup(c2.close)
        c2.send(get(b"/rec/big", b"x-big: " + b"a" * (61 * 1024) + b"\r\n"))
        self.assertEqual(c2.read_response().status, 431)


class MaxConnectionsTest(NuncioTestCase):
    """native max_connections: 2 (two workers share the count)."""

    LIMIT = 2

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        cls.start_proxy([mapping("rec", "/rec/", rec)], native={"max_connections": cls.LIMIT, "workers": 2})

    def served(self, c, path, timeout):
        """Sends a request on c; True if its answer (200) comes within timeout."""
        c.send(get(path))
        c.sock.settimeout(timeout)
        try:
            status = c.read_response().status
        except socket.timeout:
            return False
        self.assertEqual(status, 200)
        return True

    def test_the_connection_over_the_limit_waits_until_one_closes(self):
        held = []
        for i in range(self.LIMIT):
            c = Http1Conn(self.proxy.port)
            self.addCleanup(c.close)
            self.assertTrue(self.served(c, b"/rec/held%d" % i, CALL_TIMEOUT))
            held.append(c)
        extra = Http1Conn(self.proxy.port)  # the kernel completes the handshake; the proxy does not accept
        self.addCleanup(extra.close)
        self.assertFalse(self.served(extra, b"/rec/extra", 1.0 * SLOW), "a connection over max_connections was served")
        held[0].close()
        t0 = time.monotonic()
        extra.sock.settimeout(CALL_TIMEOUT)
        self.assertEqual(extra.read_response().status, 200)  # its request was waiting in the socket
        self.assertLess(time.monotonic() - t0, 2.0 * SLOW)
        self.assertIn("max_connections (2) reached", self.proxy.log())
        # the held ones still work
        self.assertTrue(self.served(held[1], b"/rec/again", CALL_TIMEOUT))


class TlsHandshakeTimeoutTest(NuncioTestCase):
    """native tls_handshake_timeout_ms: 700 on an HTTPS listener; request_headers_timeout_ms is
    longer, so it is the handshake deadline that cuts."""

    HANDSHAKE = 0.7

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        C = certs()
        cls.start_proxy([mapping("rec", "/rec/", rec)],
                        docs=[secret("server-cert", C.server.cert_pem, C.server.key_pem),
                              host("tls", "*", tls_secret="server-cert", insecure="Route")],
                        default_host=False, listener_protocol="HTTPS",
                        native={"tls_handshake_timeout_ms": int(cls.HANDSHAKE * 1000),
                                "request_headers_timeout_ms": 8000})

    def test_a_client_silent_after_its_first_tls_byte_is_cut_at_the_deadline(self):
        t0 = time.monotonic()
        c = Http1Conn(self.proxy.port)
        self.addCleanup(c.close)
        c.send(b"\x16")  # a TLS handshake record starts, and nothing follows
        self.assertTrue(c.closed_by_peer(self.HANDSHAKE + 3 * SLOW), "not cut after the handshake deadline")
        took = time.monotonic() - t0
        self.assertGreater(took, self.HANDSHAKE - 0.15)
        self.assertLess(took, self.HANDSHAKE + 2.0 * SLOW)
        self.assertIn("no TLS handshake within 0.7 s", self.proxy.log())

    def test_a_real_tls_client_is_served(self):
        import ssl
        ctx = ssl.create_default_context(cafile=certs().ca.cert_path)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.proxy.port), timeout=CALL_TIMEOUT),
                               server_hostname="localhost")
        self.addCleanup(sock.close)
        sock.sendall(get(b"/rec/tls"))
        data = b""
        while b"\r\n\r\n" not in data:
            d = sock.recv(65536)
            if not d:
                break
            data += d
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])


if __name__ == "__main__":
    unittest.main()
