#!/usr/bin/python3
"""Generate the Python gRPC stubs for the Greeter example into gen/ (gitignored).

    /usr/bin/python3 examples/grpc-greeter/gen_stubs.py [--force]

Idempotent: does nothing when every generated file is newer than its .proto.
greeter_server.py and greeter_client.py call ensure() themselves, so running
this by hand is only needed to regenerate on purpose (`make example-stubs`).
"""
import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "protos")
GEN_DIR = os.path.join(HERE, "gen")
PROTOS = ["helloworld.proto"]


def _outputs(proto):
    base = os.path.splitext(proto)[0]
    return [base + "_pb2.py", base + "_pb2_grpc.py"]


def _up_to_date(proto):
    src = os.path.getmtime(os.path.join(PROTO_DIR, proto))
    for out in _outputs(proto):
        path = os.path.join(GEN_DIR, out)
        if not os.path.exists(path) or os.path.getmtime(path) < src:
            return False
    return True


def ensure(force=False, quiet=True):
    """Generate the stubs if needed and put gen/ on sys.path. Returns GEN_DIR."""
    stale = [p for p in PROTOS if force or not _up_to_date(p)]
    if stale:
        try:
            from grpc_tools import protoc
        except ImportError:
            sys.exit("gen_stubs: grpc_tools is missing; run with Debian's /usr/bin/python3 "
                     "(apt-get install python3-grpc-tools, or `make deps`)")
        os.makedirs(GEN_DIR, exist_ok=True)
        # Generate into a scratch folder and move the files in, so a concurrent run
        # never imports a half-written module.
        with tempfile.TemporaryDirectory(dir=GEN_DIR, prefix=".tmp-") as tmp:
            for proto in stale:
                rc = protoc.main(["grpc_tools.protoc", "-I" + PROTO_DIR,
                                  "--python_out=" + tmp, "--grpc_python_out=" + tmp,
                                  os.path.join(PROTO_DIR, proto)])
                if rc != 0:
                    sys.exit("gen_stubs: protoc failed on %s (exit %d)" % (proto, rc))
                for out in _outputs(proto):
                    os.replace(os.path.join(tmp, out), os.path.join(GEN_DIR, out))
                if not quiet:
                    print("gen_stubs: generated %s -> %s" % (proto, os.path.relpath(GEN_DIR)))
    elif not quiet:
        print("gen_stubs: stubs in %s are up to date" % os.path.relpath(GEN_DIR))
    if GEN_DIR not in sys.path:
        sys.path.insert(0, GEN_DIR)
    return GEN_DIR


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    ap.add_argument("--clean", action="store_true", help="remove gen/ and exit")
    args = ap.parse_args()
    if args.clean:
        shutil.rmtree(GEN_DIR, ignore_errors=True)
        return
    ensure(force=args.force, quiet=False)


if __name__ == "__main__":
    main()
