// Drives headless Chromium (Debian's /usr/bin/chromium, through Playwright's
// playwright-core: no browser download) to the gRPC-Web example page and prints
// what the page shows as one JSON object on stdout. Run by
// spec/04-integration/test_browser_grpc_web.py:
//
//   node spec/browser/grpc_web_page.mjs URL [--timeout-ms 20000] [--chromium /usr/bin/chromium]
//
// playwright-core is resolved from examples/grpc-web/node_modules (`npm ci` there).
// Exit status: 0 when the page reached body[data-state=done] (the calls may have
// failed: the JSON says how), 2 on a usage error, 3 when the browser or the page
// could not be driven (the message says why, on stderr and in the JSON).
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const exampleDir = path.resolve(here, "..", "..", "examples", "grpc-web");

const args = process.argv.slice(2);
let url = null;
let timeoutMs = 20000;
let executablePath = "/usr/bin/chromium";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--timeout-ms") timeoutMs = Number(args[++i]);
  else if (args[i] === "--chromium") executablePath = args[++i];
  else if (!url) url = args[i];
  else {
    console.error(`grpc_web_page: unexpected argument ${args[i]}`);
    process.exit(2);
  }
}
if (!url || !(timeoutMs > 0)) {
  console.error("usage: node grpc_web_page.mjs URL [--timeout-ms N] [--chromium PATH]");
  process.exit(2);
}

const out = { url, console: [], pageErrors: [], requests: [], failedRequests: [] };
const finish = (code, error) => {
  if (error) {
    out.error = error;
    console.error(`grpc_web_page: ${error}`);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exitCode = code;
};

let chromium;
try {
  ({ chromium } = createRequire(path.join(exampleDir, "package.json"))("playwright-core"));
} catch (e) {
  finish(3, `cannot load playwright-core from ${exampleDir}/node_modules (run \`npm ci\` there, ` +
            `or \`make -C examples/grpc-web\`): ${e.message}`);
  process.exit();
}

let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    // We run as root (CI): Chromium refuses to start sandboxed then.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: timeoutMs,
  });
  out.browserVersion = browser.version();
  const page = await browser.newPage();
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  page.on("requestfailed", (r) =>
    out.failedRequests.push({ method: r.method(), url: r.url(), error: r.failure()?.errorText }));
  page.on("response", async (resp) => {
    const req = resp.request();
    const entry = { method: req.method(), url: resp.url(), status: resp.status() };
    out.requests.push(entry);
    try {
      entry.requestHeaders = await req.allHeaders();
      entry.responseHeaders = await resp.allHeaders();
    } catch (e) {
      entry.headersError = String(e);
    }
  });

  await page.goto(url, { waitUntil: "load", timeout: timeoutMs });
  try {
    await page.waitForSelector("body[data-state=done]", { timeout: timeoutMs });
  } catch (e) {
    out.timedOut = true;
  }
  Object.assign(out, await page.evaluate(() => {
    const el = (id) => document.getElementById(id);
    const status = (id) => ({
      state: el(id).dataset.state, text: el(id).textContent,
      headers: el(id).dataset.headers ?? null, trailers: el(id).dataset.trailers ?? null,
    });
    return {
      pageOrigin: location.origin,
      bodyState: document.body.dataset.state,
      unary: el("unary").textContent,
      unaryStatus: status("unary-status"),
      stream: [...document.querySelectorAll("#stream > li")].map((li) => li.textContent),
      streamStatus: status("stream-status"),
    };
  }));
  // Let pending response-header lookups settle before closing.
  await new Promise((r) => setTimeout(r, 50));
  finish(out.timedOut ? 3 : 0,
         out.timedOut ? `the page did not finish its calls within ${timeoutMs} ms` : undefined);
} catch (e) {
  finish(3, `driving Chromium (${executablePath}) failed: ${e.message}`);
} finally {
  if (browser) await browser.close().catch(() => {});
}
