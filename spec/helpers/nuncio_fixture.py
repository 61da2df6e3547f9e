"""Shared harness for nuncio's integration tests (spec/04-integration).

Everything runs for real: grpcio servers in this process on 127.0.0.1, the
nuncio binary ($NUNCIO_BIN) as a child process on free ports, grpcio clients.

    from nuncio_fixture import Nuncio, Upstream, NuncioTestCase, stubs

* stubs()          -> namespace with helloworld_pb2(_grpc) and echo_pb2(_grpc),
                      generated once per process into a temp dir.
* Upstream(...)    -> a grpc.server on 127.0.0.1:<ephemeral> with the test
                      Greeter and Echo servicers; records every call it gets.
                      tls=(key_pem, cert_pem) serves TLS (ALPN h2), client_ca=
                      requires a client certificate signed by that CA.
* Nuncio(...)      -> writes Ambassador YAML + a native config into a temp dir,
                      starts the proxy, waits for admin /ready; .stats(),
                      .wait_stats(), .channel(), .tls_channel(), .log(), .stop()
                      (asserts exit 0: under ASan that is the leak check).
                      docs= adds raw resources (Secrets, Hosts, TLSContexts,
                      Listeners); default_listener= / default_host= /
                      listener_protocol= shape the default Listener and Host.
* secret(), host(), listener(), tls_context() -> resource dicts for docs=;
  tls_channel(), s_client() -> TLS clients (grpcio, `openssl s_client`).
* NuncioTestCase   -> unittest.TestCase whose every failure or error message
                      carries the proxy log of the test.
* H2Client(port)   -> a minimal raw HTTP/2 client (headers sent literally, even
                      forbidden ones; a small window credited on demand, for
                      slow readers); grpc_frame() frames a gRPC message.

Nothing here sleeps to synchronize: readiness and settling are polled against a
deadline, and servers signal with threading.Event.
"""
import base64
import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("NUNCIO_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("NUNCIO_BIN") or os.path.join(SRC, "build", "nuncio")
SANITIZE = os.environ.get("NUNCIO_SANITIZE") == "1"

# Deadlines: generous under ASan, which is several times slower.
SLOW = 3 if SANITIZE else 1
START_TIMEOUT = 15 * SLOW
STOP_TIMEOUT = 30 * SLOW
SETTLE_TIMEOUT = 10 * SLOW
CALL_TIMEOUT = 20 * SLOW

MiB = 1024 * 1024
MAX_MESSAGE = 16 * MiB
GRPC_MSG_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                    ("grpc.max_receive_message_length", MAX_MESSAGE)]

LOG_MARK = "---- nuncio log"
# The proxy's log_level in the tests (NUNCIO_IT_LOG_LEVEL=debug to see more on a failure).
LOG_LEVEL = os.environ.get("NUNCIO_IT_LOG_LEVEL") or "info"


# --------------------------------------------------------------------------- stubs

_stubs = None
_stubs_lock = threading.Lock()


_PROTOS = ((os.path.join(SRC, "examples", "grpc-greeter", "protos"), "helloworld.proto"),
           (os.path.join(SRC, "spec", "04-integration", "protos"), "echo.proto"))


def _stubs_dir():
    """The generated stubs' folder, shared by every test process: named after the protos and
    grpcio's version, made once (in a scratch folder renamed into place, so racing processes
    never see half of it) and kept. A folder per process, removed at exit, was left behind by
    every helper server a test stopped with a signal."""
    import hashlib
    h = hashlib.sha256(grpc.__version__.encode())
    for proto_dir, proto in _PROTOS:
        with open(os.path.join(proto_dir, proto), "rb") as f:
            h.update(f.read())
    out = os.path.join(tempfile.gettempdir(), "nuncio-stubs-" + h.hexdigest()[:16])
    if os.path.isfile(os.path.join(out, "echo_pb2_grpc.py")):
        return out
    from grpc_tools import protoc
    scratch = tempfile.mkdtemp(prefix="nuncio-stubs-new-")
    try:
        for proto_dir, proto in _PROTOS:
            rc = protoc.main(["grpc_tools.protoc", "-I" + proto_dir, "--python_out=" + scratch,
                              "--grpc_python_out=" + scratch, os.path.join(proto_dir, proto)])
            if rc != 0:
                raise RuntimeError("protoc failed on %s/%s (exit %d)" % (proto_dir, proto, rc))
        try:
            os.rename(scratch, out)
        except OSError:
            pass  # another process put it there first: use that one
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def stubs():
    """Generates (once per process) and imports the Python stubs of
    examples/grpc-greeter/protos/helloworld.proto and spec/04-integration/protos/echo.proto."""
    global _stubs
    with _stubs_lock:
        if _stubs is None:
            sys.path.insert(0, _stubs_dir())
            import echo_pb2
            import echo_pb2_grpc
            import helloworld_pb2
            import helloworld_pb2_grpc
            _stubs = types.SimpleNamespace(helloworld_pb2=helloworld_pb2, helloworld_pb2_grpc=helloworld_pb2_grpc,
                                           echo_pb2=echo_pb2, echo_pb2_grpc=echo_pb2_grpc)
    return _stubs


# --------------------------------------------------------------------------- ports

_handed_out = set()


def free_port():
    """A TCP port nobody listens on right now (bind port 0, close). Racy by nature:
    Nuncio.start() retries with new ports when the proxy cannot bind. Never the
    same port twice in one process: the kernel may hand a closed port out again
    at once, and a port kept free on purpose (a dead endpoint) must not become
    the proxy's own listener."""
    while True:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- upstream

class _Recorder(grpc.ServerInterceptor):
    def __init__(self, upstream):
        self.upstream = upstream

    def intercept_service(self, continuation, details):
        with self.upstream.lock:
            self.upstream.calls.append((details.method, dict(details.invocation_metadata)))
        return continuation(details)


class Greeter:
    """helloworld.Greeter for tests: SayHelloStreamReply sends STREAM_REPLIES replies."""
    STREAM_REPLIES = 50

    def __init__(self, upstream):
        self.upstream = upstream

    def SayHello(self, request, context):
        with self.upstream.lock:
            self.upstream.peers.add(context.peer())
            # transport_security_type (b"ssl" over TLS), x509_common_name of a client cert, ...
            self.upstream.auth.append({k: [v.decode("utf-8", "replace") for v in vs]
                                       for k, vs in context.auth_context().items()})
        return stubs().helloworld_pb2.HelloReply(message="Hello, %s!" % request.name)

    def SayHelloStreamReply(self, request, context):
        pb = stubs().helloworld_pb2
        for i in range(self.STREAM_REPLIES):
            yield pb.HelloReply(message="Hello %d, %s!" % (i, request.name))

    def SayHelloBidiStream(self, request_iterator, context):
        pb = stubs().helloworld_pb2
        for request in request_iterator:
            yield pb.HelloReply(message="Hello, %s!" % request.name)


_STATUS_BY_VALUE = {sc.value[0]: sc for sc in grpc.StatusCode}


class Echo:
    """echo.Echo (spec/04-integration/protos/echo.proto). Calls with a tag get an
    Event in upstream.ended[tag], set by a context callback when the RPC ends on
    the server (completed, cancelled or reset)."""

    def __init__(self, upstream):
        self.upstream = upstream

    def _track(self, tag, context):
        if tag:
            context.add_callback(self.upstream.ended_event(tag).set)

    def Echo(self, request, context):
        # "status:<code>:<message>" -> the call fails with that status, and
        # response headers / trailers a test can look for.
        if request.text.startswith("status:"):
            _, code, message = request.text.split(":", 2)
            context.send_initial_metadata([("x-it-header", "h1")])
            context.set_trailing_metadata([("x-it-trailer", "t1")])
            context.abort(_STATUS_BY_VALUE[int(code)], message)
        return stubs().echo_pb2.EchoReply(text=request.text, payload=request.payload)

    def Collect(self, request_iterator, context):
        texts = [r.text for r in request_iterator]
        return stubs().echo_pb2.EchoReply(text=",".join(texts), index=len(texts))

    def Expand(self, request, context):
        pb = stubs().echo_pb2
        self._track(request.tag, context)
        pause = threading.Event()  # never set: paces the stream (interval_ms), not a synchronization
        i = 0
        while request.count == 0 or i < request.count:
            if request.die_after and i == request.die_after:
                # The upstream dies mid-stream: stop(None) cancels every call at
                # once (grpc sends trailers with grpc-status 14 "Cancelling all
                # calls", then RST_STREAM) and shuts the server down (GOAWAY, close).
                self.upstream.died.set()
                self.upstream.server.stop(None)
                return
            if not context.is_active():
                return
            yield pb.EchoReply(text="%s %d" % (request.text, i), index=i)
            i += 1
            if request.interval_ms:
                pause.wait(request.interval_ms / 1000.0)

    def Chat(self, request_iterator, context):
        pb = stubs().echo_pb2
        for i, request in enumerate(request_iterator):
            if i == 0:
                self._track(request.tag, context)
            yield pb.EchoReply(text=request.text, payload=request.payload, index=i)


class Upstream:
    """A real grpcio server (thread pool) on 127.0.0.1 with Greeter and Echo.
    tls=(key_pem, cert_pem) (bytes): serve TLS instead (grpc ssl_server_credentials,
    ALPN h2); client_ca=pem: also require a client certificate signed by it."""

    def __init__(self, workers=32, port=0, tls=None, client_ca=None, max_concurrent_streams=None):
        s = stubs()
        self.lock = threading.Lock()
        self.calls = []          # (method path the server saw, metadata dict)
        self.peers = set()       # context.peer() of SayHello calls (one per upstream connection)
        self.auth = []           # auth_context() of SayHello calls, as {name: [str]}
        self.ended = {}          # tag -> threading.Event
        self.died = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  interceptors=[_Recorder(self)],
                                  options=list(GRPC_MSG_OPTIONS) + ([("grpc.max_concurrent_streams",
                                                                      max_concurrent_streams)]
                                                                    if max_concurrent_streams else []))
        s.helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(self), self.server)
        s.echo_pb2_grpc.add_EchoServicer_to_server(Echo(self), self.server)
        # grpcio binds with SO_REUSEPORT, so a second Upstream may share a port
        # with a first one that is about to stop (an upstream restart).
        self.tls = tls is not None
        if tls is not None:
            creds = grpc.ssl_server_credentials([tuple(tls)], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            self.port = self.server.add_secure_port("127.0.0.1:%d" % port, creds)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:%d" % port)
        if not self.port:
            raise RuntimeError("the upstream grpc server could not bind 127.0.0.1:%d" % port)
        self.server.start()
        self.address = "127.0.0.1:%d" % self.port

    def ended_event(self, tag):
        with self.lock:
            return self.ended.setdefault(tag, threading.Event())

    def methods_seen(self):
        with self.lock:
            return [m for m, _ in self.calls]

    def calls_to(self, method):
        with self.lock:
            return [md for m, md in self.calls if m == method]

    def stop(self):
        self.server.stop(0).wait(5)


class UpstreamProcess:
    """The same Upstream in a child process (this file run as a script), so a test
    can SIGKILL it: the upstream dies without sending anything more. The child
    prints its port, then serves until its stdin closes (it never outlives us)."""

    def __init__(self, log_path):
        self.log_path = log_path
        log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        finally:
            log.close()
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = b""
        if sel.select(START_TIMEOUT):
            line = self.proc.stdout.readline()
        sel.close()
        if not line.startswith(b"PORT "):
            self.kill()
            with open(log_path, "rb") as f:
                raise RuntimeError("the upstream process did not start: %r\n%s" % (line, f.read().decode()))
        self.port = int(line.split()[1])
        self.address = "127.0.0.1:%d" % self.port

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if not pipe.closed:
                pipe.close()


def _serve_main():
    up = Upstream()
    sys.stdout.write("PORT %d\n" % up.port)
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    up.stop()


# --------------------------------------------------------------------------- config

def _q(value):
    """A YAML scalar: JSON strings and numbers are valid YAML 1.1 flow scalars."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _yaml_block(d, indent):
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append("%s%s:" % (" " * indent, k))
            lines.extend(_yaml_block(v, indent + 2))
        else:
            lines.append("%s%s: %s" % (" " * indent, k, _q(v)))
    return lines


def mapping(name, prefix, service, rewrite=None, **extra):
    """An Emissary Mapping (v3alpha1) routed on every host. rewrite defaults to the prefix."""
    spec = {"hostname": "*", "prefix": prefix, "rewrite": prefix if rewrite is None else rewrite,
            "grpc": True, "service": service, "timeout_ms": 60000}
    spec.update(extra)
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Mapping",
            "metadata": {"name": name}, "spec": spec}


def listener(name, port, protocol="HTTPS", security_model="XFP", **extra):
    """An Emissary Listener on 127.0.0.1:port (hostBinding: every namespace)."""
    spec = {"port": port, "protocol": protocol, "securityModel": security_model, "bind_address": "127.0.0.1",
            "hostBinding": {"namespace": {"from": "ALL"}}}
    spec.update(extra)
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Listener", "metadata": {"name": name},
            "spec": spec}


def host(name, hostname, tls_secret=None, insecure=None, **extra):
    """An Emissary Host. tls_secret: a Secret name (tlsSecret.name); insecure: the
    requestPolicy.insecure.action (Redirect / Route / Reject), omitted when None."""
    spec = {"hostname": hostname}
    if tls_secret is not None:
        spec["tlsSecret"] = {"name": tls_secret}
    if insecure is not None:
        spec["requestPolicy"] = {"insecure": {"action": insecure}}
    spec.update(extra)
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "Host", "metadata": {"name": name}, "spec": spec}


def tls_context(name, **spec):
    """An Emissary TLSContext with these spec fields (hosts=[...], cert_chain_file=...,
    alpn_protocols="h2", sni=..., cacert_chain_file=..., cert_required=True, ...)."""
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": "TLSContext", "metadata": {"name": name},
            "spec": dict(spec)}


def secret(name, cert_pem=None, key_pem=None, crt_b64=None, key_b64=None):
    """A Kubernetes Secret of type kubernetes.io/tls with base64 data tls.crt / tls.key.
    crt_b64 / key_b64 give the data fields verbatim (to write a broken one)."""
    def b64(pem):
        return base64.b64encode(pem if isinstance(pem, bytes) else pem.encode()).decode("ascii")
    data = {"tls.crt": crt_b64 if crt_b64 is not None else b64(cert_pem)}
    if key_b64 is not None or key_pem is not None:
        data["tls.key"] = key_b64 if key_b64 is not None else b64(key_pem)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/tls", "data": data}


def _render(doc):
    """One YAML document: a dict (rendered as block YAML) or raw YAML text."""
    if isinstance(doc, str):
        text = doc.strip("\n")
        if text.startswith("---"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        return "---\n" + text + "\n"
    return "---\n" + "\n".join(_yaml_block(doc, 0)) + "\n"


def ambassador_yaml(listener_port, mappings, docs=(), default_listener=True, default_host=True,
                    listener_protocol="HTTP"):
    """The Ambassador file the harness writes: a Listener "it-listener" on
    127.0.0.1:listener_port (protocol listener_protocol, securityModel XFP) unless
    default_listener is false, a Host "it-host" (hostname "*", insecure Route) unless
    default_host is false, the mappings, then docs (dicts or raw YAML text)."""
    out = []
    if default_listener:
        out.append(listener("it-listener", listener_port, protocol=listener_protocol))
    if default_host:
        out.append(host("it-host", "*", insecure="Route"))
    out.extend(mappings)
    out.extend(docs)
    return "".join(_render(d) for d in out)


def start_recorder(cls):
    """Starts tools/h2record (build/nuncio-h2record) with one recording port for
    a test class (stopped at class cleanup); returns its "127.0.0.1:port"."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    rec = subprocess.Popen([os.path.join(os.path.dirname(BIN), "nuncio-h2record"), "1"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, env=env)

    def stop():
        rec.stdin.close()  # h2record exits when its stdin closes
        rec.wait(10)
        rec.stdout.close()
    cls.addClassCleanup(stop)
    line = rec.stdout.readline().decode()
    if not line.startswith("PORTS "):
        raise RuntimeError("nuncio-h2record did not start: %r" % line)
    return "127.0.0.1:%s" % line.split()[1]


def native_yaml(admin_port, chain=None, lua_path=None, ambassador=("ambassador.yaml",), extra=None):
    """extra: more top-level keys, {key: value} (values written as JSON, which is YAML)."""
    extra = dict(extra or {})
    out = ["admin:", "  address: 127.0.0.1", "  port: %d" % admin_port,
           "log_level: %s" % extra.pop("log_level", LOG_LEVEL),
           "ambassador: [%s]" % ", ".join(_q(a) for a in ambassador)]
    # One worker unless a test asks for more: most suites check what one
    # worker's pools and balancers do with their connections.
    extra.setdefault("workers", 1)
    out.extend("%s: %s" % (k, json.dumps(v)) for k, v in extra.items())
    if lua_path:
        out.append("lua_path: [%s]" % ", ".join(_q(p) for p in lua_path))
    if chain:
        out.append("chain:")
        for entry in chain:
            out.append("  - name: %s" % _q(entry["name"]))
            if entry.get("config"):
                out.append("    config: %s" % json.dumps(entry["config"]))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- TLS clients

def tls_channel(address, root_certificates, name="localhost", client_cert=None, options=()):
    """A grpcio TLS channel to address ("127.0.0.1:port") that trusts root_certificates
    (PEM bytes) and expects a certificate for `name`, which is also the SNI it sends
    (grpc.ssl_target_name_override) and the :authority of its calls
    (grpc.default_authority, no port: what a client of port 443 sends). name=None
    keeps grpc's defaults. client_cert: (key_pem, cert_pem) or an entry of
    certs.certs() to present a client certificate."""
    key = cert = None
    if client_cert is not None:
        key, cert = ((client_cert.key_pem, client_cert.cert_pem) if hasattr(client_cert, "key_pem")
                     else tuple(client_cert))
    creds = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=key,
                                         certificate_chain=cert)
    options = list(options)
    if name is not None:
        options += [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
    return grpc.secure_channel(address, creds, options=options)


def s_client(port, servername=None, alpn=None, cafile=None, cert=None, key=None, verify_name=None, extra=(),
             timeout=CALL_TIMEOUT):
    """`openssl s_client -connect 127.0.0.1:port ... </dev/null`: one handshake, then
    stdin's EOF closes it. servername: the SNI (None: -noservername, no SNI at all);
    alpn: "h2" or "h2,http/1.1"; cafile: verify against it (see "Verify return code");
    cert/key: a client certificate; verify_name: -verify_hostname. Returns
    (exit status, stdout + stderr, the peer's certificate PEM or None)."""
    args = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port]
    args += ["-servername", servername] if servername else ["-noservername"]
    if alpn:
        args += ["-alpn", alpn]
    if cafile:
        args += ["-CAfile", cafile]
    if cert:
        args += ["-cert", cert, "-key", key]
    if verify_name:
        args += ["-verify_hostname", verify_name]
    args += list(extra)
    p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    pem = None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin in out and end in out:
        pem = out[out.index(begin):out.index(end) + len(end)] + "\n"
    return p.returncode, out, pem


# --------------------------------------------------------------------------- the proxy

class ProxyError(AssertionError):
    pass


class Nuncio:
    """The proxy under test. mappings: a list of mapping(...) dicts, or a function
    of nothing returning one (called for every start attempt). lua_files: {name.lua: text}
    written into a temp lua dir put on lua_path; chain: [{"name":..., "config":...}].

    docs: more resources after the mappings (dicts as secret()/host()/listener()/
    tls_context() make, or raw YAML text), or a function of this Nuncio returning them,
    called for every start attempt once .port / .ports are chosen.
    default_listener / default_host: write the harness's Listener on .port and its
    "*" Host with insecure Route (both by default); listener_protocol: that Listener's
    protocol ("HTTPS": TLS and cleartext on .port). extra_ports: names of more free
    ports to choose per attempt, found in .ports[name] (for Listeners in docs).
    native: more top-level keys of the native config, e.g. {"request_headers_timeout_ms": 300}."""

    def __init__(self, mappings, chain=None, lua_files=None, name="nuncio", docs=(), default_listener=True,
                 default_host=True, listener_protocol="HTTP", extra_ports=(), native=None):
        if not os.access(BIN, os.X_OK):
            raise ProxyError("NUNCIO_BIN %s is not an executable (build first)" % BIN)
        self.dir = tempfile.mkdtemp(prefix="nuncio-it-%s-" % name)
        self.log_path = os.path.join(self.dir, "nuncio.log")
        self.mappings = mappings
        self.chain = chain
        self.docs = docs
        self.default_listener = default_listener
        self.default_host = default_host
        self.listener_protocol = listener_protocol
        self.extra_ports = tuple(extra_ports)
        self.native = dict(native or {})
        self.ports = {}
        self.lua_dir = None
        if lua_files:
            self.lua_dir = os.path.join(self.dir, "lua")
            os.makedirs(self.lua_dir)
            for fname, text in lua_files.items():
                path = os.path.join(self.lua_dir, fname)
                os.makedirs(os.path.dirname(path), exist_ok=True)  # "nuncio/router.lua" replaces a bundled module
                with open(path, "w") as f:
                    f.write(text)
        self.proc = None
        self.port = self.admin_port = None
        self.returncode = None

    # -- lifecycle

    def start(self, attempts=5):
        for _ in range(attempts):
            self.port = free_port()
            taken = {self.port}
            self.admin_port = self._another_port(taken)
            self.ports = {name: self._another_port(taken) for name in self.extra_ports}
            with open(os.path.join(self.dir, "ambassador.yaml"), "w") as f:
                f.write(ambassador_yaml(self.port, self.mappings() if callable(self.mappings) else self.mappings,
                                        docs=self.docs(self) if callable(self.docs) else self.docs,
                                        default_listener=self.default_listener, default_host=self.default_host,
                                        listener_protocol=self.listener_protocol))
            self.config_path = os.path.join(self.dir, "nuncio.yaml")
            with open(self.config_path, "w") as f:
                f.write(native_yaml(self.admin_port, self.chain, [self.lua_dir] if self.lua_dir else None,
                                    extra=self.native))
            attempt_start = self.log_size()
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen([BIN, "-c", self.config_path], stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL, cwd=self.dir)
            finally:
                log.close()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                rc = self.proc.poll()
                if rc is not None:
                    self.returncode = rc
                    if "cannot listen" in self.log(attempt_start):
                        break  # lost a port race: retry on new ports
                    raise ProxyError("nuncio exited with status %d while starting%s" % (rc, self.format_log()))
                if self._ready():
                    return self
                time.sleep(0.02)  # poll interval, not synchronization
            else:
                self.kill()
                raise ProxyError("nuncio did not answer /ready on 127.0.0.1:%d within %ss%s"
                                 % (self.admin_port, START_TIMEOUT, self.format_log()))
        raise ProxyError("nuncio could not bind free ports in %d attempts%s" % (attempts, self.format_log()))

    @staticmethod
    def _another_port(taken):
        port = free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        return port

    def _ready(self):
        try:
            status, body = self.admin_get("/ready", timeout=1)
        except OSError:
            return False
        return status == 200 and "LIVE" in body

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, wait, and require exit status 0 (under ASan: no leak, no error)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ProxyError("nuncio did not exit within %ss of SIGTERM%s" % (STOP_TIMEOUT, self.format_log()))
        self.returncode = self.proc.returncode
        self.proc = None
        if self.returncode != 0:
            what = "a leak or sanitizer error (ASan)" if SANITIZE else "an error"
            raise ProxyError("nuncio exited with status %d after SIGTERM (expected 0; non-zero means %s)%s"
                             % (self.returncode, what, self.format_log()))

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- admin

    def admin_get(self, path, timeout=5):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def stats(self):
        status, body = self.admin_get("/stats")
        if status != 200:
            raise ProxyError("GET /stats -> %d %r%s" % (status, body, self.format_log()))
        out = {}
        for line in body.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def wait_stats(self, timeout=SETTLE_TIMEOUT, **expected):
        """Polls /stats until every name=value in expected holds; returns the stats."""
        return self.wait_stats_until(lambda st: all(st.get(k) == v for k, v in expected.items()),
                                     str(expected), timeout)

    def wait_stats_until(self, predicate, what, timeout=SETTLE_TIMEOUT):
        """Polls /stats until predicate(stats) is true; returns the stats. what: the
        condition in words, for the error."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if predicate(st):
                return st
            if time.monotonic() >= deadline:
                raise ProxyError("/stats did not reach %s within %ss; last: %s%s"
                                 % (what, timeout, st, self.format_log()))
            time.sleep(0.02)  # poll interval

    # -- clients and logs

    def channel(self, options=(), authority=None, port=None):
        """A cleartext (h2c) channel to the listener on .port (or port). authority:
        the :authority of its calls (grpc.default_authority), else 127.0.0.1:port."""
        options = list(options)
        if authority is not None:
            options.append(("grpc.default_authority", authority))
        return grpc.insecure_channel("127.0.0.1:%d" % (port or self.port), options=options)

    def tls_channel(self, root_certificates, name="localhost", client_cert=None, options=(), port=None):
        """A TLS channel to the listener on .port (or port): see tls_channel()."""
        return tls_channel("127.0.0.1:%d" % (port or self.port), root_certificates, name=name,
                           client_cert=client_cert, options=options)

    def log(self, since=0):
        """The proxy's log (stderr) from byte offset `since` (see log_size())."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def format_log(self, since=0, max_lines=120):
        text = self.log(since)
        lines = text.splitlines()
        cut = ""
        if len(lines) > max_lines:
            cut = "(%d earlier lines cut)\n" % (len(lines) - max_lines)
            lines = lines[-max_lines:]
        return "\n%s (%s, from byte %d) ----\n%s%s\n---- end of nuncio log ----" % (
            LOG_MARK, self.log_path, since, cut, "\n".join(lines))


# --------------------------------------------------------------------------- test case

@contextlib.contextmanager
def case(label):
    """For loops over cases in a NuncioTestCase test (subTest failures would not
    carry the proxy log): a failure or RPC error inside names the case."""
    try:
        yield
    except grpc.RpcError as e:
        if not hasattr(e, "code"):
            raise
        raise AssertionError("%s: RPC failed: %s: %s" % (label, e.code(), e.details())) from e
    except AssertionError as e:
        raise AssertionError("%s: %s" % (label, e)) from e


def _with_log(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except unittest.SkipTest:
            raise
        except BaseException as e:  # noqa: B902 - every failure gets the proxy log
            if isinstance(e, KeyboardInterrupt) or LOG_MARK in str(e):
                raise
            proxy = getattr(self, "proxy", None)
            log = proxy.format_log(self._log_mark) if proxy is not None else ""
            detail = str(e)
            if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
                detail = "RPC failed: %s: %s" % (e.code(), e.details())
            raise self.failureException("%s: %s%s" % (type(e).__name__, detail, log)) from e
    return wrapper


class NuncioTestCase(unittest.TestCase):
    """Tests share one proxy per class (cls.proxy), started by start_proxy() in
    setUpClass. tearDownClass waits for live_streams 0 and stops the proxy
    requiring exit status 0. Any failure in a test_* method carries the log."""

    proxy = None
    maxDiff = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in list(cls.__dict__.items()):
            if name.startswith("test") and callable(value):
                setattr(cls, name, _with_log(value))

    @classmethod
    def start_upstream(cls, **kwargs):
        up = Upstream(**kwargs)
        cls.addClassCleanup(up.stop)
        return up

    @classmethod
    def start_proxy(cls, mappings, **kwargs):
        proxy = Nuncio(mappings, name=cls.__name__, **kwargs)
        cls.addClassCleanup(proxy.cleanup)
        cls.proxy = proxy.start()
        return proxy

    @classmethod
    def tearDownClass(cls):
        proxy = cls.proxy
        if proxy is None or proxy.proc is None:
            return
        if proxy.running():
            try:
                proxy.wait_stats(live_streams=0)
            finally:
                proxy.stop()
        else:
            proxy.stop()  # it died during the tests: reports the status and the log

    def setUp(self):
        self._log_mark = self.proxy.log_size() if self.proxy is not None else 0

    def proxy_log(self):
        return self.proxy.log(self._log_mark) if self.proxy is not None else ""

    def assertRpcCode(self, exc_ctx, code, details_contains=None):
        """assertRaises(grpc.RpcError) context -> check its status code (and details)."""
        err = exc_ctx.exception
        self.assertEqual(err.code(), code, "got %s: %r" % (err.code(), err.details()))
        if details_contains is not None:
            self.assertIn(details_contains, err.details() or "")
        return err


# --------------------------------------------------------------------------- raw HTTP/2 client

import struct  # noqa: E402 - only the raw client below needs it

H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_PING, H2_GOAWAY, H2_WINDOW_UPDATE, H2_CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
H2_END_STREAM, H2_ACK, H2_END_HEADERS, H2_PADDED, H2_PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
H2_PROTOCOL_ERROR, H2_CANCEL = 0x1, 0x8
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_hpack_lib = None


def _hpack():
    """libnghttp2's HPACK decoder through ctypes (the same library nuncio links)."""
    global _hpack_lib
    if _hpack_lib is None:
        import ctypes
        import ctypes.util
        lib = ctypes.CDLL(ctypes.util.find_library("nghttp2") or "libnghttp2.so.14")

        class NV(ctypes.Structure):
            _fields_ = [("name", ctypes.POINTER(ctypes.c_uint8)), ("value", ctypes.POINTER(ctypes.c_uint8)),
                        ("namelen", ctypes.c_size_t), ("valuelen", ctypes.c_size_t), ("flags", ctypes.c_uint8)]
        lib.nghttp2_hd_inflate_new.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.nghttp2_hd_inflate_del.argtypes = [ctypes.c_void_p]
        lib.nghttp2_hd_inflate_end_headers.argtypes = [ctypes.c_void_p]
        lib.nghttp2_hd_inflate_hd2.argtypes = [ctypes.c_void_p, ctypes.POINTER(NV), ctypes.POINTER(ctypes.c_int),
                                               ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        lib.nghttp2_hd_inflate_hd2.restype = ctypes.c_ssize_t
        _hpack_lib = (ctypes, lib, NV)
    return _hpack_lib


class _HpackDecoder:
    def __init__(self):
        ctypes, lib, _ = _hpack()
        self.ptr = ctypes.c_void_p()
        if lib.nghttp2_hd_inflate_new(ctypes.byref(self.ptr)) != 0:
            raise RuntimeError("nghttp2_hd_inflate_new failed")

    def decode(self, block):
        ctypes, lib, NV = _hpack()
        out, nv, flags, off = [], NV(), ctypes.c_int(0), 0
        while True:
            rest = block[off:]
            rv = lib.nghttp2_hd_inflate_hd2(self.ptr, ctypes.byref(nv), ctypes.byref(flags), rest, len(rest), 1)
            if rv < 0:
                raise ProxyError("HPACK decoding failed (%d) on %r" % (rv, bytes(block)))
            off += rv
            if flags.value & 0x02:  # NGHTTP2_HD_INFLATE_EMIT
                out.append((ctypes.string_at(nv.name, nv.namelen).decode("latin-1"),
                            ctypes.string_at(nv.value, nv.valuelen)))
            if flags.value & 0x01:  # NGHTTP2_HD_INFLATE_FINAL
                lib.nghttp2_hd_inflate_end_headers(self.ptr)
                return out
            if rv == 0 and not flags.value & 0x02:
                raise ProxyError("truncated HPACK block %r" % (bytes(block),))

    def close(self):
        if self.ptr:
            _hpack()[1].nghttp2_hd_inflate_del(self.ptr)
            self.ptr = None


# --------------------------------------------------------------------------- raw HTTP/1.1

class Http1Response:
    def __init__(self, version, status, headers, body):
        self.version, self.status, self.headers, self.body = version, status, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Http1Conn:
    """A raw HTTP/1.1 client: sends bytes as given, reads responses strictly by
    their framing (content-length, chunked, or to EOF)."""

    def __init__(self, port, tls_context=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT)
        if tls_context:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("latin-1")

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head=False):
        version, status, _ = (self._line().split(" ", 2) + [""])[:3]
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        r = Http1Response(version, int(status), headers, b"")
        if head or r.status in (100, 204, 304):
            return r
        if r.header("transfer-encoding") == "chunked":
            while True:
                size = int(self._line().split(";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                r.body += self._take(size)
                self._take(2)
        elif r.header("content-length") is not None:
            r.body = self._take(int(r.header("content-length")))
        else:
            while True:
                try:
                    self._fill()
                except EOFError:
                    break
            r.body, self.buf = self.buf, b""
        return r

    def closed_by_peer(self, timeout=SETTLE_TIMEOUT):
        """True once the proxy closed (EOF or reset) within timeout; unread bytes are dropped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                continue
            except OSError:
                return True
        return False

    def close(self):
        self.sock.close()


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7f) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(headers):
    """An HPACK block of literal fields without indexing and without Huffman: every
    name and value goes on the wire exactly as given (bytes or latin-1 str)."""
    out = bytearray()
    for name, value in headers:
        name = name.encode("latin-1") if isinstance(name, str) else name
        value = value.encode("latin-1") if isinstance(value, str) else value
        out += b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value
    return bytes(out)


def grpc_frame(message):
    """A gRPC length-prefixed message (uncompressed) around serialized bytes or a protobuf."""
    body = message if isinstance(message, (bytes, bytearray)) else message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


class H2Stream:
    def __init__(self, sid):
        self.id = sid
        self.headers = []      # one decoded list of (name, value bytes) per header block (headers, trailers)
        self.data = bytearray()
        self.data_bytes = 0    # DATA payload received (padding excluded)
        self.ended = False     # END_STREAM received
        self.reset = None      # RST_STREAM error code received
        self.send_window = 0

    def header(self, name, block=0):
        """The first value of name in header block `block` (0: the response headers,
        -1: the last block, the trailers when there are some), as str; None if absent."""
        try:
            fields = self.headers[block]
        except IndexError:
            return None
        values = [v for n, v in fields if n == name]
        return values[0].decode("latin-1") if values else None

    @property
    def closed(self):
        return self.ended or self.reset is not None


class H2Client:
    """A minimal HTTP/2 (h2c, prior knowledge) client on a blocking socket, for what
    grpcio and nghttp cannot do: send a header exactly as given (even a forbidden one),
    and read slowly with a small window that it credits only when told (credit()).

    window: the stream window it advertises (SETTINGS_INITIAL_WINDOW_SIZE); its
    connection window is the same when larger than HTTP/2's initial 65535. auto_credit: give every DATA byte back at once (WINDOW_UPDATE).
    keep_data: keep DATA payloads in stream.data (else only count them).
    Frames are read by read_frame() / wait(); on_frame(type, flags, sid, payload) sees each."""

    def __init__(self, port, window=65535, auto_credit=True, keep_data=True, timeout=CALL_TIMEOUT,
                 host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = "%s:%d" % (host, port)
        self.window = window
        self.auto_credit = auto_credit
        self.keep_data = keep_data
        self.decoder = _HpackDecoder()
        self.streams = {}
        self.next_id = 1
        self.goaway = None          # (last stream id, error code) once received
        self.peer_settings = {}
        self.peer_initial_window = 65535
        self.conn_send_window = 65535
        self.max_frame = 16384
        self._rbuf = bytearray()
        self._hblock = None         # (sid, flags, bytearray) while CONTINUATIONs are expected
        self.closed = False
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, min(window, 0x7fffffff))
        self.sock.sendall(H2_PREFACE + self._frame(H2_SETTINGS, 0, 0, settings))
        if window > 65535:
            self.send_frame(H2_WINDOW_UPDATE, 0, 0, struct.pack(">I", window - 65535))

    @staticmethod
    def _frame(ftype, flags, sid, payload):
        return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload

    def send_frame(self, ftype, flags, sid, payload=b""):
        self.sock.sendall(self._frame(ftype, flags, sid, payload))

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            finally:
                self.decoder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests

    def request(self, headers, body=None, end_stream=True):
        """Opens a stream with these headers (list of (name, value), sent literally, in
        order: put the pseudo-headers first) and body; returns the H2Stream."""
        sid = self.next_id
        self.next_id += 2
        st = self.streams[sid] = H2Stream(sid)
        st.send_window = self.peer_initial_window
        no_body = not body and end_stream
        self.send_frame(H2_HEADERS, H2_END_HEADERS | (H2_END_STREAM if no_body else 0), sid, hpack_literal(headers))
        if body:
            self.send_data(st, body, end_stream)
        return st

    def grpc_request(self, path, message, extra=(), authority=None):
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
                   (":authority", authority or self.authority), ("content-type", "application/grpc"),
                   ("te", "trailers")] + list(extra)
        return self.request(headers, grpc_frame(message))

    def send_data(self, st, data, end_stream=True, deadline=None):
        """Sends data on st within the peer's flow-control windows (reads frames while waiting)."""
        deadline = deadline or time.monotonic() + CALL_TIMEOUT
        view = memoryview(bytes(data))
        while True:
            n = min(len(view), self.max_frame, st.send_window, self.conn_send_window)
            if n > 0 or not view:
                last = n == len(view)
                self.send_frame(H2_DATA, H2_END_STREAM if (last and end_stream) else 0, st.id, bytes(view[:n]))
                st.send_window -= n
                self.conn_send_window -= n
                view = view[n:]
                if last:
                    return
                continue
            if st.closed:
                raise ProxyError("stream %d closed while sending its body" % st.id)
            self.read_frame(deadline)

    def credit(self, st, n):
        """Gives n received bytes back to the sender: on the connection, and on st
        (an H2Stream, or None) while it is open."""
        if n > 0:
            payload = struct.pack(">I", n)
            out = self._frame(H2_WINDOW_UPDATE, 0, 0, payload)
            if st is not None and not st.closed:
                out += self._frame(H2_WINDOW_UPDATE, 0, st.id, payload)
            self.sock.sendall(out)

    # -- reading

    def _recv_exact(self, n, deadline):
        while len(self._rbuf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no HTTP/2 frame from the proxy in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, n - len(self._rbuf)))
            if not chunk:
                raise ConnectionError("the proxy closed the connection (goaway=%r)" % (self.goaway,))
            self._rbuf += chunk
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    def read_frame(self, deadline=None):
        """Reads and handles one frame; returns (type, flags, stream id, payload)."""
        deadline = deadline or time.monotonic() + CALL_TIMEOUT
        head = self._recv_exact(9, deadline)
        length = int.from_bytes(head[:3], "big")
        ftype, flags, sid = head[3], head[4], struct.unpack(">I", head[5:9])[0] & 0x7fffffff
        payload = self._recv_exact(length, deadline) if length else b""
        st = self.streams.get(sid)
        if ftype == H2_SETTINGS and not flags & H2_ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[i:i + 6])
                self.peer_settings[key] = value
                if key == 0x4:
                    for s in self.streams.values():
                        s.send_window += value - self.peer_initial_window
                    self.peer_initial_window = value
                elif key == 0x5:
                    self.max_frame = value
            self.send_frame(H2_SETTINGS, H2_ACK, 0)
        elif ftype == H2_PING and not flags & H2_ACK:
            self.send_frame(H2_PING, H2_ACK, 0, payload)
        elif ftype == H2_WINDOW_UPDATE:
            inc = struct.unpack(">I", payload)[0] & 0x7fffffff
            if sid == 0:
                self.conn_send_window += inc
            elif st is not None:
                st.send_window += inc
        elif ftype == H2_GOAWAY:
            self.goaway = struct.unpack(">II", payload[:8])
            self.goaway = (self.goaway[0] & 0x7fffffff, self.goaway[1])
        elif ftype == H2_RST_STREAM and st is not None:
            st.reset = struct.unpack(">I", payload)[0]
        elif ftype in (H2_HEADERS, H2_CONTINUATION):
            if ftype == H2_HEADERS:
                body = payload
                pad = 0
                if flags & H2_PADDED:
                    pad, body = body[0], body[1:]
                if flags & H2_PRIORITY:
                    body = body[5:]
                self._hblock = (sid, flags, bytearray(body[:len(body) - pad]))
            else:
                self._hblock[2].extend(payload)
            if flags & H2_END_HEADERS:
                hsid, hflags, block = self._hblock
                self._hblock = None
                fields = self.decoder.decode(bytes(block))
                hst = self.streams.get(hsid)
                if hst is not None:
                    hst.headers.append(fields)
                    if hflags & H2_END_STREAM:
                        hst.ended = True
        elif ftype == H2_DATA:
            body = payload
            if flags & H2_PADDED:
                body = body[1:len(body) - body[0]]
            if st is not None:
                st.data_bytes += len(body)
                if self.keep_data:
                    st.data += body
                if flags & H2_END_STREAM:
                    st.ended = True
            if self.auto_credit and length:
                self.credit(st, length)
        return ftype, flags, sid, payload

    def wait(self, st, timeout=CALL_TIMEOUT):
        """Reads frames until st ends (END_STREAM or RST_STREAM); returns st."""
        deadline = time.monotonic() + timeout
        while not st.closed:
            self.read_frame(deadline)
        return st


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve_main()
