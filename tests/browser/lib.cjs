// What every browser scenario shares: Debian's chromium (ORDERFLOW_CHROMIUM) driven by
// playwright-core (ORDERFLOW_NODE_MODULES, from scripts/lib_install.sh), the scenario's settings
// from the JSON file named on the command line, a record of every console message and page error
// (a scenario fails on any), and screenshots into the scenario's directory.
"use strict";
const path = require("node:path");
const fs = require("node:fs");
const assert = require("node:assert/strict");

const modules = process.env.ORDERFLOW_NODE_MODULES;
if (!modules) throw new Error("ORDERFLOW_NODE_MODULES is not set: run the suite with ./scripts/test.sh");
const { chromium } = require(path.join(modules, "playwright-core"));

/** Runs `scenario(page, settings, shot)` in a fresh headless browser; exits non-zero on failure. */
async function run(scenario) {
  const settings = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const browser = await chromium.launch({
    executablePath: process.env.ORDERFLOW_CHROMIUM || "/usr/bin/chromium",
    // Root in a container has no user namespaces for chromium's sandbox.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const problems = [];
  try {
    const context = await browser.newContext({
      viewport: { width: 1280, height: 900 },
      httpCredentials: settings.user ? { username: settings.user, password: settings.password } : undefined,
    });
    context.setDefaultTimeout(30000);
    const page = await context.newPage();
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    let shots = 0;
    const shot = async (name) => {
      if (!settings.screenshots) return;
      fs.mkdirSync(settings.screenshots, { recursive: true });
      await page.screenshot({ path: path.join(settings.screenshots, `${name}.png`), fullPage: true });
      shots += 1;
    };
    try {
      await scenario(page, settings, shot);
    } catch (error) {
      const text = await page.locator("main").innerText().catch(() => "(no page)");
      console.error(`on ${page.url()}:\n${text.slice(0, 3000)}`);
      throw error;
    }
    assert.deepEqual(problems, [], "the pages logged no error");
    console.log(JSON.stringify({ ok: true, screenshots: shots }));
  } finally {
    await browser.close();
  }
}

/** Waits until `read()` returns `want` (the page refreshes itself), or fails saying `what`. */
async function until(page, what, read, want, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < deadline) {
    last = await read();
    if (last === want) return;
    await page.waitForTimeout(250);
  }
  assert.fail(`${what}: still ${JSON.stringify(last)}, wanted ${JSON.stringify(want)}`);
}

module.exports = { run, until, assert };
