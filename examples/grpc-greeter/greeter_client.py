#!/usr/bin/python3
"""Call helloworld.Greeter through a target (nuncio by default) and print the reply.

    /usr/bin/python3 examples/grpc-greeter/greeter_client.py [--target localhost:8080]
        [--name you] [--stream] [--method /pkg.Service/Method]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_stubs  # noqa: E402

gen_stubs.ensure()
import grpc  # noqa: E402
import helloworld_pb2  # noqa: E402
import helloworld_pb2_grpc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="helloworld.Greeter client")
    ap.add_argument("--target", default="localhost:8080", help="host:port to call (default: nuncio on 8080)")
    ap.add_argument("--name", default="you")
    ap.add_argument("--stream", action="store_true", help="call SayHelloStreamReply (server streaming)")
    ap.add_argument("--method", help="call this full method path with a HelloRequest instead "
                    "(e.g. /helloworld.Nowhere/SayHello to see UNIMPLEMENTED)")
    ap.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    args = ap.parse_args()

    request = helloworld_pb2.HelloRequest(name=args.name)
    with grpc.insecure_channel(args.target) as channel:
        try:
            if args.method:
                call = channel.unary_unary(args.method,
                                           request_serializer=helloworld_pb2.HelloRequest.SerializeToString,
                                           response_deserializer=helloworld_pb2.HelloReply.FromString)
                print("Greeter client received: " + call(request, timeout=args.timeout).message)
            elif args.stream:
                stub = helloworld_pb2_grpc.GreeterStub(channel)
                for reply in stub.SayHelloStreamReply(request, timeout=args.timeout):
                    print("Greeter client received: " + reply.message)
            else:
                stub = helloworld_pb2_grpc.GreeterStub(channel)
                print("Greeter client received: " + stub.SayHello(request, timeout=args.timeout).message)
        except grpc.RpcError as e:
            print("Greeter client failed: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
