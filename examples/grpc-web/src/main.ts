// The example page: calls helloworld.Greeter through nuncio with gRPC-Web.
//
// Query parameters (all optional):
//   proxy=http://host:port  nuncio's listener (default: this page's host, port 8080)
//   name=...                the name to greet (default "browser")
//   auto=0                  do not call on load, wait for the button
//
// What the page shows, by element id (the browser test reads these):
//   #unary          the SayHello reply's message
//   #stream > li    one item per SayHelloStreamReply message, in order
//   #unary-status, #stream-status   data-state="running" | "done" | "failed", and the
//                   gRPC code + message of a failure, or what the response said
//   body[data-state]  "done" once both calls have ended (either way)
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Greeter } from "./gen/helloworld_pb";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const defaultProxy = `${location.protocol}//${location.hostname}:8080`;

$<HTMLInputElement>("proxy").value = params.get("proxy") ?? defaultProxy;
$<HTMLInputElement>("name").value = params.get("name") ?? "browser";
$("page-origin").textContent = location.origin;

type Seen = { headers: string[]; trailers: string[] };

function setStatus(id: string, state: string, text: string, seen?: Seen) {
  const el = $(id);
  el.dataset.state = state;
  el.textContent = text;
  if (seen) {
    // Header names the page could read: a cross-origin response exposes only the
    // CORS-safelisted ones and those nuncio lists in Access-Control-Expose-Headers.
    el.dataset.headers = seen.headers.join(",");
    el.dataset.trailers = seen.trailers.join(",");
  }
}

function describe(err: unknown): string {
  const e = ConnectError.from(err);
  return `failed: ${Code[e.code]} (${e.code}): ${e.rawMessage}`;
}

function recorder(): [Seen, { onHeader: (h: Headers) => void; onTrailer: (t: Headers) => void }] {
  const seen: Seen = { headers: [], trailers: [] };
  return [seen, {
    onHeader: (h) => h.forEach((_v, k) => seen.headers.push(k)),
    onTrailer: (t) => t.forEach((_v, k) => seen.trailers.push(k)),
  }];
}

async function run() {
  const proxy = $<HTMLInputElement>("proxy").value.replace(/\/+$/, "");
  const name = $<HTMLInputElement>("name").value;
  $("proxy-origin").textContent = proxy;
  document.body.dataset.state = "running";
  $("unary").textContent = "";
  $("stream").replaceChildren();

  // gRPC-Web, binary (application/grpc-web+proto), over the browser's fetch().
  const transport = createGrpcWebTransport({ baseUrl: proxy });
  const client = createClient(Greeter, transport);

  const unary = (async () => {
    setStatus("unary-status", "running", "calling…");
    const [seen, hooks] = recorder();
    try {
      // timeoutMs sends grpc-timeout: one more header the preflight must allow.
      const reply = await client.sayHello({ name }, { timeoutMs: 10000, ...hooks });
      $("unary").textContent = reply.message;
      setStatus("unary-status", "done", "OK", seen);
    } catch (err) {
      setStatus("unary-status", "failed", describe(err), seen);
    }
  })();

  const stream = (async () => {
    setStatus("stream-status", "running", "calling…");
    const [seen, hooks] = recorder();
    let n = 0;
    try {
      for await (const reply of client.sayHelloStreamReply({ name }, { timeoutMs: 10000, ...hooks })) {
        const li = document.createElement("li");
        li.textContent = reply.message;
        $("stream").append(li);
        n++;
      }
      setStatus("stream-status", "done", `OK: ${n} messages`, seen);
    } catch (err) {
      setStatus("stream-status", "failed", `${describe(err)} after ${n} messages`, seen);
    }
  })();

  await Promise.all([unary, stream]);
  document.body.dataset.state = "done";
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void run();
});

if (params.get("auto") !== "0") void run();
else document.body.dataset.state = "idle";
