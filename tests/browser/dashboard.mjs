// Drives Debian's chromium through weir's dashboard, as a person would, and checks what
// the page shows. tests/e2e/dashboard.rs starts weir and its upstreams, then runs this
// with:
//   WEIR_ADMIN   the admin listener's base URL (http://127.0.0.1:PORT)
//   WEIR_PROXY   the proxy listener's base URL
//   WEIR_TOKEN   the admin token (the browser gives it as the Basic password)
//   SHOTS        where screenshots go (kept as CI artifacts under target/)
//   CHROMIUM     the browser binary (default /usr/bin/chromium)
// It prints one line per step and exits 1 with the reason on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const ADMIN = env("WEIR_ADMIN");
const PROXY = env("WEIR_PROXY");
const TOKEN = env("WEIR_TOKEN");
const SHOTS = env("SHOTS");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");

mkdirSync(SHOTS, { recursive: true });

const step = (what) => console.log(`step: ${what}`);
function fail(why) {
  throw new Error(why);
}

async function send(path, init) {
  const resp = await fetch(PROXY + path, init);
  await resp.arrayBuffer();
  return resp.status;
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  // Containers run as root without a user namespace for the sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
try {
  const context = await browser.newContext({
    httpCredentials: { username: "operator", password: TOKEN },
    viewport: { width: 1440, height: 900 },
    colorScheme: "light",
  });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    if (!r.url().startsWith(ADMIN)) problems.push(`the page loaded ${r.url()}, not from the admin listener`);
  });

  step("open the dashboard; it goes live");
  await page.goto(ADMIN + "/");
  await page.locator("#live[data-state=live]").waitFor({ timeout: 5000 });

  step("traffic on route fine: its request count rises to what was sent");
  const card = page.locator('#routes [data-route="fine"]');
  await card.waitFor({ timeout: 5000 });
  const before = Number(await card.locator('[data-k="requests"]').textContent());
  for (let i = 0; i < 7; i++) {
    const s = await send("/fine/item");
    if (s !== 200) fail(`GET /fine/item answered ${s}`);
  }
  await page.waitForFunction(
    ([want]) => Number(document.querySelector('#routes [data-route="fine"] [data-k="requests"]').textContent) >= want,
    [before + 7],
    { timeout: 3000 },
  );
  const rps = Number(await card.locator('[data-k="rps"]').textContent());
  if (!(rps >= 0)) fail(`req/s shows ${rps}`);
  await page.screenshot({ path: join(SHOTS, "1-traffic.png"), fullPage: true });

  step("failures open the breaker; the page shows it open within 2 s");
  let opened = false;
  for (let i = 0; i < 10 && !opened; i++) {
    const s = await send("/payments/charge");
    if (s === 503) opened = true;
    else if (s !== 500) fail(`GET /payments/charge answered ${s}, not 500 or the breaker's 503`);
  }
  if (!opened) fail("the breaker never answered 503");
  // The breaker was open when its 503 came back: from here the page has 2 s.
  const openedAt = Date.now();
  await page
    .locator('#breakers tr[data-route="payments"] .pill[data-state="open"]')
    .waitFor({ timeout: 2000 })
    .catch(() => fail(`the breaker was not shown open ${Date.now() - openedAt} ms after it opened`));
  await page.locator('#banners [data-k="banner"]', { hasText: "Breaker open" }).waitFor({ timeout: 2000 });
  console.log(`  shown open after ${Date.now() - openedAt} ms`);
  await page.screenshot({ path: join(SHOTS, "2-breaker-open.png"), fullPage: true });

  step("a 429 burst shows on the limiter panel");
  let rejected = 0;
  const burst = await Promise.all(Array.from({ length: 12 }, () => send("/orders/new", { method: "POST", body: "{}" })));
  for (const s of burst) {
    if (s === 429) rejected++;
    else if (s !== 200) fail(`POST /orders/new answered ${s}`);
  }
  if (rejected === 0) fail("the burst got no 429");
  await page.waitForFunction(
    ([want]) => {
      const row = document.querySelector('#limiters tr[data-route="orders"] [data-k="rejected"]');
      const card = document.querySelector('#routes [data-route="orders"] [data-k="r429"]');
      return row && card && Number(row.textContent) === want && Number(card.textContent) === want;
    },
    [rejected],
    { timeout: 3000 },
  ).catch(async () => {
    const shown = await page.locator('#limiters tr[data-route="orders"]').textContent().catch(() => "(no row)");
    fail(`the limiter panel did not show ${rejected} 429s: ${shown}`);
  });
  await page.screenshot({ path: join(SHOTS, "3-limiter.png"), fullPage: true });

  step("a failed request is clicked, replayed, and its new result appears beside the old");
  const first = await send("/checkout/pay", { method: "POST", body: '{"amount":5}' });
  if (first !== 500) fail(`the first checkout answered ${first}, not 500`);
  await page.locator("#filter-errors").check();
  await page.selectOption("#filter-route", "checkout");
  const row = page.locator("#requests tbody tr").filter({ hasText: "/checkout/pay" }).first();
  await row.waitFor({ timeout: 5000 });
  await row.click();
  await page.locator("#detail:not([hidden])").waitFor({ timeout: 3000 });
  await page.locator("#detail-title", { hasText: "500" }).waitFor({ timeout: 3000 });
  await page.click("#replay");
  await page.locator("#replay-compare:not([hidden])").waitFor({ timeout: 5000 });
  const oldStatus = await page.locator('#replay-old [data-k="old-status"]').textContent();
  const newStatus = await page.locator('#replay-new [data-k="new-status"]').textContent();
  const newBody = await page.locator('#replay-new [data-k="new-body"]').textContent();
  if (oldStatus !== "500") fail(`the original shows ${oldStatus}`);
  if (newStatus !== "200") fail(`the replay shows ${newStatus}`);
  if (!newBody.includes("paid")) fail(`the replay's body shows ${newBody}`);
  await page.screenshot({ path: join(SHOTS, "4-replay.png"), fullPage: true });

  step("the config panel shows the hash in force");
  const hash = await page.locator('#config [data-k="hash"]').textContent();
  if (!/^[0-9a-f]{16}$/.test(hash)) fail(`the config hash shows ${hash}`);

  step("dark mode renders");
  await page.emulateMedia({ colorScheme: "dark" });
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  if (bg !== "rgb(13, 17, 23)") fail(`dark mode background is ${bg}`);
  // The charts were made again in dark mode's colours: one canvas per chart, not two.
  const canvases = await page.locator('#routes [data-route="fine"] canvas').count();
  if (canvases !== 2) fail(`route fine has ${canvases} chart canvases after the switch`);
  await page.screenshot({ path: join(SHOTS, "5-dark.png"), fullPage: true });

  step("a laptop screen needs no sideways scrolling");
  await page.setViewportSize({ width: 1280, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`the page is ${overflow} px wider than a 1280 px window`);

  step("without the token, nothing is shown");
  // A browser with no credentials gets the 401 challenge and, headless, cannot ask.
  const stranger = await browser.newContext();
  const refused = await (await stranger.newPage())
    .goto(ADMIN + "/")
    .then((r) => `answered ${r.status()}`)
    .catch((e) => e.message);
  if (!refused.includes("ERR_INVALID_AUTH_CREDENTIALS")) fail(`the page without the token: ${refused}`);
  await stranger.close();
  const plain = await fetch(ADMIN + "/events");
  if (plain.status !== 401) fail(`/events without the token answered ${plain.status}`);

  if (problems.length) fail(problems.join("\n"));
  console.log("dashboard: all steps passed");
} catch (e) {
  console.error(`dashboard: FAILED: ${e.message}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
