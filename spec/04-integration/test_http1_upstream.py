"""HTTP/1.1 upstreams (issue 6): a Mapping without `grpc: true` reaches its
service over HTTP/1.1, as Envoy does, through csrc/h1c.c and the per-endpoint
keep-alive pool of csrc/upstream.c.

The upstream is Python's http.server (ThreadingHTTPServer, protocol_version
HTTP/1.1) in this process: it records what it received, with the client port
of the connection it came on, so keep-alive reuse is seen from the upstream's
side. HTTP/2 clients are curl (--http2-prior-knowledge) and nghttp; when the
HTTP/1.1 downstream codec answers, curl --http1.1 too.

Run by ctest as `/usr/bin/python3 -m unittest -v test_http1_upstream` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from nuncio_fixture import CALL_TIMEOUT, MiB, NuncioTestCase, free_port, mapping  # noqa: E402

BIG = 8 * MiB
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def pattern(n):
    """n deterministic bytes (not all alike, so a lost or repeated chunk shows)."""
    block = bytes(range(256)) * 64  # 16 KiB
    out = bytearray()
    i = 0
    while len(out) < n:
        out += block[i % 7:] + block[:i % 7]
        i += 1
    return bytes(out[:n])


BIG_BODY = pattern(BIG)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "h1up"

    def setup(self):
        super().setup()
        self.served = 0  # requests answered on this connection

    def log_message(self, *args):
        pass

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    trailers = []
                    while True:
                        t = self.rfile.readline()
                        if t in (b"\r\n", b"\n", b""):
                            break
                        trailers.append(t.decode().strip())
                    self.trailers = trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def record(self, body):
        rec = {"port": self.client_address[1], "method": self.command, "path": self.path,
               "headers": [(k.lower(), v) for k, v in self.headers.items()], "body_len": len(body),
               "body_sha": hashlib.sha256(body).hexdigest(), "trailers": getattr(self, "trailers", []),
               "served_before": self.served}
        with self.server.lock:
            self.server.seen.append(rec)
        return rec

    def reply(self, status, body, headers=(), close=False):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.served += 1

    def handle_any(self):
        self.trailers = []
        body = self.read_body()
        path = self.path.split("?")[0]
        if path == "/h1/flaky" and self.served > 0:
            # A kept-alive connection the server gave up on: closed under the next request.
            self.record(body)
            self.close_connection = True
            return
        rec = self.record(body)
        if path == "/h1/slow":
            self.server.release.wait(CALL_TIMEOUT)
            self.close_connection = True
            return
        if path == "/h1/big":
            self.reply(200, BIG_BODY, [("Content-Type", "application/octet-stream")])
            return
        if path == "/h1/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Checksum: done\r\n\r\n")
            self.served += 1
            return
        if path == "/h1/eof":
            # No length, no chunking: the body ends when the connection does.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
            return
        if path == "/h1/continue":
            self.send_response_only(100)
            self.end_headers()
            self.reply(201, b"after continue")
            return
        if path == "/h1/nocontent":
            self.send_response(204)
            self.end_headers()
            self.served += 1
            return
        if path == "/h1/close":
            self.reply(200, b"closing", close=True)
            return
        if path == "/h1/bye":
            # Answered as if kept alive, then the server closes the idle connection.
            self.reply(200, b"bye")
            self.close_connection = True
            self.server.byes.release()
            return
        m = re.match(r"/h1/status/(\d+)$", path)
        if m:
            self.reply(int(m.group(1)), b"status %s" % m.group(1).encode(), [("Content-Type", "text/plain")])
            return
        out = json.dumps({"port": rec["port"], "len": rec["body_len"], "sha": rec["body_sha"]}).encode()
        self.reply(200, out, [("Content-Type", "application/json"), ("X-Up", "yes"),
                              ("Connection", "keep-alive, X-Hop"), ("X-Hop", "hop-by-hop"),
                              ("Keep-Alive", "timeout=30")])

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = handle_any


class H1Upstream:
    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.lock = threading.Lock()
        self.server.seen = []
        self.server.release = threading.Event()
        self.server.byes = threading.Semaphore(0)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, path=None):
        with self.server.lock:
            return [r for r in self.server.seen if path is None or r["path"] == path]

    def stop(self):
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()


def parse_curl_headers(text):
    """curl -D output (last response block) -> (status, {name: [values]})."""
    # the final response's head: 1xx heads come before it, trailers after it
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers


class Http1UpstreamTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = H1Upstream()
        cls.addClassCleanup(cls.up.stop)
        cls.dead_port = free_port()  # nothing listens there
        up = "127.0.0.1:%d" % cls.up.port
        # No grpc: true: HTTP/1.1 to the service, Envoy's default.
        plain = [
            mapping("slow", "/h1/slow", up, grpc=False, timeout_ms=300),
            mapping("h1", "/h1/", up, grpc=False),
            mapping("dead", "/dead/", "127.0.0.1:%d" % cls.dead_port, grpc=False),
        ]
        cls.start_proxy(plain)
        cls.tmp = tempfile.mkdtemp(prefix="h1up-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.big_file = os.path.join(cls.tmp, "big")
        with open(cls.big_file, "wb") as f:
            f.write(BIG_BODY)

    # -- clients

    def curl(self, path, *args, http="--http2-prior-knowledge", data_file=None):
        hdr = os.path.join(self.tmp, "h")
        out = os.path.join(self.tmp, "b")
        cmd = ["curl", "-sS", http, "-m", str(CALL_TIMEOUT), "-D", hdr, "-o", out]
        if data_file:
            cmd += ["--data-binary", "@" + data_file]
        cmd += list(args) + ["http://127.0.0.1:%d%s" % (self.proxy.port, path)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV, timeout=CALL_TIMEOUT + 5)
        self.assertEqual(p.returncode, 0, "curl failed: %s" % p.stderr)
        with open(hdr) as f:
            status, headers = parse_curl_headers(f.read())
        with open(out, "rb") as f:
            body = f.read()
        return status, headers, body

    def nghttp(self, path, *args):
        cmd = ["nghttp", "-v", "-t", str(CALL_TIMEOUT)] + list(args) + ["http://127.0.0.1:%d%s" % (self.proxy.port, path)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV, timeout=CALL_TIMEOUT + 5)
        got = {}
        for name, value in re.findall(r"recv \(stream_id=13\) (:?[^:\n]+): ([^\n]*)", p.stdout):
            got.setdefault(name, []).append(value)
        return p, got

    def json_of(self, body):
        return json.loads(body.decode())

    # -- tests

    def test_request_and_response_are_translated(self):
        status, headers, body = self.curl("/h1/echo?x=1", "-H", "x-custom: one", "-H", "te: trailers",
                                          "-H", "host: example.test")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("x-up"), ["yes"])
        self.assertEqual(headers.get("content-type"), ["application/json"])
        for hop in ("x-hop", "keep-alive", "connection", "transfer-encoding"):
            self.assertNotIn(hop, headers, "hop-by-hop %s reached the client" % hop)
        rec = self.up.seen("/h1/echo?x=1")[-1]
        names = [k for k, _ in rec["headers"]]
        hd = dict(rec["headers"])
        self.assertEqual(rec["method"], "GET")
        self.assertEqual(hd.get("host"), "example.test")
        self.assertEqual(names.count("host"), 1)
        self.assertEqual(hd.get("x-custom"), "one")
        self.assertIn("x-forwarded-proto", hd)
        self.assertNotIn("te", hd)
        self.assertFalse([n for n in names if n.startswith(":")], "pseudo-headers on the wire: %r" % names)
        self.assertNotIn("transfer-encoding", hd, "a bodiless GET known complete needs no framing")

    def test_post_body_with_length(self):
        path = os.path.join(self.tmp, "small")
        with open(path, "wb") as f:
            f.write(b"0123456789" * 100)
        status, _, body = self.curl("/h1/post", data_file=path)
        self.assertEqual(status, 200)
        got = self.json_of(body)
        self.assertEqual(got["len"], 1000)
        self.assertEqual(got["sha"], hashlib.sha256(b"0123456789" * 100).hexdigest())
        rec = self.up.seen("/h1/post")[-1]
        self.assertEqual(dict(rec["headers"]).get("content-length"), "1000")

    def test_upload_without_length_goes_chunked(self):
        path = os.path.join(self.tmp, "mid")
        data = pattern(300 * 1024)
        with open(path, "wb") as f:
            f.write(data)
        p, got = self.nghttp("/h1/chunked-up", "--no-content-length", "-d", path)
        self.assertEqual(got.get(":status"), ["200"], p.stdout[-2000:] + p.stderr)
        rec = self.up.seen("/h1/chunked-up")[-1]
        self.assertEqual(dict(rec["headers"]).get("transfer-encoding"), "chunked")
        self.assertEqual(rec["body_len"], len(data))
        self.assertEqual(rec["body_sha"], hashlib.sha256(data).hexdigest())

    def test_statuses_pass_through(self):
        for code in (201, 404, 418, 500, 503):
            status, _, body = self.curl("/h1/status/%d" % code)
            self.assertEqual(status, code)
            self.assertEqual(body, b"status %d" % code)

    def test_chunked_response_with_trailers(self):
        p, got = self.nghttp("/h1/chunked")
        self.assertEqual(got.get(":status"), ["200"], p.stdout[-2000:])
        data = sum(int(n) for n in re.findall(r"recv DATA frame <length=(\d+), flags=0x0\d, stream_id=13>", p.stdout))
        self.assertEqual(data, len("hello chunked world"))
        self.assertEqual(got.get("x-checksum"), ["done"], "the chunked trailer should arrive as a trailer")
        status, headers, body = self.curl("/h1/chunked")
        self.assertEqual(body, b"hello chunked world")
        self.assertNotIn("transfer-encoding", headers)

    def test_close_delimited_response(self):
        status, _, body = self.curl("/h1/eof")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"until the end")

    def test_informational_response_is_skipped(self):
        status, _, body = self.curl("/h1/continue", "-X", "POST", "-d", "x")
        self.assertEqual(status, 201)
        self.assertEqual(body, b"after continue")

    def test_head_and_204_have_no_body(self):
        p, got = self.nghttp("/h1/echo-head", "-H", ":method: HEAD")
        self.assertEqual(got.get(":status"), ["200"], p.stdout[-2000:])
        self.assertTrue(got.get("content-length"), "HEAD keeps the length of the body it does not carry")
        self.assertNotRegex(p.stdout, r"recv DATA frame <length=[1-9]", "a HEAD answer carried a body")
        status, _, body = self.curl("/h1/nocontent")
        self.assertEqual(status, 204)
        self.assertEqual(body, b"")
        # the connection those answers came on still works (nothing was left unread on it)
        status, _, _ = self.curl("/h1/echo-after-head")
        self.assertEqual(status, 200)

    def test_large_response_streams(self):
        status, headers, body = self.curl("/h1/big")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-length"), [str(BIG)])
        self.assertEqual(len(body), BIG)
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(BIG_BODY).hexdigest())

    def test_large_upload_streams(self):
        status, _, body = self.curl("/h1/upload", data_file=self.big_file)
        self.assertEqual(status, 200)
        got = self.json_of(body)
        self.assertEqual(got["len"], BIG)
        self.assertEqual(got["sha"], hashlib.sha256(BIG_BODY).hexdigest())

    def test_keep_alive_reuses_the_connection(self):
        ports = [self.json_of(self.curl("/h1/ka")[2])["port"] for _ in range(4)]
        self.assertEqual(len(set(ports)), 1, "sequential requests should share one upstream connection: %r" % ports)
        recs = self.up.seen("/h1/ka")
        self.assertEqual([r["served_before"] > 0 for r in recs[-3:]], [True] * 3)

    def test_connection_close_is_honoured(self):
        self.curl("/h1/close")
        first = self.up.seen("/h1/close")[-1]["port"]
        status, _, body = self.curl("/h1/after-close")
        self.assertEqual(status, 200)
        self.assertNotEqual(self.json_of(body)["port"], first, "a connection: close answer must not be reused")

    def test_server_closing_an_idle_connection(self):
        status, _, body = self.curl("/h1/bye")
        self.assertEqual((status, body), (200, b"bye"))
        self.assertTrue(self.up.server.byes.acquire(timeout=CALL_TIMEOUT))
        first = self.up.seen("/h1/bye")[-1]["port"]
        status, _, body = self.curl("/h1/after-bye")
        self.assertEqual(status, 200)
        self.assertNotEqual(self.json_of(body)["port"], first)

    def test_request_on_a_connection_the_server_dropped_is_retried(self):
        status, _, body = self.curl("/h1/warm")
        self.assertEqual(status, 200)
        warm = self.json_of(body)["port"]
        status, _, body = self.curl("/h1/flaky")
        self.assertEqual(status, 200, "the refused request should have been sent again: %r" % body)
        recs = self.up.seen("/h1/flaky")[-2:]
        self.assertEqual(len(recs), 2, "the upstream should have seen the request twice: %r" % recs)
        self.assertEqual(recs[0]["port"], warm, "the first try should reuse the warm connection")
        self.assertNotEqual(recs[1]["port"], warm, "the retry should go out on a new connection")
        self.assertIn("attempts=2", self.proxy_log())

    def test_dead_upstream_is_503(self):
        status, _, body = self.curl("/dead/x")
        self.assertEqual(status, 503)
        self.assertIn(b"connection failure", body)

    def test_slow_upstream_is_504(self):
        status, _, body = self.curl("/h1/slow")
        self.assertEqual(status, 504)
        self.assertIn(b"upstream request timeout", body)
        self.assertTrue(self.up.seen("/h1/slow"), "the request should have reached the upstream")

    def test_http1_client_to_http1_upstream(self):
        status, headers, body = self.curl("/h1/echo-h1", "-H", "x-custom: h1", http="--http1.1")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("x-up"), ["yes"])
        self.assertNotIn("x-hop", headers)
        self.assertEqual(dict(self.up.seen("/h1/echo-h1")[-1]["headers"]).get("x-custom"), "h1")
        status, _, body = self.curl("/h1/chunked", http="--http1.1")
        self.assertEqual((status, body), (200, b"hello chunked world"))
        status, _, body = self.curl("/h1/upload-h1", data_file=self.big_file, http="--http1.1")
        self.assertEqual(status, 200)
        self.assertEqual(self.json_of(body)["sha"], hashlib.sha256(BIG_BODY).hexdigest())
        status, headers, body = self.curl("/h1/big", http="--http1.1")
        self.assertEqual((status, len(body)), (200, BIG))
        status, _, _ = self.curl("/h1/status/404", http="--http1.1")
        self.assertEqual(status, 404)

    def test_stats_count_upstream_connections(self):
        self.curl("/h1/stats")
        st = self.proxy.stats()
        self.assertGreaterEqual(st.get("upstream_connects", 0), 1)
        self.assertGreaterEqual(st.get("live_upstream_conns", 0), 1, "the kept-alive connection is live: %r" % st)


class RecorderOverHttp1Test(NuncioTestCase):
    """nuncio-h2record (tools/h2record.c) speaks HTTP/1.1 to a Mapping without
    grpc: true, as nuncio.testing's live mode needs: the record still starts
    with :method, :path and :authority, and a gRPC call carried over HTTP/1.1
    gets its grpc-status from the chunked trailer."""

    @classmethod
    def setUpClass(cls):
        from nuncio_fixture import BIN, stubs
        rec = os.path.join(os.path.dirname(BIN), "nuncio-h2record")
        cls.rec = subprocess.Popen([rec, "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=CLEAN_ENV)
        cls.addClassCleanup(cls.stop_recorder)
        line = cls.rec.stdout.readline().decode()
        if not line.startswith("PORTS "):
            raise RuntimeError("nuncio-h2record did not start: %r" % line)
        cls.stubs = stubs()
        up = "127.0.0.1:%s" % line.split()[1]
        cls.start_proxy([mapping("rec", "/rec/", up, grpc=False),
                         mapping("greet", "/helloworld.Greeter/", up, grpc=False)])

    @classmethod
    def stop_recorder(cls):
        cls.rec.stdin.close()  # h2record exits when its stdin closes
        cls.rec.wait(10)
        cls.rec.stdout.close()

    def test_the_record_reads_like_http2(self):
        cmd = ["nghttp", "-v", "-t", str(CALL_TIMEOUT), "-H", ":authority: svc.example",
               "-H", "x-probe: 1", "http://127.0.0.1:%d/rec/path?q=1" % self.proxy.port]
        p = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV, timeout=CALL_TIMEOUT + 5)
        m = re.search(r"recv \(stream_id=13\) x-h2record: ([^\n]*)\n", p.stdout)
        self.assertIsNotNone(m, p.stdout[-2000:])
        fields = m.group(1).split("\t")[1:]
        got = dict(zip(fields[0::2], fields[1::2]))
        self.assertEqual(fields[:6], [":method", "GET", ":path", "/rec/path?q=1", ":authority", "svc.example"])
        self.assertEqual(got.get("x-probe"), "1")
        self.assertNotIn("host", got)

    def test_grpc_call_over_http1_gets_its_status_from_the_trailer(self):
        import grpc
        hw, hw_grpc = self.stubs.helloworld_pb2, self.stubs.helloworld_pb2_grpc
        with self.proxy.channel() as channel:
            reply, call = hw_grpc.GreeterStub(channel).SayHello.with_call(hw.HelloRequest(name="x"),
                                                                          timeout=CALL_TIMEOUT)
        self.assertEqual(reply.message, "")  # h2record's empty message
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        record = dict(call.initial_metadata()).get("x-h2record", "")
        self.assertIn("transfer-encoding\tchunked", record, "the request body should go chunked: %r" % record)


class Http1TlsUpstreamTest(NuncioTestCase):
    """TLS origination to an HTTP/1.1 upstream: nuncio offers ALPN http/1.1 and
    the exchange runs over the TLS connection."""

    @classmethod
    def setUpClass(cls):
        import ssl
        from certs import certs
        c = certs()
        cls.up = H1Upstream()
        cls.addClassCleanup(cls.up.stop)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(c.upstream.cert_path, c.upstream.key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        cls.up.server.socket = ctx.wrap_socket(cls.up.server.socket, server_side=True)
        cls.alpn = []
        orig = Handler.setup

        def setup(handler):
            orig(handler)
            cls.alpn.append(handler.connection.selected_alpn_protocol())
        cls.up.server.RequestHandlerClass = type("TlsHandler", (Handler,), {"setup": setup})
        cls.start_proxy([mapping("tls", "/h1/", "https://127.0.0.1:%d" % cls.up.port, grpc=False)])

    def test_tls_upstream_over_http1(self):
        cmd = ["curl", "-sS", "--http2-prior-knowledge", "-m", str(CALL_TIMEOUT),
               "http://127.0.0.1:%d/h1/tls" % self.proxy.port]
        for _ in range(2):
            p = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV, timeout=CALL_TIMEOUT + 5)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn('"len": 0', p.stdout)
        self.assertEqual(self.alpn, ["http/1.1"], "one TLS connection, kept alive, with ALPN http/1.1")
        self.assertEqual(len({r["port"] for r in self.up.seen("/h1/tls")}), 1)
