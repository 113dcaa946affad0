// Drives the "Merge history" sidebar tab in the system Chromium against the real ComfyUI server and reports
// what it saw as JSON on stdout. The assertions live in test_history_tab.py; this script only acts and observes.
// usage: node history_check.mjs SERVER_URL OUT_DIR CONFIG_JSON
// CONFIG_JSON: {"words": two search words, "historyPath": the server's log, "extraLine": one more entry line to
// append (as History writes it) before a prompt runs, "pageSize": the page size to pick before searching}
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, outDir, configPath] = process.argv.slice(2);
const config = JSON.parse(readFileSync(configPath, "utf8"));
const NODE_TYPE = "MergeSuite_MergeFromHistory";
const result = { console: [] };

const profile = mkdtempSync(join(tmpdir(), "merge-suite-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") result.console.push(m.text()); });
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  const historyRequests = [];
  page.on("request", (r) => { if (r.url().includes("/merge_suite/history")) historyRequests.push(r.url()); });

  await page.request.post(`${url}/api/settings`, {
    data: { "Comfy.TutorialCompleted": true, "Comfy.VueNodes.Enabled": process.env.VUE_NODES === "1" },
  });
  await page.goto(url);
  await page.waitForFunction(() => {
    const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    return window.comfyAPI?.app?.app?.graph && LG?.registered_node_types?.MergeSuite_CheckpointMerge;
  }, null, { timeout: 90000 });
  result.extensions = await page.evaluate(() => window.comfyAPI.app.app.extensions.map((e) => e.name)
    .filter((n) => n.startsWith("merge_suite")));
  result.nodeRegistered = await page.evaluate((type) => {
    const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    return Boolean(LG?.registered_node_types?.[type]);
  }, NODE_TYPE);

  // What the tab shows now: the entries' ids in order, the pager, the state and the query it answered.
  const tab = page.locator(".ms-history");
  const seen = () => page.evaluate(() => {
    const root = document.querySelector(".ms-history");
    return {
      state: root?.dataset.state, query: root?.dataset.query, total: Number(root?.dataset.total ?? -1),
      ids: [...document.querySelectorAll(".ms-history-entry")].map((e) => Number(e.dataset.id)),
      pager: root?.querySelector(".ms-history-pager")?.textContent,
      note: root?.querySelector(".ms-history-note")?.textContent ?? null,
      prevDisabled: root?.querySelector(".ms-history-prev")?.disabled,
      nextDisabled: root?.querySelector(".ms-history-next")?.disabled,
    };
  });
  // Wait until the tab has answered this query (search|mode|offset|limit) and is no longer loading.
  const answered = (key) => page.waitForFunction((key) => {
    const root = document.querySelector(".ms-history");
    return root?.dataset.query === key && root.dataset.state !== "loading";
  }, key, { timeout: 20000 });

  // Open the tab as a user does: its button on the side bar.
  await page.locator(".merge-suite-history-tab-button").first().click();
  await tab.waitFor({ state: "visible", timeout: 20000 });
  await answered("|and|0|20");
  const first = page.locator(".ms-history-entry").first();
  result.opened = {
    ...await seen(),
    requests: historyRequests.length,
    first: {
      head: await first.locator(".ms-history-head").innerText(),
      kind: await first.locator(".ms-history-kind").textContent(),
      models: await first.locator(".ms-history-models").textContent(),
      text: await first.locator(".ms-history-text").textContent(),
      title: await first.locator(".ms-history-text").getAttribute("title"),
      buttons: await first.locator("button").allTextContents(),
    },
  };
  await page.screenshot({ path: join(outDir, "history_tab.png") });

  await tab.locator(".ms-history-next").click();
  await answered("|and|20|20");
  result.nextPage = await seen();
  await tab.locator(".ms-history-prev").click();
  await answered("|and|0|20");
  result.prevPage = await seen();

  await tab.locator(".ms-history-size").selectOption(String(config.pageSize));
  await answered(`|and|0|${config.pageSize}`);
  result.bigPage = await seen();

  // Two words typed into the search box (debounced: one request after typing), all words, then any word.
  const requestsBefore = historyRequests.length;
  await tab.locator(".ms-history-search").click();
  await page.keyboard.type(config.words, { delay: 20 });
  await answered(`${config.words}|and|0|${config.pageSize}`);
  result.allWords = { ...await seen(), requests: historyRequests.length - requestsBefore };
  await page.screenshot({ path: join(outDir, "history_search.png") });
  await tab.locator(".ms-history-mode").selectOption("or");
  await answered(`${config.words}|or|0|${config.pageSize}`);
  result.anyWord = await seen();

  // "Add to graph" on the first entry both words match.
  const addId = result.allWords.ids[0];
  const before = await page.evaluate((type) => window.comfyAPI.app.app.graph.nodes
    .filter((n) => n.type === type).length, NODE_TYPE);
  await tab.locator(`.ms-history-entry[data-id="${addId}"] button`, { hasText: "Add to graph" }).click();
  await page.waitForTimeout(500);
  result.added = await page.evaluate(([type, before]) => {
    const app = window.comfyAPI.app.app;
    const nodes = app.graph.nodes.filter((n) => n.type === type);
    const node = nodes[nodes.length - 1];
    if (!node || nodes.length === before) return { count: nodes.length };
    const ds = app.canvas.ds;
    const [x, y] = ds.convertOffsetToCanvas(node.pos);
    const width = app.canvas.canvas.clientWidth;
    const height = app.canvas.canvas.clientHeight;
    return { count: nodes.length, type: node.type, comfyClass: node.comfyClass,
      historyId: node.widgets?.find((w) => w.name === "history_id")?.value,
      inView: x >= 0 && y >= 0 && x < width && y < height,
      status: document.querySelector(".ms-history-status")?.textContent };
  }, [NODE_TYPE, before]);
  result.added.addId = addId;
  result.added.prompt = await page.evaluate(async (type) => {
    const output = (await window.comfyAPI.app.app.graphToPrompt()).output;
    return Object.values(output).filter((n) => n.class_type === type).map((n) => n.inputs);
  }, NODE_TYPE);
  await page.screenshot({ path: join(outDir, "history_added.png") });

  // A merge recorded while the tab is open (another writer appends a line), then a prompt finishes: the
  // list refreshes by itself, newest first.
  await tab.locator(".ms-history-search").fill("");
  await answered(`|or|0|${config.pageSize}`);
  appendFileSync(config.historyPath, config.extraLine);
  const requestsBeforeRun = historyRequests.length;
  const run = await page.evaluate(async () => {
    const api = window.comfyAPI.api.api;
    const prompt = { 1: { class_type: "PrimitiveString", inputs: { value: "history refresh" } },
      2: { class_type: "PreviewAny", inputs: { source: ["1", 0] } } };
    const r = await api.fetchApi("/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, client_id: api.clientId }) });
    return { status: r.status, body: await r.text() };
  });
  await page.waitForFunction((count) => Number(document.querySelector(".ms-history")?.dataset.count) > count,
    result.opened.total, { timeout: 60000 }).catch(() => {});
  await page.waitForTimeout(500);
  result.afterRun = { ...await seen(), run, requests: historyRequests.length - requestsBeforeRun };
} catch (e) {
  result.error = String(e?.stack || e);
  await browser.pages()[0]?.screenshot({ path: join(outDir, "history_failure.png") }).catch(() => {});
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));
