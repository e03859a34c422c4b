// The dead-letter triage in a browser (tests/tests/console_browser.rs sets it up): the health page
// lists the DLT with its untriaged count; the poisoned record shows under its class; a record
// opened shows its reasons and payload, and markup in a header or payload never runs; replaying
// the class after a confirmation says how many and where to; triage clears the count on the live
// health page; both actions are on the audit page.
"use strict";
const { run, until, assert } = require("./lib.cjs");

run(async (page, s, shot) => {
  // Health: the DLT and its untriaged records (the section refreshes itself).
  await page.goto(`${s.url}/`);
  const untriaged = () => page.locator(`tr[data-dlt="${s.dlt}"] td:nth-child(3)`).innerText().catch(() => null);
  await until(page, "the DLT's untriaged count on the health page", untriaged, String(s.dead_letters));
  await shot("health");

  // The topic: records by class.
  await page.click(`a[href="/dead-letters/${s.dlt}"]`);
  const classRow = page.locator(`tr[data-class="${s.class}"]`);
  assert.equal(await classRow.locator("td:nth-child(2)").innerText(), "1", "one record of the refused class");
  assert.equal(await page.locator('tr[data-class="bad_magic_byte"] td:nth-child(2)').innerText(), "1", "the poison");
  await shot("dead-letters");

  // The poison opened: markup in its header and payload is text, and nothing ran.
  await page.click(`tr[data-offset="0-${s.poison_offset}"] a`);
  await page.waitForSelector("table.reasons");
  assert.match(await page.locator("table.headers").innerText(), /<img src=x onerror=/);
  assert.match(await page.locator("pre.payload").innerText(), /3c 73 63 72 69 70 74/);
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "no script from a record ran");
  assert.equal(await page.locator("table.headers img, pre.payload script").count(), 0);
  await shot("dead-letter-poison");

  // The refused record: reasons and the payload decoded through the registry.
  await page.goBack();
  await page.click(`tr[data-offset="0-${s.refused_offset}"] a`);
  assert.match(await page.locator("table.reasons").innerText(), new RegExp(s.class));
  assert.match(await page.locator("pre.payload").innerText(), /"sku"/);
  await shot("dead-letter-record");

  // Replay the class: the preview says how many and where to; confirming replays it.
  await page.goBack();
  await classRow.locator("a").click();
  const confirm = page.locator("p.confirm");
  assert.equal(await confirm.getAttribute("data-count"), "1");
  assert.match(await confirm.innerText(), new RegExp(`Replay 1 record to ${s.topic.replace(/\./g, "\\.")} \\(1\\)`));
  await shot("replay-preview");
  await page.click("form.confirm button");
  assert.match(await page.locator("p.done").innerText(), /Done: replay of 1 record/);
  await shot("replay-done");

  // Triage everything: the preview's count, then the live health page says 0.
  await page.goto(`${s.url}/dead-letters/${s.dlt}`);
  await page.click("form.triage button");
  assert.equal(await page.locator("p.confirm").getAttribute("data-count"), String(s.dead_letters));
  await shot("triage-preview");
  await page.click("form.confirm button");
  assert.match(await page.locator("p.done").innerText(), new RegExp(`Done: triage of ${s.dead_letters} records`));
  await page.goto(`${s.url}/`);
  await until(page, "untriaged after triage", untriaged, "0");

  // The audit log: who, what, when.
  await page.click('nav a[href="/audit"]');
  const rows = await page.locator("table.audit tbody tr").allInnerTexts();
  for (const [action, outcome] of [["replay", "done"], ["replay", "started"], ["triage", "done"], ["triage", "started"]]) {
    assert.ok(
      rows.some((r) => r.includes(s.user) && r.includes(action) && r.includes(outcome)),
      `${action} ${outcome} in the audit log: ${rows.join(" | ")}`,
    );
  }
  await shot("audit");

  // The consumer group's page: its partitions, members and rebalances, and the rewind form.
  await page.goto(`${s.url}/`);
  await page.click(`tr[data-group="${s.group}"] a`);
  assert.match(await page.locator("p.membership").innerText(), /Coordinator state: /);
  assert.equal(await page.locator("form.rewind").count(), 1);
  await shot("group");
});
