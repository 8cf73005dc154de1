// Drives the DSS Swagger UI in headless Chromium (Debian's, through playwright-core), as a person would:
// authorize with a pasted bearer token, "Try it out" on PUT /files/{uuid}, Execute, read the status the UI
// shows. Then, from a page on another origin, calls the API with fetch() (CORS preflight included).
// Input: one JSON argument {dss, token, uuid, version, sourceUrl, otherOrigin, refusedOrigin, corsUuid, refusedUuid};
// output: one JSON line of what was observed. tests/test_swagger_ui_browser.py runs it.
const { chromium } = require("playwright-core");

const input = JSON.parse(process.argv[2]);
const TIMEOUT = 60000;

async function tryItOut(page) {
  await page.goto(`${input.dss}/`);
  await page.locator(".btn.authorize").first().click({ timeout: TIMEOUT });
  const bearer = page.locator(".auth-container", { hasText: "bearerAuth" });
  await bearer.locator("input").fill(input.token);
  await bearer.locator("button.authorize").click();
  await page.locator("button.btn-done").first().click();

  const operation = page.locator(".opblock-put").filter({ has: page.locator('[data-path="/files/{uuid}"]') });
  await operation.locator(".opblock-summary").click();
  await operation.locator(".try-out__btn").click();
  await operation.locator('tr[data-param-name="uuid"] input').fill(input.uuid);
  await operation.locator('tr[data-param-name="version"] input').fill(input.version);
  await operation.locator("textarea.body-param__text").fill(
    JSON.stringify({ source_url: input.sourceUrl, creator_uid: 7 }));
  await operation.locator("button.execute").click();
  const status = operation.locator(".live-responses-table tr.response .response-col_status").first();
  await status.waitFor({ timeout: TIMEOUT });
  return (await status.innerText()).trim();
}

async function crossOrigin(page, origin, uuid) {
  await page.goto(`${origin}/`);
  return page.evaluate(async ({ dss, token, uuid, version, sourceUrl }) => {
    try {
      const response = await fetch(`${dss}/v1/files/${uuid}?version=${version}`, {
        method: "PUT",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ source_url: sourceUrl, creator_uid: 8 }),
      });
      return { status: response.status, body: await response.json() };
    } catch (error) {
      return { error: String(error) };
    }
  }, { ...input, uuid });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: input.chromium || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(TIMEOUT);
    const ui = await tryItOut(page);
    const allowed = await crossOrigin(page, input.otherOrigin, input.corsUuid);
    const refused = await crossOrigin(page, input.refusedOrigin, input.refusedUuid);
    console.log(JSON.stringify({ ui, allowed, refused }));
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
