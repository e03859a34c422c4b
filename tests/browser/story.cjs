// An order's story in a browser (tests/tests/console.rs sets up the whole stack): a customer's
// orders found by their id, newest first; the story of a cancelled-and-refunded order and of a
// paid one, each section holding every step the services recorded, the events on Kafka with the
// groups that processed them, and the trace linked to the trace UI.
"use strict";
const { run, assert } = require("./lib.cjs");

/** Every expected text in each section of the story on the page. */
async function expectStory(page, expected) {
  for (const [section, texts] of Object.entries(expected)) {
    const text = await page.locator(`section#${section}`).innerText();
    for (const want of texts) assert.ok(text.includes(want), `${section} shows ${want}: ${text}`);
  }
}

run(async (page, s, shot) => {
  await page.goto(`${s.url}/`);
  await page.click('nav a[href="/orders"]');
  await page.fill('input[name="q"]', s.customer);
  await page.click("form.search button");
  const row = page.locator(`tr[data-order="${s.refunded}"]`);
  assert.match(await row.innerText(), /REFUNDED/);
  await shot("order-search");

  await row.locator("a").click();
  await expectStory(page, s.refunded_story);
  const trace = page.locator("p.trace a");
  assert.match(await trace.getAttribute("href"), new RegExp(`^${s.trace_prefix}[0-9a-f]{32}$`));
  await shot("order-story-refunded");

  // An order id typed in the search opens its story.
  await page.fill('input[name="q"]', s.paid);
  await page.click("form.search button");
  await page.waitForURL(`**/orders/${s.paid}`);
  await expectStory(page, s.paid_story);
  await shot("order-story-paid");
});
