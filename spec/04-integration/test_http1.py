"""HTTP/1.1 downstream (issue 6, csrc/h1s.c): curl and raw sockets speak
HTTP/1.1 to nuncio, which carries each request to an HTTP/2 upstream
(nuncio-h2record, tools/h2record.c: it answers 200 and puts the request it
received in `x-h2record`, so a test reads exactly what the upstream saw).

Covered: keep-alive, pipelining answered in order, chunked uploads, Expect:
100-continue, HEAD, HTTP/1.0 (426 unless Module enable_http10), the request
smuggling shapes (400 and the connection closed), 414 / 431, the request
headers timeout and the listener idle timeout, Host routing, the dispatch of
one port to HTTP/1.1 or HTTP/2 (preface, ALPN).

Run by ctest as `/usr/bin/python3 -m unittest -v test_http1` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from certs import certs  # noqa: E402
from nuncio_fixture import (start_recorder, BIN, CALL_TIMEOUT, SETTLE_TIMEOUT, SLOW, SRC, NuncioTestCase, case, host,  # noqa: E402
                            mapping, secret, Http1Conn as Conn)


def _constant(name, default):
    """A limit from csrc/h1s.h, so the tests follow the code."""
    import re
    try:
        with open(os.path.join(SRC, "csrc", "h1s.h")) as f:
            m = re.search(r"#define\s+%s\s+\(?([0-9]+)(?:\s*\*\s*([0-9]+))?" % name, f.read())
        return int(m.group(1)) * (int(m.group(2)) if m.group(2) else 1)
    except (OSError, AttributeError):
        return default


MAX_HEADER_BYTES = _constant("H1S_MAX_HEADER_BYTES", 60 * 1024)
MAX_HEADERS = _constant("H1S_MAX_HEADERS", 100)


def record(resp):
    """What the upstream received: [(name, value), ...] from x-h2record."""
    fields = resp.header("x-h2record").split("\t")[1:]
    unesc = lambda s: s.replace("\\t", "\t").replace("\\\\", "\\")  # noqa: E731
    return [(unesc(fields[i]), unesc(fields[i + 1])) for i in range(0, len(fields) - 1, 2)]


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", str(CALL_TIMEOUT)] + list(args), capture_output=True,
                          timeout=CALL_TIMEOUT + 5)


GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"


class Http1Test(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        C = certs()
        cls.start_proxy([mapping("rec", "/rec/", rec),
                         mapping("hosted", "/hosted/", rec, hostname="api.example.com")],
                        docs=[secret("server-cert", C.server.cert_pem, C.server.key_pem),
                              host("tls", "*", tls_secret="server-cert", insecure="Route")],
                        default_host=False, listener_protocol="HTTPS")

    def conn(self):
        c = Conn(self.proxy.port)
        self.addCleanup(c.close)
        return c

    def test_keep_alive_two_requests_one_connection(self):
        url = "http://127.0.0.1:%d/rec/" % self.proxy.port
        p = curl("-v", "--http1.1", url + "a", url + "b")
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("Re-using existing connection", err)
        self.assertEqual(err.count("< HTTP/1.1 200 OK"), 2, err)

    def test_upstream_sees_an_http2_request(self):
        c = self.conn()
        c.send(b"GET /rec/x?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nX-Custom: a  b \r\n"
               b"Connection: keep-alive, x-drop\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        got = record(r)
        names = [k for k, _ in got]
        self.assertEqual(names[:4], [":method", ":scheme", ":authority", ":path"])
        self.assertIn((":method", "GET"), got)
        self.assertIn((":scheme", "http"), got)
        self.assertIn((":authority", "Example.COM:8080"), got)
        self.assertIn((":path", "/rec/x?q=1"), got)
        self.assertIn(("x-custom", "a  b"), got)  # names lower-cased, trailing white space trimmed
        self.assertIn(("te", "trailers"), got)
        for hop in ("connection", "keep-alive", "proxy-connection", "upgrade", "http2-settings", "host"):
            self.assertNotIn(hop, names)
        # An h2c Upgrade is answered as plain HTTP/1.1, and the connection stays usable.
        self.assertEqual(r.version, "HTTP/1.1")
        c.send(GET % b"/rec/again")
        self.assertEqual(c.read_response().status, 200)

    def test_control_bytes_are_refused_with_400(self):
        # Found by fuzzing: http-parser checks every byte of a value but the
        # first, and (built lenient) lets a form feed into the target.
        cases = {
            "NUL first in Host": b"GET /rec/c1 HTTP/1.1\r\nHost: \x00evil\r\n\r\n",
            "control byte first in a value": b"GET /rec/c2 HTTP/1.1\r\nHost: test\r\nX-A: \x01v\r\n\r\n",
            "form feed in the target": b"GET /rec/a\x0cb HTTP/1.1\r\nHost: test\r\n\r\n",
            "control byte in a trailer": b"POST /rec/c3 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"1\r\na\r\n0\r\nX-T: \x02x\r\n\r\n",
        }
        for what, raw in cases.items():
            with self.subTest(what):
                c = self.conn()
                c.send(raw)
                self.assertEqual(c.read_response().status, 400, what)

    def test_local_404_has_content_length_0(self):
        c = self.conn()
        c.send(GET % b"/nowhere")
        r = c.read_response()
        self.assertEqual(r.status, 404)
        self.assertEqual(r.header("content-length"), "0")
        self.assertIsNone(r.header("transfer-encoding"))
        self.assertEqual(r.header("server"), "envoy")
        c.send(GET % b"/rec/after-404")  # still keep-alive
        self.assertEqual(c.read_response().status, 200)

    def test_pipelined_requests_answered_in_order(self):
        c = self.conn()
        c.send(GET % b"/rec/1" + b"POST /rec/2 HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello" +
               GET % b"/nowhere" + GET % b"/rec/3")
        paths = []
        for _ in range(4):
            r = c.read_response()
            paths.append(dict(record(r))[":path"] if r.status == 200 else r.status)
        self.assertEqual(paths, ["/rec/1", "/rec/2", 404, "/rec/3"])

    def test_chunked_upload(self):
        p = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "hello",
                 "-D", "-", "-o", "/dev/null", "http://127.0.0.1:%d/rec/up" % self.proxy.port)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"x-h2record-body-bytes: 5\r\n", p.stdout)
        # Several chunks, an extension and trailers, by hand.
        c = self.conn()
        c.send(b"POST /rec/chunks HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nx-trailer: t\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-h2record-body-bytes"), "23")
        self.assertNotIn("content-length", dict(record(r)))

    def test_large_upload_is_flow_controlled(self):
        body = os.urandom(6 * 1024 * 1024)
        path = os.path.join(self.proxy.dir, "big.bin")
        with open(path, "wb") as f:
            f.write(body)
        p = curl("--data-binary", "@" + path, "-D", "-", "-o", "/dev/null",
                 "http://127.0.0.1:%d/rec/big" % self.proxy.port)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"x-h2record-body-bytes: %d\r\n" % len(body), p.stdout)

    def test_expect_100_continue(self):
        c = self.conn()
        c.send(b"POST /rec/expect HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.version, r.status), ("HTTP/1.1", 100))
        c.send(b"body")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-h2record-body-bytes"), "4")
        self.assertNotIn("expect", dict(record(r)))
        # curl waits for the 100 before it sends the body
        p = curl("-v", "-H", "Expect: 100-continue", "--data-binary", "x" * 2000,
                 "http://127.0.0.1:%d/rec/expect" % self.proxy.port)
        self.assertIn("< HTTP/1.1 100 Continue", p.stderr.decode())

    def test_head_has_no_body(self):
        c = self.conn()
        c.send(b"HEAD /rec/h HTTP/1.1\r\nHost: test\r\nx-h2record-status: 503\r\n\r\n" + GET % b"/rec/next")
        r = c.read_response(head=True)
        self.assertEqual(r.status, 503)
        # The next answer follows the head directly: no body bytes were written.
        r = c.read_response()
        self.assertEqual(dict(record(r))[":path"], "/rec/next")

    def test_connection_close_is_honoured(self):
        c = self.conn()
        c.send(b"GET /rec/c HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_peer())

    def test_http10_is_refused_with_426(self):
        c = self.conn()
        c.send(b"GET /rec/old HTTP/1.0\r\nHost: test\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 426)
        self.assertTrue(c.closed_by_peer())

    def test_host_routing(self):
        c = self.conn()
        c.send(b"GET /hosted/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertIn((":authority", "api.example.com"), record(r))
        c.send(b"GET /hosted/x HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
        self.assertEqual(c.read_response().status, 404)
        # absolute-form: the URL's authority wins over Host
        c.send(b"GET http://api.example.com/hosted/y HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertIn((":path", "/hosted/y"), record(r))

    def test_smuggling_shapes_get_400_and_close(self):
        head = b"POST /rec/s HTTP/1.1\r\nHost: test\r\n"
        cases = {
            "content-length and transfer-encoding": head + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "transfer-encoding then content-length": head + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            "equal duplicate content-length": head + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "different duplicate content-length": head + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "content-length list": head + b"Content-Length: 3, 3\r\n\r\nabc",
            "non-numeric content-length": head + b"Content-Length: 3x\r\n\r\nabc",
            "signed content-length": head + b"Content-Length: +3\r\n\r\nabc",
            "transfer-encoding gzip": head + b"Transfer-Encoding: gzip\r\n\r\nabc",
            "transfer-encoding gzip, chunked": head + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "transfer-encoding chunked twice": head + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "transfer-encoding xchunked": head + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            "bad chunk size": head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "chunk size overflow": head + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            "chunk without CRLF": head + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
            "space before colon": head + b"Content-Length : 3\r\n\r\nabc",
            "NUL in a value": head + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
            "CR in a value": head + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
            "obs-fold": head + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "folded transfer-encoding": head + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            "bare LF": b"POST /rec/s HTTP/1.1\nHost: test\nContent-Length: 0\n\n",
            "two hosts": b"GET /rec/s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "no host": b"GET /rec/s HTTP/1.1\r\n\r\n",
            "CONNECT": b"CONNECT test:443 HTTP/1.1\r\nHost: test:443\r\n\r\n",
        }
        for label, data in cases.items():
            with case(label):
                c = self.conn()
                c.send(data + GET % b"/rec/smuggled")
                r = c.read_response()
                self.assertEqual(r.status, 400)
                self.assertEqual(r.header("connection"), "close")
                self.assertTrue(c.closed_by_peer(), "the connection stays open")
        self.proxy.wait_stats(live_streams=0)

    def test_long_request_line_is_414(self):
        c = self.conn()
        c.send(b"GET /rec/" + b"a" * (MAX_HEADER_BYTES + 10) + b" HTTP/1.1\r\nHost: test\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 414)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_peer())

    def test_large_headers_are_431(self):
        with case("bytes"):
            c = self.conn()
            c.send(b"GET /rec/big HTTP/1.1\r\nHost: test\r\n" +
                   b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(MAX_HEADER_BYTES // 1000 + 2)) +
                   b"\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 431)
            self.assertEqual(r.header("connection"), "close")
            self.assertTrue(c.closed_by_peer())
        with case("count"):
            c = self.conn()
            c.send(b"GET /rec/many HTTP/1.1\r\nHost: test\r\n" +
                   b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n")
            self.assertEqual(c.read_response().status, 431)
            self.assertTrue(c.closed_by_peer())
        with case("just under the limit passes"):
            c = self.conn()
            c.send(b"GET /rec/ok HTTP/1.1\r\nHost: test\r\n" +
                   b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(MAX_HEADER_BYTES // 1000 - 5)) +
                   b"\r\n")
            self.assertEqual(c.read_response().status, 200)

    def test_http2_on_the_same_port(self):
        p = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                 "http://127.0.0.1:%d/rec/h2" % self.proxy.port)
        self.assertEqual(p.stdout, b"2 200", p.stderr)

    def test_tls_alpn_picks_the_codec(self):
        for flag, want in (("--http1.1", b"1.1 200 https"), ("--http2", b"2 200 https")):
            with case(flag):
                p = curl(flag, "-k", "-D", "-", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                         "https://localhost:%d/rec/tls" % self.proxy.port, "--resolve",
                         "localhost:%d:127.0.0.1" % self.proxy.port)
                self.assertEqual(p.returncode, 0, p.stderr)
                scheme = b"https" if b"\tx-forwarded-proto\thttps" in p.stdout else b"http"
                self.assertEqual(p.stdout.rsplit(b"\n", 1)[-1] + b" " + scheme, want)
        # TLS without ALPN: HTTP/1.1 by its first bytes
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = Conn(self.proxy.port, tls_context=ctx)
        self.addCleanup(c.close)
        self.assertIsNone(c.sock.selected_alpn_protocol())
        c.send(GET % b"/rec/tls-no-alpn")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertIn((":scheme", "https"), record(r))


class Http1TimeoutsTest(NuncioTestCase):
    HEADERS_MS = 400
    IDLE_MS = 600

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        cls.start_proxy([mapping("rec", "/rec/", rec)],
                        docs=["apiVersion: getambassador.io/v3alpha1\nkind: Module\nmetadata: {name: ambassador}\n"
                              "spec:\n  config:\n    enable_http10: true\n    listener_idle_timeout_ms: %d\n"
                              % cls.IDLE_MS],
                        native={"request_headers_timeout_ms": cls.HEADERS_MS})

    def conn(self):
        c = Conn(self.proxy.port)
        self.addCleanup(c.close)
        return c

    def test_http10_accepted_with_enable_http10(self):
        c = self.conn()
        c.send(b"GET /rec/old HTTP/1.0\r\nHost: test\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.version, r.status), ("HTTP/1.0", 200))
        self.assertTrue(c.closed_by_peer())  # 1.0 without keep-alive
        # keep-alive, when the answer's length is known (a local reply)
        c = self.conn()
        c.send(b"GET /nowhere HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.version, r.status), ("HTTP/1.0", 404))
        self.assertEqual(r.header("connection"), "keep-alive")
        self.assertEqual(r.header("content-length"), "0")
        # a streamed answer of unknown length: no chunking for 1.0, the end is the close
        c.send(b"GET /rec/old2 HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("transfer-encoding"))
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_peer())

    def test_slow_headers_are_cut(self):
        c = self.conn()
        t0 = time.monotonic()
        c.send(b"GET /rec/slow HTTP/1.1\r\nHost: te")
        r = c.read_response()
        self.assertEqual(r.status, 408)
        self.assertTrue(c.closed_by_peer())
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, self.HEADERS_MS / 1000.0 * 0.9)
        self.assertLess(took, self.HEADERS_MS / 1000.0 + 5 * SLOW)

    def test_slow_headers_on_a_kept_alive_connection(self):
        c = self.conn()
        c.send(GET % b"/rec/first")
        self.assertEqual(c.read_response().status, 200)
        c.send(b"GET /rec/second HTTP/1.1\r\n")
        self.assertEqual(c.read_response().status, 408)
        self.assertTrue(c.closed_by_peer())

    def test_idle_keep_alive_connection_is_closed(self):
        c = self.conn()
        c.send(GET % b"/rec/idle")
        self.assertEqual(c.read_response().status, 200)
        t0 = time.monotonic()
        self.assertTrue(c.closed_by_peer(timeout=self.IDLE_MS / 1000.0 + 5 * SLOW))
        self.assertGreaterEqual(time.monotonic() - t0, self.IDLE_MS / 1000.0 * 0.8)
        self.assertIn("idle timeout", self.proxy.log())


PROTOCOL_MODULE = """apiVersion: getambassador.io/v3alpha1
kind: Module
metadata: {name: ambassador}
spec:
  config:
    lua_scripts: |
      function envoy_on_response(response_handle)
        response_handle:headers():add("x-protocol", response_handle:streamInfo():protocol())
      end
"""


class StreamInfoProtocolTest(NuncioTestCase):
    """Envoy's streamInfo():protocol() names the client's protocol in lua_scripts."""

    @classmethod
    def setUpClass(cls):
        rec = start_recorder(cls)
        cls.start_proxy([mapping("rec", "/rec/", rec)], docs=[PROTOCOL_MODULE])

    def test_protocol_is_the_clients(self):
        url = "http://127.0.0.1:%d/rec/x" % self.proxy.port
        for flag, want in (("--http1.1", "HTTP/1.1"), ("--http2-prior-knowledge", "HTTP/2")):
            out = curl("-D", "-", "-o", "/dev/null", flag, url)
            self.assertEqual(out.returncode, 0, out.stderr)
            got = [l.split(":", 1)[1].strip() for l in out.stdout.decode().splitlines()
                   if l.lower().startswith("x-protocol:")]
            self.assertEqual(got, [want])


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
