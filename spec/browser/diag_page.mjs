// Drives headless Chromium (Debian's /usr/bin/chromium, through Playwright's
// playwright-core: no browser download) to nuncio's diagnostics page
// (/ambassador/v0/diag/, rendered by lua/nuncio/diag.lua) and prints what a person
// would see as one JSON object on stdout. Run by spec/04-integration/test_diag.py:
//
//   node spec/browser/diag_page.mjs URL [--screenshot FILE] [--timeout-ms 20000] [--chromium /usr/bin/chromium]
//
// Output: { url, status, title, routes: [[cell text, ...], ...] (table#routes tr.route, in page
// order), routeNames: [data-name, ...], errors: [li text, ...] (#errors li.error), warnings,
// noErrors (the "No configuration errors" line shown), generation, screenshot, pageErrors,
// console }. playwright-core is resolved from examples/grpc-web/node_modules (`npm ci` there).
// Exit status: 0 when the page loaded and table#routes was found, 2 on a usage error, 3 when
// the browser or the page could not be driven (the message says why, on stderr and in the JSON).
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const exampleDir = path.resolve(here, "..", "..", "examples", "grpc-web");

const args = process.argv.slice(2);
let url = null;
let screenshot = null;
let timeoutMs = 20000;
let executablePath = "/usr/bin/chromium";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--timeout-ms") timeoutMs = Number(args[++i]);
  else if (args[i] === "--chromium") executablePath = args[++i];
  else if (args[i] === "--screenshot") screenshot = args[++i];
  else if (!url) url = args[i];
  else {
    console.error(`diag_page: unexpected argument ${args[i]}`);
    process.exit(2);
  }
}
if (!url || !(timeoutMs > 0) || (args.includes("--screenshot") && !screenshot)) {
  console.error("usage: node diag_page.mjs URL [--screenshot FILE] [--timeout-ms N] [--chromium PATH]");
  process.exit(2);
}

const out = { url, console: [], pageErrors: [] };
const finish = (code, error) => {
  if (error) {
    out.error = error;
    console.error(`diag_page: ${error}`);
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
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  const resp = await page.goto(url, { waitUntil: "load", timeout: timeoutMs });
  out.status = resp ? resp.status() : null;
  out.contentType = resp ? (await resp.allHeaders())["content-type"] : null;
  // The page is static HTML: once the route table is in the DOM everything is.
  await page.waitForSelector("table#routes", { state: "attached", timeout: timeoutMs });
  out.title = await page.title();
  Object.assign(out, await page.evaluate(() => {
    const text = (el) => (el ? el.textContent.replace(/\s+/g, " ").trim() : null);
    const rows = [...document.querySelectorAll("table#routes tr.route")];
    return {
      routes: rows.map((tr) => [...tr.querySelectorAll("td")].map(text)),
      routeNames: rows.map((tr) => tr.dataset.name),
      routeHeader: [...document.querySelectorAll("table#routes thead th")].map(text),
      errors: [...document.querySelectorAll("#errors li.error")].map(text),
      errorSources: [...document.querySelectorAll("#errors li.error .source")].map(text),
      errorBoxColor: (() => {
        const box = document.querySelector("#errors");
        return box ? getComputedStyle(box).borderTopColor : null;
      })(),
      warnings: [...document.querySelectorAll("#warnings li.warning")].map(text),
      noErrors: document.querySelector("#no-errors") !== null,
      generation: text(document.querySelector("#generation")),
      version: text(document.querySelector("#version")),
      clusters: [...document.querySelectorAll("table#clusters tr.cluster")].map((tr) =>
        [...tr.querySelectorAll("td")].map(text)),
      // what an injected <script> would have done: nothing may run on this page
      scripts: document.querySelectorAll("script").length,
    };
  }));
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true, timeout: timeoutMs });
    out.screenshot = path.resolve(screenshot);
  }
  finish(0);
} catch (e) {
  finish(3, String(e && e.stack ? e.stack : e));
} finally {
  if (browser) await browser.close().catch(() => {});
}
