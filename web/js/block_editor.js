// Block-weight editor: one slider per block, a preset picker and set / add / multiply on groups,
// under every block-weight STRING input of the merge nodes. The STRING stays the source of truth:
// the editor reads it (parsed by the server with merge_core, so it shows what the node will use)
// and writes plain comma-separated numbers back; a preset picked in its list is written by name. Without this file the nodes work as before.
import { app } from "../../../scripts/app.js";
import {
  addPanel, debounce, el, findWidget, getEditorData, injectStyle, isPackNode, postJson, setWidgetValue, watchValue,
} from "./common.mjs";

const BLOCK_INPUTS = ["blocks_alpha", "blocks_beta"];
const CUSTOM = "custom";
const HEIGHT = 158;
const FOLDED_HEIGHT = 30; // the header row alone
// Modes whose result uses beta; elsewhere an empty beta editor starts folded to keep the node short.
const BETA_MODES = ["Triple sum", "sum Twice"];

function fmt(v) {
  return String(Number(v.toFixed(6)));
}

class BlockEditor {
  constructor(node, text, presetCombo, scalar, data, foldUnless) {
    Object.assign(this, { node, text, presetCombo, scalar, data, foldUnless });
    this.layout = "sd1";
    this.values = null;
    this.folded = Boolean(foldUnless) && !foldUnless() && !this.effectiveText();
    this.build();
    const refresh = debounce(() => this.refresh(), 150);
    watchValue(node, text, refresh);
    if (presetCombo) watchValue(node, presetCombo, refresh);
    if (scalar) watchValue(node, scalar, refresh); // shown on the sliders while the text is empty
    this.refresh();
  }

  build() {
    const { data } = this;
    this.layoutSelect = el("select", { title: "Block layout: auto follows the number of values in the text" }, [
      el("option", { value: "auto", textContent: "auto" }),
      ...Object.entries(data.layouts).map(([k, l]) => el("option", { value: k, textContent: `${l.label} (${l.blocks.length})` })),
    ]);
    this.presetSelect = el("select", { title: "Use a SuperMerger preset (by name, so recipes and grid labels show it)" }, [
      el("option", { value: "", textContent: "preset…" }),
      ...Object.keys(data.presets).map((n) => el("option", { value: n, textContent: n })),
    ]);
    this.groupSelect = el("select", { title: "Group the helper acts on" },
      ["ALL", ...Object.keys(data.layouts.sd1.groups)].map((g) => el("option", { value: g, textContent: g })));
    this.amount = el("input", { type: "number", value: "0.5", step: "0.05", title: "Value for set / add / multiply" });
    const op = (name, f) => el("button", { textContent: name, title: `${name} the group's values`, onclick: () => this.apply(f) });
    this.status = el("div", { className: "ms-status" });
    this.sliders = el("div", { className: "ms-sliders" });
    this.foldButton = el("button", { title: "Show or hide this editor", onclick: () => this.setFolded(!this.folded) });
    this.body = el("div", { className: "ms-editor-body" }, [
      this.sliders,
      el("div", { className: "ms-row" }, [el("span", { textContent: "group" }), this.groupSelect, this.amount,
        op("set", (v, x) => x), op("add", (v, x) => v + x), op("mul", (v, x) => v * x)]),
      this.status,
    ]);
    this.root = el("div", { className: "ms-panel ms-block-editor", dataset: { input: this.text.name } }, [
      el("div", { className: "ms-row" }, [this.foldButton, el("b", { textContent: this.text.name }), this.layoutSelect, this.presetSelect]),
      this.body,
    ]);
    this.layoutSelect.onchange = () => this.refresh();
    this.presetSelect.onchange = () => this.pickPreset(this.presetSelect.value);
    this.widget = addPanel(this.node, `${this.text.name}_editor`, this.root, () => (this.folded ? FOLDED_HEIGHT : HEIGHT));
    this.showFolded();
  }

  showFolded() {
    this.body.style.display = this.folded ? "none" : "";
    this.foldButton.textContent = this.folded ? "▸" : "▾";
    this.root.dataset.folded = String(this.folded);
  }

  /** Fold to one line or open; the node's height follows. */
  setFolded(folded) {
    if (folded === this.folded) return;
    this.folded = folded;
    this.showFolded();
    this.widget.fitPanel();
    this.node.setSize?.([this.node.size[0], this.node.computeSize()[1]]);
    this.node.setDirtyCanvas?.(true, true);
  }

  /** Open a folded editor once its ratio matters (a mode that uses it, or text / a preset to show). */
  unfoldIfUsed() {
    if (this.folded && (this.foldUnless?.() || this.effectiveText())) this.setFolded(false);
  }

  /** What the node will use: the text, or the chosen preset when the text is empty. */
  effectiveText() {
    const text = (this.text.value ?? "").trim();
    const preset = this.presetCombo?.value;
    return !text && preset && preset !== CUSTOM ? preset : text;
  }

  async refresh() {
    this.unfoldIfUsed();
    const text = this.effectiveText();
    let answer;
    try {
      answer = await postJson("/merge_suite/check/block_weights", { text, layout: this.layoutSelect.value });
    } catch (e) {
      return this.showStatus(`cannot reach the server: ${e.message}`, true);
    }
    if (text !== this.effectiveText()) return; // changed meanwhile; a newer refresh follows
    if (!answer.ok) {
      this.sliders.classList.add("ms-disabled");
      this.setSlidersEnabled(false);
      return this.showStatus(`✗ ${answer.error} Fix: ${answer.fix}`, true);
    }
    this.sliders.classList.remove("ms-disabled");
    if (answer.empty) {
      this.layout = answer.layout ?? (this.layoutSelect.value === "auto" ? this.layout : this.layoutSelect.value);
      const n = this.data.layouts[this.layout].blocks.length;
      this.values = Array(n).fill(Number(this.scalar?.value ?? 0.5));
      this.render();
      this.sliders.classList.add("ms-disabled");
      return this.showStatus(`empty: the scalar ${this.scalar?.name ?? "ratio"} applies to every block; move a slider to set blocks`, false);
    }
    this.layout = answer.layout;
    this.values = answer.values;
    this.render();
    const label = this.data.layouts[this.layout].label;
    const from = answer.preset ? `preset ${answer.preset}` : `${answer.values.length} values`;
    this.showStatus(`${label}: ${from}`, false);
  }

  showStatus(message, error) {
    this.status.textContent = message;
    this.status.className = `ms-status ${error ? "ms-error" : "ms-ok"}`;
    this.root.dataset.state = error ? "error" : "ok";
  }

  setSlidersEnabled(on) {
    for (const s of this.sliders.querySelectorAll("input")) s.disabled = !on;
  }

  render() {
    const { blocks, groups } = this.data.layouts[this.layout];
    const groupOf = Object.fromEntries(Object.entries(groups).flatMap(([g, bs]) => bs.map((b) => [b, g])));
    const lo = Math.min(0, ...this.values);
    const hi = Math.max(1, ...this.values);
    if (this.sliders.childElementCount !== blocks.length) {
      this.sliders.replaceChildren(...blocks.map((b, i) => {
        const input = el("input", { type: "range", step: "0.01", dataset: { block: b } });
        input.oninput = () => this.moveSlider(i, Number(input.value));
        return el("label", { className: `ms-block ms-${groupOf[b]}` }, [input, el("span", { textContent: b })]);
      }));
      this.sliders.style.gridTemplateColumns = `repeat(${blocks.length}, 1fr)`;
    }
    this.sliders.querySelectorAll("input").forEach((input, i) => {
      Object.assign(input, { min: String(lo), max: String(hi), disabled: false });
      input.value = String(this.values[i]);
      input.title = `${blocks[i]} = ${fmt(this.values[i])}`;
    });
  }

  moveSlider(i, value) {
    if (!this.values) return;
    this.values[i] = value;
    this.sliders.querySelectorAll("input")[i].title = `${this.data.layouts[this.layout].blocks[i]} = ${fmt(value)}`;
    this.write(this.values);
  }

  write(values) {
    // A chosen preset would clash with text (the node refuses both), so the text takes over.
    if (this.presetCombo && this.presetCombo.value !== CUSTOM) setWidgetValue(this.node, this.presetCombo, CUSTOM);
    setWidgetValue(this.node, this.text, values.map(fmt).join(","));
    this.refreshSoon ??= debounce(() => this.refresh(), 250);
    this.refreshSoon();
  }

  apply(f) {
    if (!this.values || this.root.dataset.state === "error") return;
    const x = Number(this.amount.value);
    if (!Number.isFinite(x)) return this.showStatus("the helper value is not a number", true);
    const { blocks, groups } = this.data.layouts[this.layout];
    const chosen = this.groupSelect.value === "ALL" ? blocks : groups[this.groupSelect.value];
    this.write(this.values.map((v, i) => (chosen.includes(blocks[i]) ? f(v, x) : v)));
  }

  /** Choose a preset by name (the node's preset combo, else the text), so recipes and labels keep the name. */
  async pickPreset(name) {
    if (!name) return;
    this.presetSelect.value = "";
    const choices = this.presetCombo?.options?.values;
    if (this.presetCombo && (!Array.isArray(choices) || choices.includes(name))) {
      setWidgetValue(this.node, this.text, "");
      setWidgetValue(this.node, this.presetCombo, name);
    } else {
      setWidgetValue(this.node, this.text, name);
    }
    await this.refresh();
  }
}

app.registerExtension({
  name: "merge_suite.block_editor",
  async nodeCreated(node) {
    if (!isPackNode(node)) return;
    const inputs = BLOCK_INPUTS.map((name) => findWidget(node, name)).filter(Boolean);
    if (!inputs.length) return;
    injectStyle();
    const data = await getEditorData();
    const mode = findWidget(node, "mode");
    const usesBeta = () => BETA_MODES.includes(mode?.value);
    for (const text of inputs) {
      const scalar = findWidget(node, text.name.replace("blocks_", ""));
      node.mergeSuiteEditors ??= {};
      const foldUnless = text.name === "blocks_beta" ? usesBeta : null;
      const editor = new BlockEditor(node, text, findWidget(node, `${text.name}_preset`), scalar, data, foldUnless);
      node.mergeSuiteEditors[text.name] = editor;
      if (mode && foldUnless) watchValue(node, mode, () => editor.unfoldIfUsed());
    }
    node.setSize?.([Math.max(node.size[0], 420), node.computeSize()[1]]);
  },
});
