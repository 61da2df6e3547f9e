"""The standard gRPC interop test cases (grpc's doc/interop-test-descriptions.md),
server and client in Python grpcio (spec/04-integration/interop/), run twice:
direct (client -> interop server) and through nuncio (client -> proxy -> the
same kind of server). A case that fails only through nuncio is the proxy's fault.

Run by ctest as `/usr/bin/python3 -m unittest -v test_interop` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (and NUNCIO_SANITIZE=1) set.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from interop.cases import CASES  # noqa: E402
from interop.server import InteropServer  # noqa: E402
from nuncio_fixture import GRPC_MSG_OPTIONS, NuncioTestCase, mapping  # noqa: E402

TEST_SERVICE = "/grpc.testing.TestService/"
UNIMPLEMENTED_SERVICE = "/grpc.testing.UnimplementedService/"

# Cases whose UNIMPLEMENTED must come from the interop server itself (not from
# a proxy's own "no route" reply): the server must have been asked for them.
MUST_REACH_SERVER = {
    "unimplemented_method": TEST_SERVICE + "UnimplementedCall",
    "unimplemented_service": UNIMPLEMENTED_SERVICE + "UnimplementedCall",
}


def _case_test(name, fn):
    def test(self):
        fn(self.channel, self)
        path = MUST_REACH_SERVER.get(name)
        if path is not None:
            self.assertIn(path, self.server.methods_seen(), "the interop server was never asked for %s" % path)
    test.__doc__ = "interop case %s" % name
    return test


class _InteropCases(NuncioTestCase):
    """Every subclass gets one test per interop case, test_NN_<case> (NN keeps the
    document's order), run over self.channel() against cls.server."""

    server = None

    def __init_subclass__(cls, **kwargs):
        # Added before NuncioTestCase.__init_subclass__ so that failures carry the proxy log.
        for i, (name, fn) in enumerate(CASES.items(), 1):
            setattr(cls, "test_%02d_%s" % (i, name), _case_test(name, fn))
        super().__init_subclass__(**kwargs)

    @classmethod
    def start_server(cls):
        server = InteropServer()
        cls.addClassCleanup(server.stop)
        cls.server = server
        return server

    def setUp(self):
        super().setUp()
        self.channel = self.open_channel()
        self.addCleanup(self.channel.close)


class InteropDirectTest(_InteropCases):
    """client -> interop server."""

    @classmethod
    def setUpClass(cls):
        cls.start_server()

    def open_channel(self):
        return grpc.insecure_channel(self.server.address, options=GRPC_MSG_OPTIONS)


class InteropThroughNuncioTest(_InteropCases):
    """client -> nuncio -> interop server."""

    @classmethod
    def setUpClass(cls):
        server = cls.start_server()
        cls.start_proxy([
            mapping("interop-test-service", TEST_SERVICE, server.address, rewrite=TEST_SERVICE),
            mapping("interop-unimplemented-service", UNIMPLEMENTED_SERVICE, server.address,
                    rewrite=UNIMPLEMENTED_SERVICE),
        ])

    def open_channel(self):
        return self.proxy.channel(GRPC_MSG_OPTIONS)


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
