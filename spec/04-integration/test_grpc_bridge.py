"""Module enable_grpc_http11_bridge (behaviour notes §5.2, Envoy's grpc_http1_bridge):
an HTTP/1.1 client speaking application/grpc, which cannot read trailers, gets
the whole response at once with grpc-status / grpc-message in the headers,
content-length set, and HTTP 503 when the call failed. Without the Module key
the same client gets the gRPC response as it is (chunked, status in trailers).

Clients: curl --http1.1 with a length-prefixed request body; upstream: the
harness's real grpcio Echo server.
"""
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))
from nuncio_fixture import CALL_TIMEOUT, NuncioTestCase, mapping, stubs  # noqa: E402

echo = stubs().echo_pb2

MODULE = """---
apiVersion: getambassador.io/v3alpha1
kind: Module
metadata: {name: ambassador}
spec:
  config:
    enable_grpc_http11_bridge: true
"""


def framed(message):
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def curl_grpc(port, path, message):
    """POST over HTTP/1.1 -> (status, headers {name: value}, body bytes, raw head text)."""
    with tempfile.TemporaryDirectory() as d:
        req, head, out = (os.path.join(d, n) for n in ("req", "head", "out"))
        with open(req, "wb") as f:
            f.write(framed(message))
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        subprocess.run(["curl", "-sS", "--http1.1", "--raw", "-o", out, "-D", head, "--data-binary", "@" + req,
                        "-H", "content-type: application/grpc", "-H", "te: trailers",
                        "http://127.0.0.1:%d%s" % (port, path)], check=True, timeout=CALL_TIMEOUT, env=env)
        with open(head, "rb") as f:
            text = f.read().decode("latin-1")
        with open(out, "rb") as f:
            body = f.read()
    lines = [l for l in text.split("\r\n") if l]
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body, text


def reply_frame(text):
    return framed(echo.EchoReply(text=text))


class GrpcBridgeTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)], docs=[MODULE])

    def test_a_successful_call_comes_whole_with_grpc_status_in_the_headers(self):
        status, headers, body, head = curl_grpc(self.proxy.port, "/echo.Echo/Echo", echo.EchoRequest(text="hi"))
        self.assertEqual(status, 200, head)
        self.assertEqual(headers.get("grpc-status"), "0", head)
        self.assertEqual(headers.get("content-length"), str(len(body)), head)
        self.assertNotIn("transfer-encoding", headers)
        self.assertEqual(body, reply_frame("hi"))

    def test_a_failed_call_is_503_with_status_and_message(self):
        # the server sends its headers first, then fails: the status arrives in trailers
        status, headers, body, head = curl_grpc(self.proxy.port, "/echo.Echo/Echo",
                                                echo.EchoRequest(text="status:7:not for you"))
        self.assertEqual(status, 503, head)
        self.assertEqual(headers.get("grpc-status"), "7", head)
        self.assertEqual(headers.get("grpc-message"), "not for you")
        self.assertEqual(headers.get("x-it-header"), "h1", "the server's own headers stay")
        self.assertEqual(headers.get("content-length"), "0")
        self.assertEqual(body, b"")

    def test_a_local_reply_passes_as_it_is(self):
        status, headers, body, head = curl_grpc(self.proxy.port, "/nowhere.Svc/M", echo.EchoRequest(text="x"))
        self.assertEqual(status, 200, head)  # trailers-only: Envoy's bridge lets it through unchanged
        self.assertEqual(headers.get("grpc-status"), "12", head)


class WithoutBridgeTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream()
        cls.start_proxy([mapping("echo", "/echo.Echo/", cls.up.address)])

    def test_without_the_module_key_the_status_stays_in_chunked_trailers(self):
        status, headers, body, head = curl_grpc(self.proxy.port, "/echo.Echo/Echo",
                                                echo.EchoRequest(text="status:7:not for you"))
        self.assertEqual(status, 200, head)
        self.assertNotIn("grpc-status", headers)
        self.assertEqual(headers.get("transfer-encoding"), "chunked", head)
        # --raw keeps the chunked framing: the trailer section carries the status
        self.assertIn(b"grpc-status: 7\r\n", body)


if __name__ == "__main__":
    import unittest
    unittest.main()
