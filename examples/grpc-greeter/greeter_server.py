#!/usr/bin/python3
"""The gRPC Greeter server of the example (helloworld.Greeter on 127.0.0.1).

    /usr/bin/python3 examples/grpc-greeter/greeter_server.py [--port 50051]
"""
import argparse
import os
import signal
import sys
import threading
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_stubs  # noqa: E402

gen_stubs.ensure()
import grpc  # noqa: E402
import helloworld_pb2  # noqa: E402
import helloworld_pb2_grpc  # noqa: E402

STREAM_REPLIES = 5


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    def SayHello(self, request, context):
        return helloworld_pb2.HelloReply(message="Hello, %s!" % request.name)

    def SayHelloStreamReply(self, request, context):
        for i in range(1, STREAM_REPLIES + 1):
            yield helloworld_pb2.HelloReply(message="Hello %d of %d, %s!" % (i, STREAM_REPLIES, request.name))

    def SayHelloBidiStream(self, request_iterator, context):
        for request in request_iterator:
            yield helloworld_pb2.HelloReply(message="Hello, %s!" % request.name)


def main():
    ap = argparse.ArgumentParser(description="helloworld.Greeter server")
    ap.add_argument("--port", type=int, default=50051)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    address = "%s:%d" % (args.host, args.port)
    try:
        if server.add_insecure_port(address) == 0:
            raise RuntimeError("bind failed")
    except RuntimeError:
        sys.exit("greeter_server: cannot listen on %s (port in use?)" % address)
    server.start()

    stopped = threading.Event()

    def on_signal(signum, _frame):
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("greeter_server: serving helloworld.Greeter on %s" % address, flush=True)
    stopped.wait()
    server.stop(grace=1).wait()
    print("greeter_server: stopped", flush=True)


if __name__ == "__main__":
    main()
