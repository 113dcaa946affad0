// Elemental helper: live validation of the `elemental` text by the server's parser (merge_core's
// parse_elemental, the one the node runs), with the failing entry and where it is, and the element
// names of a chosen block (from the key inventory of a full-size model) to insert as rules.
import { app } from "../../../scripts/app.js";
import { addPanel, debounce, el, findWidget, getEditorData, getJson, injectStyle, isPackNode, postJson, setWidgetValue, watchValue } from "./common.mjs";

const HEIGHT = 150;

function lineCol(text, offset) {
  const before = text.slice(0, offset).split("\n");
  return `line ${before.length}, column ${before[before.length - 1].length + 1}`;
}

class ElementalHelper {
  constructor(node, text, data) {
    Object.assign(this, { node, text, data });
    this.layoutSelect = el("select", { title: "Block names of this layout" },
      Object.entries(data.layouts).map(([k, l]) => el("option", { value: k, textContent: l.label })));
    this.blockSelect = el("select", { title: "Show the element names of this block" });
    this.filter = el("input", { type: "text", placeholder: "filter, e.g. attn2", style: { flex: "1", minWidth: "0" } });
    this.status = el("div", { className: "ms-status" });
    this.list = el("div", { className: "ms-elements", title: "Click to add a rule for this element" });
    this.root = el("div", { className: "ms-panel ms-elemental-helper" }, [
      this.status,
      el("div", { className: "ms-row" }, [el("b", { textContent: "elements" }), this.layoutSelect, this.blockSelect, this.filter]),
      this.list,
    ]);
    this.layoutSelect.onchange = () => { this.fillBlocks(); this.validate(); };
    this.blockSelect.onchange = () => this.loadElements();
    this.filter.oninput = debounce(() => this.showElements(), 150);
    this.fillBlocks();
    addPanel(node, "elemental_helper", this.root, HEIGHT);
    watchValue(node, text, debounce(() => this.validate(), 200));
    this.validate();
  }

  fillBlocks() {
    const blocks = this.data.layouts[this.layoutSelect.value].blocks;
    const keep = this.blockSelect.value;
    this.blockSelect.replaceChildren(...blocks.map((b) => el("option", { value: b, textContent: b })));
    this.blockSelect.value = blocks.includes(keep) ? keep : "OUT04";
    this.loadElements();
  }

  async loadElements() {
    const q = new URLSearchParams({ layout: this.layoutSelect.value, block: this.blockSelect.value });
    this.elements = (await getJson(`/merge_suite/elements?${q}`)).elements ?? [];
    this.showElements();
  }

  showElements() {
    const f = this.filter.value.trim();
    const shown = (this.elements ?? []).filter((e) => !f || e.includes(f));
    this.list.replaceChildren(...shown.slice(0, 300).map((e) =>
      el("div", { textContent: e, onclick: () => this.addRule(e) })));
  }

  addRule(element) {
    const current = (this.text.value ?? "").replace(/\s+$/, "");
    const rule = `${this.blockSelect.value}:${element}:0.5`;
    setWidgetValue(this.node, this.text, current ? `${current}\n${rule}` : rule);
    this.validate();
  }

  async validate() {
    const text = this.text.value ?? "";
    let answer;
    try {
      answer = await postJson("/merge_suite/check/elemental", { text, layout: this.layoutSelect.value });
    } catch (e) {
      return this.show(`cannot reach the server: ${e.message}`, true);
    }
    if (text !== (this.text.value ?? "")) return; // a newer check follows
    if (answer.ok) {
      const label = this.data.layouts[this.layoutSelect.value].label;
      return this.show(answer.rules ? `✓ ${answer.rules} rule(s), valid for ${label}` : "no rules", false);
    }
    const where = answer.start !== undefined ? ` (${lineCol(text, answer.start)})` : "";
    this.show(`✗${where} ${answer.error} Fix: ${answer.fix}`, true);
  }

  show(message, error) {
    this.status.textContent = message;
    this.status.className = `ms-status ${error ? "ms-error" : "ms-ok"}`;
    this.root.dataset.state = error ? "error" : "ok";
  }
}

app.registerExtension({
  name: "merge_suite.elemental_helper",
  async nodeCreated(node) {
    if (!isPackNode(node)) return;
    const text = findWidget(node, "elemental");
    if (!text) return;
    injectStyle();
    node.mergeSuiteElemental = new ElementalHelper(node, text, await getEditorData());
  },
});
