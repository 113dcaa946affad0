// Drives the real ComfyUI frontend in the system Chromium and reports what it saw as JSON on stdout.
// The assertions live in test_web_extension.py; this script only acts and observes.
// usage: node editor_check.mjs SERVER_URL WORKFLOW_JSON OUT_DIR
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

const [url, workflowPath, outDir] = process.argv.slice(2);
const workflow = JSON.parse(readFileSync(workflowPath, "utf8"));
const examplesDir = dirname(workflowPath);
const MERGE = String(workflow.nodes.find((n) => n.type === "MergeSuite_CheckpointMerge").id);
const ELEMENTAL = String(workflow.nodes.find((n) => n.type === "MergeSuite_OptionElemental").id);
const result = { steps: [], console: [] };
const step = (name, data) => result.steps.push({ name, ...data });

const profile = mkdtempSync(join(tmpdir(), "merge-suite-chromium-"));
// A fresh profile (--user-data-dir) every run; Playwright passes it from the first argument.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 2000 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") result.console.push(m.text()); });
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  const prompts = [];
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/api/prompt")) prompts.push(JSON.parse(r.postData()));
  });
  const answers = [];
  page.on("response", async (r) => {
    if (r.request().method() === "POST" && r.url().endsWith("/api/prompt")) answers.push({ status: r.status(), body: await r.text() });
  });

  // A fresh server has no settings: skip the first-run template browser.
  // VUE_NODES=1: the same checks with the frontend's Vue node rendering ("Nodes 2.0").
  await page.request.post(`${url}/api/settings`, {
    data: { "Comfy.TutorialCompleted": true, "Comfy.VueNodes.Enabled": process.env.VUE_NODES === "1",
      "Comfy.NodeSearchBoxImpl.ShowIdName": true },
  });
  await page.goto(url);
  // Ready when the node definitions are registered and the start-up workflow is in place.
  await page.waitForFunction(() => {
    const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    return window.comfyAPI?.app?.app?.graph && LG?.registered_node_types?.MergeSuite_CheckpointMerge
      && window.comfyAPI.app.app.graph.nodes.length > 0;
  }, null, { timeout: 90000 });
  result.extensions = await page.evaluate(() => window.comfyAPI.app.app.extensions.map((e) => e.name).filter((n) => n.startsWith("merge_suite")));
  // The node search box as a user meets it: opened with the frontend's command for it, "merge" typed, the
  // node ids the list shows (a badge each, ShowIdName above; a subgraph blueprint has none). "ranked" is
  // the frontend's search service's own list with each node's name and display name, which it ranks by.
  await page.evaluate(() => window.comfyAPI.app.app.extensionManager.command.execute("Workspace.SearchBox.Toggle"));
  const searchInput = page.locator(".comfy-vue-node-search-container input, [role=search] input").first();
  await searchInput.waitFor({ state: "visible", timeout: 15000 });
  await searchInput.click();
  await page.keyboard.type("merge");
  const options = "[role=option]:has(.option-container)";
  await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 8, options, { timeout: 15000 });
  await page.waitForTimeout(800); // the v1 box completes after a 100 ms delay: let the list settle
  result.search = {
    shown: await page.evaluate((sel) => [...document.querySelectorAll(sel)].slice(0, 16).map((o) =>
      o.querySelector("[data-testid=node-id-badge], .p-tag")?.textContent.trim() || null), options),
    ranked: await page.evaluate(() => {
      const host = document.querySelector("#vue-app") ?? [...document.querySelectorAll("body > *")].find((e) => e.__vue_app__);
      const store = host?.__vue_app__?.config?.globalProperties?.$pinia?._s?.get("nodeDef");
      return (store?.nodeSearchService?.searchNode("merge") ?? []).slice(0, 16).map((d) => [d.name, d.display_name]);
    }),
  };
  await page.keyboard.press("Escape");
  await searchInput.waitFor({ state: "hidden", timeout: 10000 });

  await page.evaluate(async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }, workflow);
  const editor = page.locator(`.ms-block-editor[data-input=blocks_alpha]`);
  await editor.waitFor({ state: "attached", timeout: 30000 });
  await page.locator(".ms-elemental-helper").waitFor({ state: "attached", timeout: 30000 });

  // Right after loading, without panning or moving the mouse: every panel (block editors, elemental
  // helper, text outputs) must lie inside its node's box on screen, as drawn by either renderer.
  await page.waitForTimeout(1500);
  const placement = () => page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const s = app.canvas.ds.scale;
    const out = [];
    for (const node of app.graph.nodes) {
      const vue = document.querySelector(`[data-node-id="${node.id}"]`);
      let box;
      if (vue) {
        const r = vue.getBoundingClientRect();
        box = { left: r.left, top: r.top, right: r.right, bottom: r.bottom };
      } else {
        const [x, y] = app.canvas.ds.convertOffsetToCanvas(node.pos);
        const title = (LG?.NODE_TITLE_HEIGHT ?? 30) * s;
        box = { left: rect.left + x, top: rect.top + y - title, right: rect.left + x + node.size[0] * s,
          bottom: rect.top + y + node.size[1] * s };
      }
      for (const w of node.widgets ?? []) {
        if (w.type !== "merge_suite_panel" || !w.element?.isConnected) continue;
        const r = w.element.getBoundingClientRect();
        const shown = r.width > 0 && r.height > 0 && getComputedStyle(w.element).visibility !== "hidden"
          && w.element.closest("[style*='display: none']") === null;
        if (!shown) continue;
        out.push({ node: String(node.id), type: node.type, widget: w.name, box,
          panel: { left: r.left, top: r.top, right: r.right, bottom: r.bottom } });
      }
    }
    return out;
  });
  result.placementAfterLoad = await placement();
  await page.screenshot({ path: join(outDir, "after_load.png") });
  // The merge node's height at 100 % zoom (title included), as loaded and after a run shows its report.
  const nodeHeight = (id) => page.evaluate((id) => {
    const app = window.comfyAPI.app.app;
    const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    const node = app.graph.getNodeById(Number(id));
    const vue = document.querySelector(`[data-node-id="${id}"]`);
    if (vue) return vue.getBoundingClientRect().height / app.canvas.ds.scale;
    return node.size[1] + (LG?.NODE_TITLE_HEIGHT ?? 30);
  }, id);
  result.heightAfterLoad = await nodeHeight(MERGE);

  // Put a node at the top left of the screen (clear of the side bar) at 100 % zoom.
  const showNode = (id = MERGE) => page.evaluate((id) => {
    const app = window.comfyAPI.app.app;
    const node = app.graph.getNodeById(Number(id));
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-node.pos[0] + 110, -node.pos[1] + 150];
    app.canvas.setDirty(true, true);
  }, id);
  await showNode();
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha]")?.dataset.state === "ok");
  await page.waitForTimeout(300);

  const widgetValues = (names) => page.evaluate(([id, names]) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(Number(id));
    return Object.fromEntries(names.map((n) => [n, node.widgets.find((w) => w.name === n)?.value]));
  }, [MERGE, names]);
  const status = (sel) => page.locator(`${sel} .ms-status`).textContent();
  // A hand edit of the text input, as a paste or another extension would do it.
  const setBlocksAlpha = (text) => page.evaluate(([id, text]) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(Number(id));
    node.widgets.find((w) => w.name === "blocks_alpha").value = text;
  }, [MERGE, text]);

  step("loaded", {
    widgets: await widgetValues(["blocks_alpha", "blocks_alpha_preset"]),
    sliders: await editor.locator("input[type=range]").count(),
    status: await status(".ms-block-editor[data-input=blocks_alpha]"),
    in05: await editor.locator("input[data-block=IN05]").inputValue(),
  });

  // Move a slider the way a user does: focus it and press a key.
  const slider = editor.locator("input[data-block=IN05]");
  await slider.focus();
  for (let i = 0; i < 5; i++) await page.keyboard.press("ArrowUp");
  await page.waitForTimeout(600);
  step("slider", {
    widgets: await widgetValues(["blocks_alpha", "blocks_alpha_preset"]),
    in05: await slider.inputValue(),
    status: await status(".ms-block-editor[data-input=blocks_alpha]"),
  });

  const apiPrompt = await page.evaluate(async () => (await window.comfyAPI.app.app.graphToPrompt()).output);
  step("graphToPrompt", { inputs: apiPrompt[MERGE].inputs });
  await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1));
  // The run finishes when the merge node shows its report (text outputs on nodes).
  const output = page.locator(".ms-output");
  await page.waitForFunction(() => [...document.querySelectorAll(".ms-output")].some((t) => t.value.includes("OUT")), null, { timeout: 120000 })
    .catch(() => { throw new Error(`no report on the node; /prompt answered ${JSON.stringify(answers).slice(0, 2000)}`); });
  step("queued", { prompt: prompts[0]?.prompt?.[MERGE]?.inputs, answer: answers[0]?.status, report: await output.first().inputValue() });
  await page.waitForTimeout(300);
  result.heightAfterRun = await nodeHeight(MERGE);

  // Pick a preset from the editor's dropdown.
  await editor.locator("select").nth(1).selectOption("FLAT_25");
  // The status line is rewritten after the check route answers: wait for it (a loaded CI machine
  // took longer than a fixed pause), and on a timeout record what is shown so the test names it.
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha] .ms-status")
    ?.textContent.includes("FLAT_25"), null, { timeout: 20000 }).catch(() => {});
  await page.waitForTimeout(300);
  step("preset", { widgets: await widgetValues(["blocks_alpha", "blocks_alpha_preset"]), status: await status(".ms-block-editor[data-input=blocks_alpha]") });

  // Group helper: multiply the OUT group by 2.
  await editor.locator("select").nth(2).selectOption("OUT");
  await editor.locator("input[type=number]").fill("2");
  await editor.locator("button", { hasText: "mul" }).click();
  await page.waitForTimeout(600);
  step("group", { widgets: await widgetValues(["blocks_alpha", "blocks_alpha_preset"]) });

  // A hand-edited string with junk: an error on the widget, the text left as typed.
  await setBlocksAlpha("0.5,0.5,junk");
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha]")?.dataset.state === "error");
  step("junk", { widgets: await widgetValues(["blocks_alpha"]), status: await status(".ms-block-editor[data-input=blocks_alpha]") });
  await setBlocksAlpha("0.5,0.5");
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha] .ms-status")?.textContent.includes("2 values"));
  step("count", { status: await status(".ms-block-editor[data-input=blocks_alpha]") });
  await setBlocksAlpha("SMOOTHSTEP");
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha]")?.dataset.state === "ok");

  // Elemental: type a malformed rule into the option node's own textarea.
  // Vue-rendered nodes draw their own textarea inside the node's element; LiteGraph ones use the widget's.
  await showNode(ELEMENTAL);
  await page.waitForTimeout(300);
  const vueBox = page.locator(`[data-node-id="${ELEMENTAL}"] textarea:not(.ms-output)`);
  const box = (await vueBox.count()) ? vueBox.first() : (await page.evaluateHandle((id) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(Number(id));
    const w = node.widgets.find((x) => x.name === "elemental");
    return w.element ?? w.inputEl;
  }, ELEMENTAL)).asElement();
  await box.click();
  await box.fill("");
  await page.keyboard.type("OUT03-OUT05:attn2:0.5\nIN99:attn:1");
  const helper = page.locator(".ms-elemental-helper");
  await page.waitForFunction(() => document.querySelector(".ms-elemental-helper")?.dataset.state === "error");
  step("elemental_bad", { status: await status(".ms-elemental-helper") });
  await page.keyboard.press("Control+A");
  await page.keyboard.type("OUT03-OUT05:attn2:0.5\nIN08:attn:1");
  await page.waitForFunction(() => document.querySelector(".ms-elemental-helper")?.dataset.state === "ok");
  await helper.locator("select").nth(1).selectOption("OUT04");
  await page.waitForFunction(() => document.querySelectorAll(".ms-elemental-helper .ms-elements div").length > 0);
  await helper.locator(".ms-elements div", { hasText: "attn2.to_k" }).first().click();
  // The status is rewritten when the check route answers for the appended rule: wait for it, not a fixed pause.
  await page.waitForFunction(() => document.querySelector(".ms-elemental-helper .ms-status")?.textContent
    .includes("3 rule(s)"), null, { timeout: 20000 }).catch(() => {});
  await page.waitForTimeout(200);
  step("elemental_ok", {
    status: await status(".ms-elemental-helper"),
    elements: await helper.locator(".ms-elements div").allTextContents(),
    value: await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(Number(id)).widgets
      .find((w) => w.name === "elemental").value, ELEMENTAL),
    // the helper sits right under the text box it checks
    gap: await page.evaluate((id) => {
      const node = window.comfyAPI.app.app.graph.getNodeById(Number(id));
      const text = node.widgets.find((w) => w.name === "elemental");
      const textEl = document.querySelector(`[data-node-id="${id}"] textarea:not(.ms-output)`) ?? text.element ?? text.inputEl;
      const helperEl = document.querySelector(".ms-elemental-helper");
      return helperEl.getBoundingClientRect().top - textEl.getBoundingClientRect().bottom;
    }, ELEMENTAL),
  });

  // Screenshot of the merge node with its editor, for the README and the test output.
  await showNode();
  await page.waitForTimeout(500);
  const clip = await page.evaluate((id) => {
    const app = window.comfyAPI.app.app;
    const node = app.graph.getNodeById(Number(id));
    const rect = app.canvas.canvas.getBoundingClientRect();
    const [x, y] = app.canvas.ds.convertOffsetToCanvas(node.pos);
    const s = app.canvas.ds.scale;
    return { x: rect.left + x - 12, y: rect.top + y - 42, width: node.size[0] * s + 24, height: node.size[1] * s + 54 };
  }, MERGE);
  result.screenshot = join(outDir, "block_editor.png");
  await page.screenshot({ path: result.screenshot, clip });
  await page.screenshot({ path: join(outDir, "page.png") });

  result.workflow = await page.evaluate(() => window.comfyAPI.app.app.graph.serialize());

  // A long layout: Flux.1's 61 slots, grouped and folding, with the named-range entry.
  const fluxState = () => page.evaluate((id) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(Number(id));
    const root = document.querySelector(".ms-block-editor[data-input=blocks_alpha]");
    const range = (b) => root.querySelector(`input[data-block="${b}"]`);
    return {
      text: node.widgets.find((w) => w.name === "blocks_alpha").value,
      preset: node.widgets.find((w) => w.name === "blocks_alpha_preset").value,
      sliders: root.querySelectorAll("input[type=range]").length,
      groups: [...root.querySelectorAll(".ms-group")].map((g) => [g.dataset.group, g.querySelectorAll("input[type=range]").length, g.dataset.folded]),
      shownS: [...root.querySelectorAll(".ms-group[data-group=S] input[type=range]")].filter((i) => i.offsetParent !== null).length,
      panelHeight: root.getBoundingClientRect().height,
      status: root.querySelector(".ms-status").textContent,
      state: root.dataset.state,
      values: { D00: range("D00")?.value, D18: range("D18")?.value, S05: range("S05")?.value, OUT: range("OUT")?.value },
      groupOptions: [...root.querySelectorAll("select")[2].options].map((o) => o.value),
    };
  }, MERGE);
  await showNode();
  await setBlocksAlpha("");
  await editor.locator("select").nth(0).selectOption("flux1");
  await page.waitForFunction(() => document.querySelectorAll(".ms-block-editor[data-input=blocks_alpha] input[type=range]").length === 61);
  await page.waitForTimeout(500);
  step("flux_layout", await fluxState());
  await page.screenshot({ path: join(outDir, "flux_editor.png") });
  await editor.locator(".ms-group[data-group=S] .ms-group-head").click();
  await page.waitForTimeout(300);
  step("flux_fold", await fluxState());
  await editor.locator(".ms-group[data-group=S] .ms-group-head").click();
  await page.waitForTimeout(300);
  // Named entry on an empty text stays named (the node reads that form); a second entry is appended.
  await editor.locator("input.ms-named").fill("D00-D18=0.3");
  await editor.locator("button", { hasText: "apply" }).click();
  await editor.locator("input.ms-named").fill("S00-S37=0.7, OUT=1");
  await editor.locator("input.ms-named").press("Enter");
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha] .ms-status")?.textContent.includes("named values for 58"));
  step("flux_named", await fluxState());
  // On a list, the entry is applied to the values and written as a list; an unknown id is an error.
  await setBlocksAlpha(Array(61).fill("0.5").join(","));
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha] .ms-status")?.textContent.includes("61 values"));
  await editor.locator("input.ms-named").fill("D05-D07=0.9");
  await editor.locator("button", { hasText: "apply" }).click();
  await page.waitForTimeout(600);
  step("flux_list", await fluxState());
  await editor.locator("input.ms-named").fill("D19=1");
  await editor.locator("button", { hasText: "apply" }).click();
  await page.waitForTimeout(300);
  step("flux_unknown", await fluxState());
  result.placementFlux = await placement();

  // "Follow the run" on a family sized by its model: the SD3 example merges the tiny SD3 files (2 joint
  // blocks; SD3-medium has 24, SD3.5-large 38). Before the run "auto" fits the text to full-size SD3.
  const sd3Workflow = JSON.parse(readFileSync(join(examplesDir, "family_sd3_unet_merge_save.json"), "utf8"));
  const SD3_MERGE = String(sd3Workflow.nodes.find((n) => n.type === "MergeSuite_ModelMerge").id);
  await page.evaluate(async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }, sd3Workflow);
  const sd3State = () => page.evaluate((id) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(Number(id));
    const root = document.querySelector(".ms-block-editor[data-input=blocks_alpha]");
    const ranges = [...root.querySelectorAll("input[type=range]")];
    return { layout: root.querySelector(".ms-sliders").dataset.layout, sliders: ranges.length,
      ids: ranges.map((r) => r.dataset.block), status: root.querySelector(".ms-status").textContent,
      state: root.dataset.state, property: node.properties?.merge_suite_family ?? null };
  }, SD3_MERGE);
  const sd3Sliders = (n) => page.waitForFunction((n) => document.querySelectorAll(
    ".ms-block-editor[data-input=blocks_alpha] input[type=range]").length === n, n, { timeout: 30000 });
  await sd3Sliders(41);
  step("sd3_before", await sd3State());
  const queued = answers.length;
  await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1));
  await page.waitForFunction(() => document.querySelector(".ms-block-editor[data-input=blocks_alpha] .ms-sliders")
    ?.dataset.layout?.startsWith("sd3:"), null, { timeout: 120000 })
    .catch(() => { throw new Error(`the editor did not follow the SD3 run; /prompt answered ${JSON.stringify(answers.slice(queued)).slice(0, 2000)}`); });
  await page.waitForTimeout(500);
  step("sd3_run", await sd3State());
  await page.locator(".ms-block-editor[data-input=blocks_alpha] select").nth(0).selectOption("sd3");
  await sd3Sliders(41);
  step("sd3_full", await sd3State());

  // Combine Models shows only the chosen method's inputs (web/js/method_inputs.js): the widgets the canvas
  // draws and, with Vue nodes, the widget rows on the page, as loaded (TIES) and after picking methods the
  // way a widget edit does; the prompt still carries every input with the saved values.
  const combineWorkflow = JSON.parse(readFileSync(join(examplesDir, "combine_ties_three_fine_tunes.json"), "utf8"));
  const COMBINE = String(combineWorkflow.nodes.find((n) => n.type === "MergeSuite_CombineModels").id);
  await page.evaluate(async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }, combineWorkflow);
  await page.waitForFunction((id) => window.comfyAPI.app.app.graph.getNodeById(Number(id))?.widgets
    ?.some((w) => w.name === "blocks_alpha_editor"), COMBINE, { timeout: 30000 });
  await showNode(COMBINE);
  await page.waitForTimeout(800);
  const combineState = () => page.evaluate((id) => {
    const app = window.comfyAPI.app.app;
    const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    const node = app.graph.getNodeById(Number(id));
    const vue = document.querySelector(`[data-node-id="${id}"]`);
    const rows = vue ? [...vue.querySelectorAll(".lg-node-widget")]
      .filter((e) => e.getBoundingClientRect().height > 0) : null;
    return {
      method: node.widgets.find((w) => w.name === "method").value,
      drawn: node.widgets.filter((w) => node.isWidgetVisible(w)).map((w) => w.name),
      panels: node.widgets.filter((w) => w.type === "merge_suite_panel").map((w) => w.name),
      // the panels' heights (a run's report fills its panel, and the frontend hands a node the outputs of the
      // node that had its id in the workflow shown before), to compare the heights of the widgets alone
      panelHeight: node.widgets.filter((w) => w.type === "merge_suite_panel")
        .reduce((sum, w) => sum + (w.options?.getMinHeight?.() ?? 0), 0),
      rendered: rows?.length ?? null,
      height: vue ? vue.getBoundingClientRect().height / app.canvas.ds.scale
        : node.size[1] + (LG?.NODE_TITLE_HEIGHT ?? 30),
    };
  }, COMBINE);
  const pickMethod = async (name) => {
    await page.evaluate(([id, name]) => {
      const app = window.comfyAPI.app.app;
      const node = app.graph.getNodeById(Number(id));
      const widget = node.widgets.find((w) => w.name === "method");
      widget.value = name;
      widget.callback?.(name, app.canvas, node);
      app.canvas.setDirty(true, true);
    }, [COMBINE, name]);
    await page.waitForTimeout(800);
  };
  step("combine_loaded", await combineState());
  await page.screenshot({ path: join(outDir, "combine_ties.png") });
  await pickMethod("della");
  step("combine_della", { ...await combineState(),
    inputs: await page.evaluate(async (id) => (await window.comfyAPI.app.app.graphToPrompt()).output[id].inputs,
      COMBINE) });
  await page.screenshot({ path: join(outDir, "combine_della.png") });
  await pickMethod("geometric_median");
  step("combine_median", await combineState());
  await pickMethod("model_stock");
  step("combine_stock", await combineState());
  result.placementCombine = await placement();

  // Every example workflow as the frontend turns it into a prompt (widget values in the right inputs).
  result.examples = {};
  for (const name of readdirSync(examplesDir).filter((f) => f.endsWith(".json")).sort()) {
    const wf = JSON.parse(readFileSync(join(examplesDir, name), "utf8"));
    result.examples[name] = await page.evaluate(async (w) => {
      const app = window.comfyAPI.app.app;
      await app.loadGraphData(w);
      return (await app.graphToPrompt()).output;
    }, wf);
  }
} catch (e) {
  result.error = String(e?.stack || e);
  await browser.pages()[0]?.screenshot({ path: join(outDir, "failure.png") }).catch(() => {});
  result.dialogs = await browser.pages()[0]?.evaluate(() => [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText.slice(0, 500))).catch(() => []);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));
