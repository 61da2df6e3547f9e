"""gRPC-Web (Module enable_grpc_web, behaviour notes §6) and CORS (Mapping/Module cors, §1.12)
against a real grpcio Echo upstream, with requests framed by hand and sent with curl.

Every case runs over HTTP/2 (prior knowledge) and, when nuncio's HTTP/1.1 downstream
answers, over HTTP/1.1 too.

Run by ctest as `/usr/bin/python3 -m unittest -v test_grpc_web` in spec/04-integration
with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import base64
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

from nuncio_fixture import NuncioTestCase, free_port, mapping, stubs  # noqa: E402

S = stubs()
pb = S.echo_pb2

MODULE = """
apiVersion: getambassador.io/v3alpha1
kind: Module
metadata: {name: ambassador}
spec:
  config:
    enable_grpc_web: true
"""

CORS = {"origins": ["https://app.example"], "methods": ["POST", "OPTIONS"],
        "headers": ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"],
        "exposed_headers": ["grpc-status", "grpc-message"], "max_age": "600", "credentials": True}


def frame(msg, flag=0):
    data = msg.SerializeToString() if hasattr(msg, "SerializeToString") else msg
    return struct.pack(">BI", flag, len(data)) + data


def trailer_frame(text):
    return struct.pack(">BI", 0x80, len(text)) + text


def parse_frames(data):
    """Splits a binary gRPC-Web body into (flag, payload) frames; fails on leftovers."""
    out, i = [], 0
    while i < len(data):
        flag, n = struct.unpack(">BI", data[i:i + 5])
        out.append((flag, data[i + 5:i + 5 + n]))
        assert len(data) >= i + 5 + n, "truncated frame in %r" % data
        i += 5 + n
    return out


class GrpcWebTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        dead = "127.0.0.1:%d" % free_port()
        cls.start_proxy([mapping("echo", "/echo.Echo/", "127.0.0.1:%d" % cls.up.port, cors=CORS),
                         mapping("dead", "/dead.Svc/", dead)], docs=[MODULE])
        cls.versions = ["2"]
        status, _, _ = cls.curl_raw("1.1", "/echo.Echo/Echo", frame(pb.EchoRequest(text="probe")),
                                    {"content-type": "application/grpc-web"})
        if status not in (0, 505):  # the HTTP/1.1 downstream codec is there
            cls.versions.append("1.1")

    @classmethod
    def curl_raw(cls, version, path, body, headers, method="POST"):
        with tempfile.TemporaryDirectory() as d:
            hfile, bfile, infile = (os.path.join(d, n) for n in ("h", "b", "in"))
            with open(infile, "wb") as f:
                f.write(body or b"")
            cmd = ["curl", "-s", "-m", "20", "-X", method, "-D", hfile, "-o", bfile,
                   "--http2-prior-knowledge" if version == "2" else "--http1.1"]
            if body is not None:
                cmd += ["--data-binary", "@" + infile]
            for k, v in headers.items():
                cmd += ["-H", "%s: %s" % (k, v)]
            cmd.append("http://127.0.0.1:%d%s" % (cls.proxy.port, path))
            subprocess.run(cmd, check=False, timeout=30)
            status, hdrs = 0, {}
            if os.path.exists(hfile):
                with open(hfile, "rb") as f:
                    head = f.read().decode("latin-1")
                for line in head.split("\r\n"):
                    if line.startswith("HTTP/"):
                        status, hdrs = int(line.split()[1]), {}  # the last response (after a 100)
                    elif ":" in line:
                        k, v = line.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
            data = b""
            if os.path.exists(bfile):
                with open(bfile, "rb") as f:
                    data = f.read()
            return status, hdrs, data

    def curl(self, version, path, body, ctype="application/grpc-web", accept=None, extra=None, method="POST"):
        h = {"content-type": ctype}
        if accept:
            h["accept"] = accept
        h.update(extra or {})
        return self.curl_raw(version, path, body, h, method)

    def each_version(self):
        """The HTTP versions to run a case over (a failure names the version in its log)."""
        return list(self.versions)

    # ------------------------------------------------------------------ binary and text

    def test_binary_unary(self):
        for v in self.each_version():
            status, h, body = self.curl(v, "/echo.Echo/Echo", frame(pb.EchoRequest(text="hi", payload=b"\x00\xff")))
            self.assertEqual(status, 200)
            self.assertEqual(h["content-type"], "application/grpc-web+proto")
            self.assertNotIn("content-length", h)
            self.assertNotIn("grpc-status", h)  # it travels in the body
            reply = pb.EchoReply(text="hi", payload=b"\x00\xff").SerializeToString()
            # the message frame, then the trailer frame byte for byte ("key:value\r\n", no space)
            self.assertEqual(body, frame(reply) + trailer_frame(b"grpc-status:0\r\n"))

    def test_text_unary(self):
        for v in self.each_version():
            req = base64.b64encode(frame(pb.EchoRequest(text="hello web")))
            status, h, body = self.curl(v, "/echo.Echo/Echo", req, ctype="application/grpc-web-text",
                                        accept="application/grpc-web-text")
            self.assertEqual(status, 200)
            self.assertEqual(h["content-type"], "application/grpc-web-text+proto")
            reply = frame(pb.EchoReply(text="hello web"))
            # each frame base64-encoded on its own: padding may sit between them
            want = base64.b64encode(reply) + base64.b64encode(trailer_frame(b"grpc-status:0\r\n"))
            self.assertEqual(body, want)

    def test_text_request_binary_response_follows_accept(self):
        for v in self.each_version():
            req = base64.b64encode(frame(pb.EchoRequest(text="x")))
            status, h, body = self.curl(v, "/echo.Echo/Echo", req, ctype="application/grpc-web-text+proto")
            self.assertEqual(status, 200)
            self.assertEqual(h["content-type"], "application/grpc-web+proto")  # Envoy: only accept asks for text
            self.assertEqual(parse_frames(body)[0], (0, pb.EchoReply(text="x").SerializeToString()))

    def test_two_messages_each_base64_with_padding(self):
        # Collect (client streaming): two messages, each base64-encoded on its own ("=" mid-body)
        for v in self.each_version():
            m1, m2 = frame(pb.EchoRequest(text="a")), frame(pb.EchoRequest(text="bcd"))
            req = base64.b64encode(m1) + base64.b64encode(m2)
            self.assertIn(b"=", base64.b64encode(m1))
            status, _, body = self.curl(v, "/echo.Echo/Collect", req, ctype="application/grpc-web-text",
                                        accept="application/grpc-web-text")
            self.assertEqual(status, 200)
            first = frame(pb.EchoReply(text="a,bcd", index=2))
            self.assertEqual(body, base64.b64encode(first) +
                             base64.b64encode(trailer_frame(b"grpc-status:0\r\n")))

    def test_server_streaming_text_frames_encoded_separately(self):
        for v in self.each_version():
            req = base64.b64encode(frame(pb.ExpandRequest(text="n", count=3)))
            status, h, body = self.curl(v, "/echo.Echo/Expand", req, ctype="application/grpc-web-text",
                                        accept="application/grpc-web-text+proto")
            self.assertEqual(status, 200)
            want = b"".join(base64.b64encode(frame(pb.EchoReply(text="n %d" % i, index=i))) for i in range(3))
            want += base64.b64encode(trailer_frame(b"grpc-status:0\r\n"))
            self.assertEqual(body, want)

    def test_error_status_in_the_trailer_frame(self):
        for v in self.each_version():
            status, _, body = self.curl(v, "/echo.Echo/Echo", frame(pb.EchoRequest(text="status:7:no way")))
            self.assertEqual(status, 200)
            frames = parse_frames(body)
            self.assertEqual(frames[-1][0], 0x80)
            self.assertIn(b"grpc-status:7\r\n", frames[-1][1])
            self.assertIn(b"grpc-message:no way\r\n", frames[-1][1])
            self.assertIn(b"x-it-trailer:t1\r\n", frames[-1][1])

    def test_trailers_only_passes_status_in_headers(self):
        # grpcio answers a method it does not know with a trailers-only UNIMPLEMENTED
        for v in self.each_version():
            status, h, body = self.curl(v, "/echo.Echo/NoSuchMethod", frame(b""))
            self.assertEqual(status, 200)
            self.assertEqual(h.get("grpc-status"), "12")
            self.assertEqual(h["content-type"], "application/grpc-web+proto")
            self.assertEqual(body, b"")

    def test_local_replies_as_envoy_grpc_web(self):
        for v in self.each_version():
            # no route: nuncio's 404 for a gRPC(-Web) call names the request (Envoy's has no
            # body and passes bare): the text becomes grpc-message, 404 maps to 12
            status, h, body = self.curl(v, "/nowhere.Svc/M", frame(b""))
            self.assertEqual(status, 404)
            self.assertEqual(h["content-type"], "application/grpc-web+proto")
            self.assertEqual(h["grpc-status"], "12")
            self.assertIn("no route for POST /nowhere.Svc/M", h["grpc-message"])
            self.assertEqual(body, b"")
            # upstream unreachable: the 503's text becomes grpc-message, grpc-status 14, HTTP 503 kept
            status, h, body = self.curl(v, "/dead.Svc/M", frame(b""))
            self.assertEqual(status, 503)
            self.assertEqual(h["grpc-status"], "14")
            self.assertIn("upstream connect error", h["grpc-message"])
            self.assertEqual(h["content-length"], "0")
            self.assertEqual(body, b"")

    # ------------------------------------------------------------------ bad bodies

    def assert_still_serving(self, v):
        status, _, body = self.curl(v, "/echo.Echo/Echo", frame(pb.EchoRequest(text="after")))
        self.assertEqual(status, 200)
        self.assertEqual(parse_frames(body)[0][1], pb.EchoReply(text="after").SerializeToString())
        self.proxy.wait_stats(live_streams=0)

    def test_bad_base64_is_400(self):
        for v in self.each_version():
            for bad in (b"AAAA*AAA", b"AAAAAAA", b"AA=A"):
                status, h, body = self.curl(v, "/echo.Echo/Echo", bad, ctype="application/grpc-web-text")
                self.assertEqual(status, 400, bad)
                self.assertEqual(h["grpc-status"], "13")
                self.assertEqual(h["grpc-message"], "Bad gRPC-web request, invalid base64 data.")
            self.assertIn("gRPC-Web request body rejected", self.proxy_log())
            self.assert_still_serving(v)

    def test_frame_past_the_body_and_truncated_frames_fail(self):
        for v in self.each_version():
            full = frame(pb.EchoRequest(text="truncated"))
            for bad in (full[:-3], full[:3], struct.pack(">BI", 0, 1000) + b"abc"):
                status, h, _ = self.curl(v, "/echo.Echo/Echo", bad)
                self.assertEqual(status, 400, bad)
                self.assertEqual(h["grpc-status"], "13")  # INTERNAL
                self.assertIn("truncated", h["grpc-message"])
            self.assert_still_serving(v)

    # ------------------------------------------------------------------ CORS

    def test_cors_preflight(self):
        for v in self.each_version():
            status, h, body = self.curl_raw(v, "/echo.Echo/Echo", None, {
                "origin": "https://app.example", "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web"}, method="OPTIONS")
            self.assertEqual(status, 200)
            self.assertEqual(h["access-control-allow-origin"], "https://app.example")
            self.assertEqual(h["access-control-allow-methods"], "POST, OPTIONS")
            self.assertEqual(h["access-control-allow-headers"], "content-type, x-grpc-web, x-user-agent, grpc-timeout")
            self.assertEqual(h["access-control-max-age"], "600")
            self.assertEqual(h["access-control-allow-credentials"], "true")
            self.assertEqual(body, b"")

    def test_cors_actual_request_headers(self):
        for v in self.each_version():
            status, h, body = self.curl(v, "/echo.Echo/Echo", frame(pb.EchoRequest(text="c")),
                                        extra={"origin": "https://app.example", "x-grpc-web": "1"})
            self.assertEqual(status, 200)
            self.assertEqual(h["access-control-allow-origin"], "https://app.example")
            self.assertEqual(h["access-control-expose-headers"], "grpc-status, grpc-message")
            self.assertEqual(h["access-control-allow-credentials"], "true")
            status, h, _ = self.curl(v, "/echo.Echo/Echo", frame(pb.EchoRequest(text="c")),
                                     extra={"origin": "https://evil.example"})
            self.assertEqual(status, 200)
            self.assertNotIn("access-control-allow-origin", h)
