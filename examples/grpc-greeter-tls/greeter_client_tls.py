#!/usr/bin/python3
"""Call helloworld.Greeter over TLS (nuncio's HTTPS listener by default) and print the reply.

    /usr/bin/python3 examples/grpc-greeter-tls/greeter_client_tls.py [--target localhost:8443]
        [--ca certs/ca.crt] [--server-name NAME] [--name you] [--stream]
        [--cert client.crt --key client.key]

--server-name: the name to send as SNI and to check the certificate against
(grpc.ssl_target_name_override), when it is not the host of --target.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "grpc-greeter"))
import gen_stubs  # noqa: E402

gen_stubs.ensure()
import grpc  # noqa: E402
import helloworld_pb2  # noqa: E402
import helloworld_pb2_grpc  # noqa: E402


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.exit("greeter_client_tls: cannot read %s: %s (run make_certs.sh first)" % (path, e.strerror))


def main():
    ap = argparse.ArgumentParser(description="helloworld.Greeter client over TLS")
    ap.add_argument("--target", default="localhost:8443", help="host:port to call (default: nuncio on 8443)")
    ap.add_argument("--ca", default=os.path.join(HERE, "certs", "ca.crt"),
                    help="CA to verify the server with (PEM); 'system' for the system's roots")
    ap.add_argument("--server-name", help="SNI and the name the certificate must carry (default: host of --target)")
    ap.add_argument("--cert", help="client certificate (PEM), for listeners with cert_required")
    ap.add_argument("--key", help="client private key (PEM)")
    ap.add_argument("--name", default="you")
    ap.add_argument("--stream", action="store_true", help="call SayHelloStreamReply (server streaming)")
    ap.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    args = ap.parse_args()

    # The guide's secure channel: ssl_channel_credentials with our own root certificate.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=None if args.ca == "system" else read(args.ca),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None)
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    request = helloworld_pb2.HelloRequest(name=args.name)
    with grpc.secure_channel(args.target, credentials, options=options) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        try:
            if args.stream:
                for reply in stub.SayHelloStreamReply(request, timeout=args.timeout):
                    print("Greeter client received: " + reply.message)
            else:
                print("Greeter client received: " + stub.SayHello(request, timeout=args.timeout).message)
        except grpc.RpcError as e:
            print("Greeter client failed: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
