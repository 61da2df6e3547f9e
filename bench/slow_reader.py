#!/usr/bin/python3
"""A slow reader behind nuncio: does the proxy's memory stay bounded?

A real grpcio upstream (in this process) answers one server-streaming call
(echo.Echo/Expand) with --size bytes in --msg-size messages, as fast as it is
allowed to. The client is a raw HTTP/2 client (spec/helpers/nuncio_fixture.py,
H2Client) that advertises a small window (--window) and gives it back at
--read-rate only. nuncio sits in between (a real binary, on free ports).

nuncio credits the upstream only for bytes the client took, so the upstream
must slow down to the client's pace and nuncio must hold no more than about
one stream window per side: its own receive window towards the upstream
(H2_STREAM_WINDOW, 1 MiB, csrc/h2_common.h) plus the client's window. A proxy
that read ahead without limit would hold (nearly) all of --size instead.

While the call runs, a thread samples nuncio's VmRSS (/proc/<pid>/status)
every 2 ms. The baseline is taken when the first DATA frame reaches the
client; the rise is the peak after it minus the baseline. The report also
gives how far the upstream's producer ever ran ahead of the client ("lead"),
which flow control bounds by the windows in between.

    /usr/bin/python3 bench/slow_reader.py                      # 1 GiB at 64 MiB/s
    /usr/bin/python3 bench/slow_reader.py --size 256M --read-rate 0 --nuncio build/nuncio

Exit status: 0 when the whole stream arrived intact and the RSS rise stayed
within --max-rise-mib, 1 otherwise. spec/04-integration/test_memory_bounded.py
runs the same code with a smaller size.
"""
import argparse
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
HELPERS = os.path.join(SRC, "spec", "helpers")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Request text of the bulk stream: "bulk:<bytes per message>"; count = messages.
BULK_PREFIX = "bulk:"
BULK_PATH = "/echo.Echo/Expand"


def _fx():
    """The integration harness (imported lazily: main() may set NUNCIO_BIN first)."""
    if HELPERS not in sys.path:
        sys.path.insert(0, HELPERS)
    import nuncio_fixture
    return nuncio_fixture


def parse_size(text):
    """'1G', '64M', '16k', '1048576' -> bytes."""
    text = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": KiB, "M": MiB, "G": GiB}.get(text[-1:], 1)
    return int(float(text[:-1] if mult != 1 else text) * mult)


# --------------------------------------------------------------------------- upstream

class BulkEcho:
    """echo.Echo whose Expand, asked with text "bulk:<n>", streams `count` replies
    of n payload bytes each (index = sequence number) as fast as flow control lets
    it. sent[tag] counts the bytes (gRPC framing included) of the replies grpc has
    accepted for the call with that tag (the generator was resumed after the
    yield), so a reader can see how far the producer ran ahead of it; finished
    and cancelled list the tags of the calls that ended each way."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}
        self.finished = set()
        self.cancelled = set()

    def sent_bytes(self, tag):
        with self.lock:
            return self.sent.get(tag, 0)

    def Expand(self, request, context):
        pb = _fx().stubs().echo_pb2
        if not request.text.startswith(BULK_PREFIX):
            context.abort(_fx().grpc.StatusCode.INVALID_ARGUMENT, "this upstream serves bulk streams only")
        size = int(request.text[len(BULK_PREFIX):])
        block = os.urandom(size)
        tag = request.tag
        with self.lock:
            self.sent[tag] = 0

        def ended():
            with self.lock:
                if tag not in self.finished:
                    self.cancelled.add(tag)
        context.add_callback(ended)
        for i in range(request.count):
            if not context.is_active():
                return
            reply = pb.EchoReply(payload=block, index=i)
            frame = reply.ByteSize() + 5
            yield reply
            with self.lock:
                self.sent[tag] += frame
        with self.lock:
            self.finished.add(tag)

    def _only_bulk(self, request, context):
        context.abort(_fx().grpc.StatusCode.UNIMPLEMENTED, "this upstream serves bulk streams only")

    Echo = Collect = Chat = _only_bulk


def start_bulk_upstream(port=0):
    """A grpcio server on 127.0.0.1 with BulkEcho; returns (server, port, service)."""
    fx = _fx()
    from concurrent import futures
    s = fx.stubs()
    service = BulkEcho()
    server = fx.grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=list(fx.GRPC_MSG_OPTIONS))
    s.echo_pb2_grpc.add_EchoServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:%d" % port)
    if not port:
        raise RuntimeError("the bulk upstream could not bind")
    server.start()
    return server, port, service


# --------------------------------------------------------------------------- RSS

def read_rss(pid):
    """VmRSS of pid in bytes (None once the process is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KiB
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples VmRSS of pid every `interval` seconds until stop(). mark_baseline()
    takes the current value as the baseline; peak is the highest sample since then
    (since the start before any baseline)."""

    def __init__(self, pid, interval=0.002):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.start_rss = read_rss(pid)
        self.baseline = None
        self.peak = self.start_rss or 0
        self.samples = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self):
        while not self._halt.wait(self.interval):  # the sampling period, not a synchronization
            rss = read_rss(self.pid)
            if rss is None:
                return
            with self._lock:
                self.samples += 1
                if rss > self.peak:
                    self.peak = rss

    def mark_baseline(self):
        rss = read_rss(self.pid)
        with self._lock:
            self.baseline = rss
            self.peak = rss

    def stop(self):
        self._halt.set()
        self.join()
        rss = read_rss(self.pid)  # one last sample
        with self._lock:
            if rss is not None and rss > self.peak:
                self.peak = rss
        return self

    @property
    def rise(self):
        return self.peak - (self.baseline if self.baseline is not None else self.start_rss)


# --------------------------------------------------------------------------- the slow reader

class Transfer:
    """What slow_read() saw."""

    def __init__(self):
        self.bytes = 0            # DATA payload bytes received
        self.messages = 0         # complete gRPC messages
        self.bad = []             # problems with the messages (sizes, indexes)
        self.status = None        # :status of the response
        self.grpc_status = None   # from the trailers
        self.grpc_message = None
        self.reset = None         # RST_STREAM code, if the stream was reset
        self.seconds = 0.0
        self.first_data_at = None
        self.max_lead = 0         # the upstream's sent bytes minus ours, at most

    @property
    def ok(self):
        return self.reset is None and self.grpc_status == "0" and not self.bad


def slow_read(port, messages, msg_size, window=64 * KiB, read_rate=64 * MiB, on_first_data=None,
              service=None, timeout=None, tag="slow-reader"):
    """One bulk Expand call through the proxy on port with a raw HTTP/2 client that
    advertises `window` bytes (stream and connection) and gives them back at
    read_rate bytes/s (0: as fast as it can parse). on_first_data() runs when the
    first DATA frame arrives (the baseline moment). service: the BulkEcho, to
    measure the producer's lead on the call named tag. Returns a Transfer."""
    fx = _fx()
    pb = fx.stubs().echo_pb2
    res = Transfer()
    deadline = time.monotonic() + (timeout or fx.CALL_TIMEOUT)
    pending = bytearray()     # gRPC bytes not yet parsed into a whole message
    uncredited = 0
    credit_step = max(window // 4, 16 * KiB)
    with fx.H2Client(port, window=window, auto_credit=False, keep_data=False,
                     timeout=timeout or fx.CALL_TIMEOUT) as client:
        st = client.grpc_request(BULK_PATH, pb.ExpandRequest(text="%s%d" % (BULK_PREFIX, msg_size),
                                                              count=messages, tag=tag))
        t0 = time.monotonic()
        while not st.closed:
            ftype, flags, sid, payload = client.read_frame(deadline)
            if ftype != fx.H2_DATA or sid != st.id or not payload:
                continue
            body = payload
            if flags & fx.H2_PADDED:
                body = body[1:len(body) - body[0]]
            if res.first_data_at is None:
                res.first_data_at = time.monotonic()
                if on_first_data:
                    on_first_data()
            res.bytes += len(body)
            pending += body
            while len(pending) >= 5:
                n = int.from_bytes(pending[1:5], "big")
                if len(pending) < 5 + n:
                    break
                if not msg_size <= n <= msg_size + 16:
                    res.bad.append("message %d is %d bytes, expected %d and a few" % (res.messages, n, msg_size))
                else:
                    idx = pb.EchoReply.FromString(bytes(pending[5:5 + n])).index
                    if idx != res.messages:
                        res.bad.append("message %d has index %d" % (res.messages, idx))
                del pending[:5 + n]
                res.messages += 1
            if service is not None:
                res.max_lead = max(res.max_lead, service.sent_bytes(tag) - res.bytes)
            # Pace: give the window back no faster than read_rate.
            uncredited += len(payload)
            if read_rate:
                ahead = res.bytes / read_rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # the read rate being simulated, not a synchronization
            if uncredited >= credit_step or (flags & fx.H2_END_STREAM):
                client.credit(st, uncredited)
                uncredited = 0
        res.seconds = time.monotonic() - t0
        res.reset = st.reset
        if st.headers:
            res.status = st.header(":status")
            last = st.headers[-1]
            for name, value in last:
                if name == "grpc-status":
                    res.grpc_status = value.decode("latin-1")
                elif name == "grpc-message":
                    res.grpc_message = value.decode("latin-1")
    if pending:
        res.bad.append("%d bytes of a partial message at the end" % len(pending))
    if res.messages != messages:
        res.bad.append("%d messages received, %d sent" % (res.messages, messages))
    return res


def run(proxy, service, size, msg_size, window, read_rate, timeout=None):
    """slow_read() of `size` bytes through `proxy` (a started fixture Nuncio) with
    nuncio's RSS sampled; returns (Transfer, RssSampler)."""
    messages = max(1, size // msg_size)
    sampler = RssSampler(proxy.proc.pid)
    sampler.start()
    try:
        res = slow_read(proxy.port, messages, msg_size, window=window, read_rate=read_rate,
                        on_first_data=sampler.mark_baseline, service=service, timeout=timeout)
    finally:
        sampler.stop()
    return res, sampler


def report(res, sampler, out=sys.stdout):
    mib = float(MiB)
    rate = res.bytes / res.seconds / mib if res.seconds else 0.0
    print("nuncio RSS: before %.1f MiB, baseline %.1f MiB, peak %.1f MiB, rise %.1f MiB (%d samples)"
          % ((sampler.start_rss or 0) / mib, (sampler.baseline or 0) / mib, sampler.peak / mib,
             sampler.rise / mib, sampler.samples), file=out)
    print("transferred %d bytes in %d messages in %.2f s: %.1f MiB/s; upstream lead at most %.2f MiB"
          % (res.bytes, res.messages, res.seconds, rate, res.max_lead / mib), file=out)
    print("response: :status %s, grpc-status %s%s%s" % (res.status, res.grpc_status,
                                                        " (%s)" % res.grpc_message if res.grpc_message else "",
                                                        ", reset %d" % res.reset if res.reset is not None else ""),
          file=out)
    for problem in res.bad[:10]:
        print("problem: %s" % problem, file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes to stream (suffix K, M, G; default 1G)")
    ap.add_argument("--msg-size", default="64K", help="bytes per message (default 64K)")
    ap.add_argument("--read-rate", default="64M",
                    help="bytes per second the client reads (suffix K, M, G; 0 = as fast as it can; default 64M)")
    ap.add_argument("--window", default="64K", help="the client's HTTP/2 window, stream and connection (default 64K)")
    ap.add_argument("--max-rise-mib", type=float, default=32.0,
                    help="fail when nuncio's RSS rises more than this over the baseline (default 32)")
    ap.add_argument("--nuncio", help="the nuncio binary (default $NUNCIO_BIN, else build/nuncio)")
    args = ap.parse_args(argv)
    if args.nuncio:
        os.environ["NUNCIO_BIN"] = os.path.abspath(args.nuncio)
    os.environ.setdefault("NUNCIO_SRC", SRC)
    fx = _fx()
    size, msg_size = parse_size(args.size), parse_size(args.msg_size)
    read_rate, window = parse_size(args.read_rate), parse_size(args.window)
    server, port, service = start_bulk_upstream()
    proxy = fx.Nuncio([fx.mapping("bulk", "/echo.Echo/", "127.0.0.1:%d" % port, timeout_ms=0)], name="bench")
    try:
        proxy.start()
        print("nuncio %s (pid %d) on port %d; upstream on %d; %d bytes in %d-byte messages, window %d, read rate %s"
              % (fx.BIN, proxy.proc.pid, proxy.port, port, size, msg_size, window,
                 "%.1f MiB/s" % (read_rate / float(MiB)) if read_rate else "unlimited"), flush=True)
        timeout = max(60.0, 4.0 * size / read_rate if read_rate else 0.0, size / (10.0 * MiB)) * fx.SLOW
        res, sampler = run(proxy, service, size, msg_size, window, read_rate, timeout=timeout)
        report(res, sampler)
        proxy.stop()
    finally:
        proxy.cleanup()
        server.stop(0).wait(5)
    failed = False
    if not res.ok:
        print("FAIL: the stream did not arrive whole with grpc-status 0", file=sys.stderr)
        failed = True
    if sampler.rise > args.max_rise_mib * MiB:
        print("FAIL: nuncio's RSS rose %.1f MiB, over the %.1f MiB bound" % (sampler.rise / float(MiB),
                                                                              args.max_rise_mib), file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
