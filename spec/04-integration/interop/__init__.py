"""nuncio's implementation of the standard gRPC interop test cases
(grpc's doc/interop-test-descriptions.md) in Python grpcio.

* stubs()            -> namespace with empty_pb2, messages_pb2, test_pb2, test_pb2_grpc,
                        generated once per process from the .proto files next to this
                        file into a temp dir with grpc_tools.protoc.
* server.InteropServer -> a grpc.server with grpc.testing.TestService (server.py).
* cases.CASES        -> ordered {name: case(channel, testcase)} (cases.py).
"""
import atexit
import os
import shutil
import sys
import tempfile
import threading
import types

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ("empty.proto", "messages.proto", "test.proto")

_stubs = None
_lock = threading.Lock()


def stubs():
    global _stubs
    with _lock:
        if _stubs is None:
            from grpc_tools import protoc
            out = tempfile.mkdtemp(prefix="nuncio-interop-stubs-")
            atexit.register(shutil.rmtree, out, True)
            rc = protoc.main(["grpc_tools.protoc", "-I" + HERE, "--python_out=" + out, "--grpc_python_out=" + out]
                             + [os.path.join(HERE, p) for p in PROTOS])
            if rc != 0:
                raise RuntimeError("protoc failed on %s (exit %d)" % (", ".join(PROTOS), rc))
            sys.path.insert(0, out)
            import empty_pb2
            import messages_pb2
            import test_pb2
            import test_pb2_grpc
            _stubs = types.SimpleNamespace(empty_pb2=empty_pb2, messages_pb2=messages_pb2, test_pb2=test_pb2,
                                           test_pb2_grpc=test_pb2_grpc)
    return _stubs
