#!/usr/bin/python3
"""The Greeter server of examples/grpc-greeter, serving TLS (with ALPN h2, as every
grpcio TLS server does): the upstream nuncio originates TLS to.

    /usr/bin/python3 examples/grpc-greeter-tls/greeter_server_tls.py [--port 50052]
        [--cert certs/upstream.crt] [--key certs/upstream.key] [--client-ca certs/ca.crt]

--client-ca also requires a client certificate signed by that CA (mutual TLS):
then the TLSContext "upstream" needs cert_chain_file and private_key_file too.
"""
import argparse
import os
import signal
import sys
import threading
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
# The Greeter servicer and the stubs come from the cleartext example.
sys.path.insert(0, os.path.join(HERE, "..", "grpc-greeter"))
import gen_stubs  # noqa: E402

gen_stubs.ensure()
import grpc  # noqa: E402
import helloworld_pb2_grpc  # noqa: E402
from greeter_server import Greeter  # noqa: E402


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.exit("greeter_server_tls: cannot read %s: %s (run make_certs.sh first)" % (path, e.strerror))


def main():
    certs = os.path.join(HERE, "certs")
    ap = argparse.ArgumentParser(description="helloworld.Greeter server over TLS")
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cert", default=os.path.join(certs, "upstream.crt"), help="certificate chain (PEM)")
    ap.add_argument("--key", default=os.path.join(certs, "upstream.key"), help="private key (PEM)")
    ap.add_argument("--client-ca", help="require client certificates signed by this CA (PEM)")
    args = ap.parse_args()

    # The guide's "couple of lines": the key and certificate, then a secure port.
    server_credentials = grpc.ssl_server_credentials(
        [(read(args.key), read(args.cert))],
        root_certificates=read(args.client_ca) if args.client_ca else None,
        require_client_auth=bool(args.client_ca))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    address = "%s:%d" % (args.host, args.port)
    try:
        if server.add_secure_port(address, server_credentials) == 0:
            raise RuntimeError("bind failed")
    except RuntimeError:
        sys.exit("greeter_server_tls: cannot listen on %s (port in use?)" % address)
    server.start()

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print("greeter_server_tls: serving helloworld.Greeter over TLS on %s%s"
          % (address, " (client certificates required)" if args.client_ca else ""), flush=True)
    stopped.wait()
    server.stop(grace=1).wait()
    print("greeter_server_tls: stopped", flush=True)


if __name__ == "__main__":
    main()
