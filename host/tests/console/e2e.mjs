// The web console in a real browser: headless Chromium driven by
// Playwright, against a server host/tests/console.rs started and seeded.
// Every page is screenshot (at 1280×800, some at phone width too) and
// checked with axe-core: no serious or critical violation.
//
// Settings come from the environment: BASE, ADMIN_KEY, VIEWER_KEY,
// OTHER_EXECUTION, PEOPLE_CSV, SLOW_CSV, SCREENSHOTS, CHROMIUM.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env("BASE");
const SHOTS = env("SCREENSHOTS");
mkdirSync(SHOTS, { recursive: true });
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const LIVE_TIMEOUT = 60_000;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
// axe is injected as an inline script, which the console's content
// security policy forbids: only the checking context bypasses it.
const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, bypassCSP: true });
const page = await context.newPage();
page.setDefaultTimeout(20_000);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));

const checked = new Set();
let step = "starting";

/** Screenshots the page as `name` and checks it with axe once per name. */
async function look(name, { phone = false } = {}) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  if (phone) {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: join(SHOTS, `${name}-phone.png`), fullPage: true });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${name} is wider than a phone's screen by ${overflow}px`);
    await page.setViewportSize({ width: 1280, height: 800 });
  }
  if (checked.has(name)) return;
  checked.add(name);
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`),
    [],
    `accessibility violations on ${name}`,
  );
}

async function signIn(key) {
  await page.goto(`${BASE}/runs`);
  assert.match(page.url(), /\/sign-in\?next=/, "a page without a session asks to sign in");
  await look("sign-in", { phone: true });
  await page.fill("#key", key);
  await page.click("button[type=submit]");
  await page.waitForURL(`${BASE}/runs`);
}

/** Calls the API with the admin key; the answer's JSON. */
async function api(method, path, body) {
  const response = await fetch(`${BASE}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${env("ADMIN_KEY")}`, "Content-Type": "text/csv" },
    body,
  });
  assert.ok(response.status < 300, `${method} ${path}: ${response.status}`);
  return response.json();
}

/** Waits for `done` to hold, checking every 100 ms. */
async function until(done) {
  const deadline = Date.now() + LIVE_TIMEOUT;
  while (!(await done())) {
    assert.ok(Date.now() < deadline, "waited too long");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function statusOf() {
  return (await page.textContent("#status")).trim();
}

/** Uploads `file` on connector `name`'s page and lands on the new run. */
async function uploadAndRun(name, file) {
  await page.goto(`${BASE}/connectors/${name}`);
  await page.setInputFiles("#file", file);
  await Promise.all([page.waitForURL(/\/runs\/[0-9a-f-]{36}$/), page.click("#upload button[type=submit]")]);
  return page.url().split("/").pop();
}

try {
  step = "sign in with a wrong key";
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#key", "weir_not_a_key");
  await page.click("button[type=submit]");
  assert.match(await page.textContent("#sign-in-error"), /not valid/);

  step = "sign in";
  await signIn(env("ADMIN_KEY"));
  await look("runs", { phone: true });

  step = "a queued run shows its place and why it waits";
  // The server has one worker: a long run holds it, so the next one waits.
  const holder = await api("POST", "/connectors/slow/runs?filename=slow.csv", "a\n1\n");
  await until(async () => (await api("GET", `/executions/${holder.id}`)).status === "running");
  const run = await uploadAndRun("people", env("PEOPLE_CSV"));
  assert.equal(await statusOf(), "queued");
  assert.match(await page.textContent(".status-line"), /#1 in the queue · .+/);
  await page.goto(`${BASE}/runs`);
  assert.match(await page.textContent(`#runs tr:has(a[href='/runs/${run}'])`), /#1 in the queue: .+/);
  await page.goto(`${BASE}/runs/${run}`);

  step = "upload a file and run it, watching it live to its end";
  await page.evaluate(() => {
    window.stillThisPage = true;
  });
  const seen = new Set([await statusOf()]);
  await api("POST", `/executions/${holder.id}/cancel`);
  const deadline = Date.now() + LIVE_TIMEOUT;
  while (!["success", "partial_success", "failed"].includes(await statusOf())) {
    assert.ok(Date.now() < deadline, `the run did not end; statuses seen: ${[...seen]}`);
    seen.add(await statusOf());
    await page.waitForTimeout(50);
  }
  seen.add(await statusOf());
  assert.ok(await page.evaluate(() => window.stillThisPage), "the page followed the run without reloading");
  assert.ok(seen.has("queued") && seen.size >= 2, `the status changed on the page: ${[...seen]}`);
  assert.equal(await statusOf(), "partial_success");
  // The load step's counts arrived with the end.
  const loads = await page.textContent("table.loads tbody");
  assert.match(loads, /contact\s*3\s*3\s*0\s*0\s*0/, `load counts: ${loads}`);
  const stages = await page.$$eval(".stage", (items) => items.map((i) => i.className));
  assert.ok(stages.filter((c) => c.includes("completed")).length >= 3, `stages: ${stages}`);

  step = "read a rejected row's reason";
  const reasons = await page.$$eval("table.rejected td.reason", (cells) => cells.map((c) => c.textContent));
  assert.ok(
    reasons.some((r) => /not a valid e-mail address/.test(r)),
    `rejected reasons: ${reasons}`,
  );
  // The log tail fills from the event stream, to the run's last line.
  await page.waitForFunction(() => [...document.querySelectorAll("#log li")].some((li) => /status: partial_success/.test(li.textContent)));
  await look("run", { phone: true });

  step = "the runs list finds the run by its id";
  await page.goto(`${BASE}/runs?q=${run}`);
  assert.equal((await page.$$("#runs tr")).length, 1);
  assert.ok((await page.textContent("#runs")).includes(run));
  await page.goto(`${BASE}/runs?status=failed`);
  assert.match(await page.textContent("#runs"), /No runs match/);

  await page.goto(`${BASE}/runs`);
  const before = (await page.$$("#runs tr")).length;

  step = "cancel a long run and see canceling, then canceled";
  const slow = await uploadAndRun("slow", env("SLOW_CSV"));
  await page.waitForFunction(() => document.querySelector("#status")?.textContent.trim() === "running", null, {
    timeout: LIVE_TIMEOUT,
  });
  await Promise.all([page.waitForURL(`${BASE}/runs/${slow}`), page.click("#cancel button")]);
  const afterCancel = await statusOf();
  assert.ok(["canceling", "canceled"].includes(afterCancel), `after cancel: ${afterCancel}`);
  await page.waitForFunction(() => document.querySelector("#status")?.textContent.trim() === "canceled", null, {
    timeout: LIVE_TIMEOUT,
  });
  assert.equal(await page.$("#cancel"), null, "no cancel button once canceled");
  await page.goto(`${BASE}/runs`);
  assert.ok((await page.$$("#runs tr")).length > before, "the list shows the new run");

  step = "the runs list refreshes itself";
  await page.goto(`${BASE}/runs`);
  const rowsBefore = (await page.$$("#runs tr")).length;
  const liveId = (await api("POST", "/connectors/people/runs?filename=more.csv", "email,city\nlive@example.com,Bergen\n")).id;
  await page.waitForFunction((id) => document.querySelector("#runs").textContent.includes(id), liveId, {
    timeout: LIVE_TIMEOUT,
  });
  assert.equal((await page.$$("#runs tr")).length, rowsBefore + 1);

  step = "connectors";
  await page.goto(`${BASE}/connectors`);
  await look("connectors", { phone: true });
  await page.goto(`${BASE}/connectors/people`);
  await look("connector", { phone: true });

  step = "save a draft with an error and see it at its line";
  await page.goto(`${BASE}/connectors/people/sql`);
  const good = await page.inputValue("#sql");
  await page.fill("#sql", "CREATE VIEW output.people AS\nSELECT email, city FROM input.nowhere");
  await page.click("button[value=save]");
  assert.match(await page.textContent("#sql-error"), /Line 2/);
  assert.equal(await page.textContent(".gutter li.error"), "2");
  assert.equal(await page.getAttribute("#sql", "aria-invalid"), "true");
  await look("sql-error", { phone: true });

  step = "preview";
  await page.fill("#sql", `${good}\n-- checked in the console`);
  await page.click("button[value=preview]");
  await page.waitForSelector("#preview");
  assert.match(await page.textContent("#preview"), /a@x\.io|Oslo/);
  await look("preview");

  step = "publish";
  await Promise.all([page.waitForURL(/published=/), page.click("#publish button")]);
  assert.match(await page.textContent(".note"), /is live/);
  await look("sql");

  step = "versions with a diff";
  await page.goto(`${BASE}/connectors/people/versions?a=1&b=2`);
  assert.match(await page.textContent("table.diff tr.ins"), /checked in the console/);
  await look("versions");

  step = "records";
  await page.goto(`${BASE}/records`);
  await look("objects");
  await page.goto(`${BASE}/records/contact`);
  await page.fill("#f-city", "Oslo");
  await Promise.all([page.waitForURL(/f\.city=Oslo/), page.click(".filters button[type=submit]")]);
  assert.match(await page.textContent("table.records tbody"), /Oslo/);
  assert.doesNotMatch(await page.textContent("table.records tbody"), /Bergen/);
  await look("records", { phone: true });

  step = "admin: a key created shows its secret once";
  await page.goto(`${BASE}/admin/keys`);
  await page.fill("#name", "from the console");
  await page.selectOption("#role", "viewer");
  await page.click("#new-key button");
  assert.match(await page.textContent("#secret"), /^weir_[0-9a-f]{64}$/);
  await look("keys");
  await page.goto(`${BASE}/admin/keys`);
  assert.equal(await page.$("#secret"), null, "the secret is not shown again");
  await page.goto(`${BASE}/admin/plugins`);
  await look("plugins");

  step = "another workspace's execution is not found";
  const other = await page.goto(`${BASE}/runs/${env("OTHER_EXECUTION")}`);
  assert.equal(other.status(), 404);
  await look("not-found");

  step = "sign out";
  await page.goto(`${BASE}/runs`);
  await page.click(".who button");
  await page.waitForURL(/\/sign-in/);
  const afterSignOut = await page.goto(`${BASE}/runs/${run}`);
  assert.match(page.url(), /\/sign-in/, `signed out, a page asks to sign in again (${afterSignOut.status()})`);

  step = "a viewer sees no cancel, publish or key buttons";
  await signIn(env("VIEWER_KEY"));
  const viewed = (await api("POST", "/connectors/slow/runs?filename=slow.csv", "a\n1\n")).id;
  await page.goto(`${BASE}/runs/${viewed}`);
  assert.equal(await page.$("#cancel"), null, "no cancel button for a viewer");
  assert.equal(await page.$("a[href='/admin/keys']"), null, "no admin link for a viewer");
  await page.goto(`${BASE}/connectors/people/sql`);
  assert.equal(await page.$("#publish"), null, "no publish button for a viewer");
  assert.equal(await page.$("button[value=save]"), null, "no save button for a viewer");
  await page.goto(`${BASE}/connectors/people`);
  assert.equal(await page.$("#upload"), null, "no upload form for a viewer");

  step = "a viewer posting the forms anyway is refused";
  const posted = await page.evaluate(async (id) => {
    const csrf = document.querySelector("meta[name=csrf-token]").content;
    const post = (path, fields) =>
      fetch(path, { method: "POST", body: new URLSearchParams({ csrf, ...fields }) }).then((r) => r.status);
    return {
      cancel: await post(`/runs/${id}/cancel`, {}),
      publish: await post("/connectors/people/publish", {}),
      key: await post("/admin/keys", { name: "sneaky", role: "admin" }),
      status: await post("/connectors/people/status", { status: "inactive" }),
    };
  }, viewed);
  assert.deepEqual(posted, { cancel: 403, publish: 403, key: 403, status: 403 });
  const keysPage = await page.goto(`${BASE}/admin/keys`);
  assert.equal(keysPage.status(), 403);
  const still = await api("GET", `/executions/${viewed}`);
  assert.ok(["queued", "running"].includes(still.status), `the viewer's cancel did nothing: ${still.status}`);
  await api("POST", `/executions/${viewed}/cancel`);

  assert.deepEqual(pageErrors, [], "no script errors on any page");
  console.log(`console e2e: every step passed; ${checked.size} pages checked with axe; screenshots in ${SHOTS}`);
} catch (e) {
  console.error(`console e2e failed at: ${step}`);
  console.error(e);
  await page.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
