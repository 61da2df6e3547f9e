#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz harnesses (spec/fuzz/corpus/<harness>/).

Run from anywhere: python3 spec/fuzz/seeds.py. Seeds are named seed-*; inputs a
harness found and that were fixed are kept beside them as regress-* (written by
hand, never by this script, which only rewrites seed-* files)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def write(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------ HTTP/2

def hp_int(first, bits, v):
    mx = (1 << bits) - 1
    if v < mx:
        return bytes([first | v])
    out = [first | mx]
    v -= mx
    while v >= 128:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    out.append(v)
    return bytes(out)


def hp_lit(name, value, indexed=False):
    """A literal field with a new name; with incremental indexing when asked."""
    name, value = name.encode(), value.encode()
    return (b"\x40" if indexed else b"\x00") + hp_int(0, 7, len(name)) + name + hp_int(0, 7, len(value)) + value


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20


def req_block(path, method="POST", extra=()):
    b = hp_lit(":method", method) + hp_lit(":scheme", "http") + hp_lit(":path", path)
    b += hp_lit(":authority", "localhost:8080")
    b += hp_lit("content-type", "application/grpc") + hp_lit("te", "trailers")
    for k, v in extra:
        b += hp_lit(k, v)
    return b


def grpc_msg(payload):
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def h2_start(settings=b""):
    return PREFACE + frame(SETTINGS, 0, 0, settings)


def h2_seeds():
    s = {}
    s["get"] = h2_start() + frame(HEADERS, END_STREAM | END_HEADERS, 1, req_block("/", "GET"))
    s["unary"] = (h2_start(struct.pack(">HI", 3, 100) + struct.pack(">HI", 4, 65535))
                  + frame(HEADERS, END_HEADERS, 1, req_block("/t/Say"))
                  + frame(DATA, END_STREAM, 1, grpc_msg(b"\x0a\x05hello"))
                  + frame(SETTINGS, 1, 0))
    s["late"] = (h2_start() + frame(HEADERS, END_HEADERS, 1, req_block("/l/Say"))
                 + frame(DATA, 0, 1, grpc_msg(b"abc")) + frame(DATA, END_STREAM, 1, b""))
    s["window"] = (h2_start() + frame(HEADERS, END_HEADERS, 1, req_block("/w"))
                   + frame(DATA, 0, 1, b"x" * 1000) + frame(WINDOW, 0, 1, struct.pack(">I", 4096))
                   + frame(DATA, END_STREAM, 1, b"y" * 100))
    s["reset"] = (h2_start() + frame(HEADERS, END_HEADERS, 1, req_block("/r"))
                  + frame(HEADERS, END_HEADERS, 3, req_block("/z"))
                  + frame(RST, 0, 3, struct.pack(">I", 8)) + frame(DATA, END_STREAM, 1, b"q"))
    s["big"] = (h2_start(struct.pack(">HI", 4, 1 << 20)) + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 24))
                + frame(HEADERS, END_STREAM | END_HEADERS, 1, req_block("/b", "GET")))
    s["trailers"] = (h2_start() + frame(HEADERS, END_HEADERS, 1, req_block("/h"))
                     + frame(DATA, 0, 1, grpc_msg(b"p"))
                     + frame(HEADERS, END_STREAM | END_HEADERS, 1, hp_lit("grpc-status", "0")))
    blk = req_block("/t", "GET", [("x-long", "v" * 60)])
    s["continuation"] = (h2_start() + frame(HEADERS, END_STREAM, 1, blk[:20]) + frame(CONT, 0, 1, blk[20:50])
                         + frame(CONT, END_HEADERS, 1, blk[50:]))
    s["padded-prio"] = (h2_start()
                        + frame(HEADERS, END_STREAM | END_HEADERS | PADDED | PRIO, 1,
                                b"\x03" + struct.pack(">I", 0) + b"\x10" + req_block("/e", "GET") + b"\0\0\0")
                        + frame(PRIORITY, 0, 3, struct.pack(">I", 1) + b"\x20")
                        + frame(PING, 0, 0, b"12345678"))
    s["indexed"] = (h2_start()
                    + frame(HEADERS, END_STREAM | END_HEADERS, 1,
                            b"\x82\x86\x84" + hp_lit(":authority", "a.example", True) + hp_lit("x-a", "1", True))
                    + frame(HEADERS, END_STREAM | END_HEADERS, 3, b"\x82\x86\x84\xbf\xbe")
                    + frame(GOAWAY, 0, 0, struct.pack(">II", 3, 0)))
    s["many"] = h2_start() + b"".join(
        frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, req_block("/" + "tlhwnkL"[i % 7] + "/m", "GET"))
        for i in range(7))
    s["bad-authority"] = h2_start() + frame(HEADERS, END_STREAM | END_HEADERS, 1,
                                            hp_lit(":method", "GET") + hp_lit(":scheme", "http")
                                            + hp_lit(":path", "/") + hp_lit(":authority", "a b\r\n"))
    return s


def main():
    for name, data in h2_seeds().items():
        write("h2s", name, data)

    # ------------------------------------------------------------ HTTP/1.1
    h1 = {
        "get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "post-length": b"POST /t/Say HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\nhello",
        "chunked-trailers": (b"POST /l HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
                             b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: y\r\n\r\n"),
        "pipelined": (b"GET /h HTTP/1.1\r\nHost: a\r\n\r\nGET /w HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                      b"HEAD /e HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        "expect": b"PUT /w HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
        "http10": b"GET /k HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        "absolute": b"GET http://upstream.example:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n",
        "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
        "reset": b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab",
        "bad-te": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        "big-reply": b"GET /b HTTP/1.1\r\nHost: a\r\n\r\nGET /L HTTP/1.1\r\nHost: a\r\n\r\n",
        "late-chunked": b"POST /l HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        "h2c-preface": h2_seeds()["unary"],
        "h2c-get": h2_seeds()["get"],
        "crlf-first": b"\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "no-host": b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    }
    for name, data in h1.items():
        write("h1s", name, data)

    # ------------------------------------------------------------ authority
    auth = {
        "host": b"/\nexample.com",
        "host-port": b"/l/x\nexample.com:8443",
        "spaces": b"/\n \t spaced.example \t",
        "absolute": b"http://up.example:8080/path?q\nignored.example",
        "absolute-https": b"https://[::1]:443\nx",
        "userinfo": b"http://user:pw@evil.example/\nx",
        "empty-auth": b"http:///x\nh",
        "v6-host": b"/\n[2001:db8::1]:80",
        "query": b"http://a.example?x=1\nh",
        "fragment": b"http://a.example#frag\nh",
        "star": b"*\nh",
        "ctl": b"/\nbad\x01host",
    }
    for name, data in auth.items():
        write("authority", name, data)

    # ------------------------------------------------------------ gRPC-Web
    import base64
    frames = grpc_msg(b"\x0a\x05hello") + grpc_msg(b"") + b"\x80" + struct.pack(">I", 15) + b"grpc-status:0\r\n"
    gw = {
        "binary": b"\x00" + frames,
        "binary-to-text": b"\x02" + frames,
        "text": b"\x01" + base64.b64encode(grpc_msg(b"\x0a\x05hello")) + base64.b64encode(grpc_msg(b"xy")),
        "text-pieces": b"\x0f" + base64.b64encode(frames),
        "text-bad": b"\x05" + b"AAAA=AAA",
        "text-pad": b"\x09" + b"AA==AAA=",
        "cut-frame": b"\x18" + b"\x00\x00\x00\x10\x00abc",
        "big-message": b"\x1e" + b"%\xff" * 9000,
        "content-type": b"\x00application/grpc-web-text+proto",
    }
    for name, data in gw.items():
        write("grpc_web", name, data)

    # ------------------------------------------------------------ YAML
    yaml = {
        "conf": open(os.path.join(ROOT, "conf", "nuncio.yaml"), "rb").read(),
        "anchors": b"base: &b {a: 1, b: [x, y]}\nother:\n  <<: *b\n  c: !!str 3\nlist: [*b, *b]\n",
        "merge-list": b"- &a {x: 1}\n- &b {y: 2}\n- <<: [*a, *b]\n  z: 3\n",
        "scalars": (b"i: 0x1F\no: 0o17\nold: 017\nb: 0b101\nsex: 1:30:00\nf: 6.8523015e+5\ninf: -.inf\n"
                    b"nan: .NaN\nt: yes\nn: ~\ns: '0x10'\nbig: 123456789012345678901234567890\n"),
        "multi-doc": b"---\napiVersion: getambassador.io/v3alpha1\nkind: Mapping\n---\nkind: Host\n...\n",
        "block": b"a: |\n  line1\n  line2\nb: >-\n  folded\n  text\nc: \"esc\\u00e9\\n\"\n",
        "deep": b"a:" + b" [" * 300 + b"]" * 300 + b"\n",
        "self-alias": b"&a [ *a ]\n",
        "bad": b"a: [1, 2\nb: }\n",
        "dup-keys": b"a: 1\na: 2\n? [complex, key]\n: v\n",
        "tags": b"!!map {!!str k: !!int '12', !!float f: !!bool 'true', !!null n: x}\n",
    }
    for name, data in yaml.items():
        write("yaml", name, data)

    # ------------------------------------------------------------ grpc-timeout
    gt = {
        "100m": b"100m", "5S": b"5S", "max-H": b"99999999H", "1n": b"1n", "12u": b"12u", "3M": b"3M",
        "too-long": b"123456789S", "no-unit": b"100", "content-type": b"application/grpc+proto",
        "frames": grpc_msg(b"abc") + grpc_msg(b"") + b"\x00\x00\x00",
        "message": "d\u00e9j\u00e0 %vu\n".encode(),
    }
    for name, data in gt.items():
        write("grpc_timeout", name, data)


if __name__ == "__main__":
    main()
