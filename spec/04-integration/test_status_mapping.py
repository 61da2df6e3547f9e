"""An upstream that answers a gRPC call with plain HTTP (a misconfigured or
non-gRPC service): nuncio turns the answer into the grpc-status of the gRPC
HTTP-to-gRPC table (behaviour notes §7.3), with a grpc-message naming the HTTP
status. The upstream here is nuncio-h2record, which answers with the status a
request asks for in `x-h2record-status`.

Run by ctest as `/usr/bin/python3 -m unittest -v test_status_mapping` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan).
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import BIN, CALL_TIMEOUT, NuncioTestCase, mapping, stubs  # noqa: E402

S = stubs()
hw, hw_grpc = S.helloworld_pb2, S.helloworld_pb2_grpc


class StatusMappingTest(NuncioTestCase):

    @classmethod
    def setUpClass(cls):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        rec = os.path.join(os.path.dirname(BIN), "nuncio-h2record")
        cls.rec = subprocess.Popen([rec, "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        cls.addClassCleanup(cls.stop_recorder)
        line = cls.rec.stdout.readline().decode()
        if not line.startswith("PORTS "):
            raise RuntimeError("nuncio-h2record did not start: %r" % line)
        cls.start_proxy([mapping("rec", "/helloworld.Greeter/", "127.0.0.1:%s" % line.split()[1])])

    @classmethod
    def stop_recorder(cls):
        cls.rec.stdin.close()  # h2record exits when its stdin closes
        cls.rec.wait(10)
        cls.rec.stdout.close()

    def call(self, status=None):
        md = [("x-h2record-status", status)] if status else []
        with self.proxy.channel() as channel:
            return hw_grpc.GreeterStub(channel).SayHello(hw.HelloRequest(name="x"), timeout=CALL_TIMEOUT,
                                                         metadata=md)

    def test_a_grpc_answer_passes(self):
        self.assertEqual(self.call().message, "")  # h2record's empty message, grpc-status 0

    def test_http_errors_map_to_grpc_statuses(self):
        for http, code in (("502", grpc.StatusCode.UNAVAILABLE), ("503", grpc.StatusCode.UNAVAILABLE),
                           ("404", grpc.StatusCode.UNIMPLEMENTED), ("401", grpc.StatusCode.UNAUTHENTICATED),
                           ("403", grpc.StatusCode.PERMISSION_DENIED), ("400", grpc.StatusCode.INTERNAL),
                           ("500", grpc.StatusCode.UNKNOWN)):
            with self.assertRaises(grpc.RpcError) as cm:
                self.call(http)
            self.assertRpcCode(cm, code, "upstream answered HTTP %s" % http)
        self.proxy.wait_stats(live_streams=0)

    def test_200_without_grpc_content_type_is_unknown(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call("200")
        self.assertRpcCode(cm, grpc.StatusCode.UNKNOWN, "without a gRPC content-type")


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
