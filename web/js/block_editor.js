// Block-weight editor: one slider per block, a preset picker and set / add / multiply on groups,
// under every block-weight STRING input of the merge nodes. The STRING stays the source of truth:
// the editor reads it (parsed by the server with merge_core, so it shows what the node will use)
// and writes plain comma-separated numbers back; a preset picked in its list is written by name. Without this file the nodes work as before.
// Long layouts (the transformer families: Flux.1's 61 slots, Qwen-Image's 63, ...) come from the server too
// (editor_data "families"); their sliders are grouped by block group (BASE, IN, D, S, OUT, ...), each group
// folds, and a named-range entry ("D00-D18=0.3") sets ranges. After a run, "auto" shows the layout the node
// used: the family with the model's own block counts (ui "merge_suite_layout", e.g. "sd3:24" for SD3-medium),
// or, from nodes that do not send it, the family named by the report at full size.
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
// Long layouts: sliders per grid row, and the heights of a group's header and of one slider row.
const GROUP_COLUMNS = 20;
const GROUP_HEAD = 17;
const GROUP_ROW = 64;
const LONG_CONTROLS = 4 * 24;
const SMALL_GROUP = 4; // groups this small (BASE, IN, OUT) sit side by side on one line // the header, named-range and group-helper rows and the status line
const FAMILY_PROPERTY = "merge_suite_family"; // the layout the last run reported, kept with the workflow

function fmt(v) {
  return String(Number(v.toFixed(6)));
}

class BlockEditor {
  constructor(node, text, presetCombo, scalar, data, foldUnless) {
    Object.assign(this, { node, text, presetCombo, scalar, data, foldUnless });
    this.layout = "sd1";
    this.values = null;
    this.foldedGroups = new Set();
    this.sized = {}; // layouts sized to a model ("sd3:24"), as the server sent them with a check answer
    this.connected = node.properties?.[FAMILY_PROPERTY] ?? null;
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
      el("optgroup", { label: "transformer families (full size)" }, Object.entries(data.families ?? {}).map(
        ([k, l]) => el("option", { value: k, textContent: `${l.label} (${l.blocks.length})` }))),
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
    this.namedInput = el("input", { type: "text", className: "ms-named", placeholder: "D00-D18=0.3, OUT=1",
      title: "Set blocks by id or range in layout order (ALL for every block); Enter or apply" });
    this.namedInput.onkeydown = (e) => { if (e.key === "Enter") this.applyNamed(); };
    this.namedRow = el("div", { className: "ms-row ms-named-row" }, [el("span", { textContent: "set" }), this.namedInput,
      el("button", { textContent: "apply", title: "Apply the named values", onclick: () => this.applyNamed() })]);
    this.foldButton = el("button", { title: "Show or hide this editor", onclick: () => this.setFolded(!this.folded) });
    this.body = el("div", { className: "ms-editor-body" }, [
      this.sliders,
      this.namedRow,
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
    this.widget = addPanel(this.node, `${this.text.name}_editor`, this.root, () => this.height());
    this.showFolded();
  }

  info(name = this.layout) {
    return this.data.layouts[name] ?? this.sized[name] ?? this.data.families?.[name];
  }

  isLong(name = this.layout) {
    return Boolean(this.sized[name] ?? this.data.families?.[name]);
  }

  /** Panel height: SD layouts as before; long layouts by their groups, folded ones as a header line. */
  height() {
    if (this.folded) return FOLDED_HEIGHT;
    if (!this.isLong()) return HEIGHT;
    let height = LONG_CONTROLS;
    let line = null; // consecutive small groups share one line
    for (const [g, bs] of Object.entries(this.info().groups)) {
      const rows = this.foldedGroups.has(g) ? 0 : Math.ceil(bs.length / GROUP_COLUMNS);
      const small = bs.length <= SMALL_GROUP;
      if (small && line) {
        height += Math.max(0, rows - line.rows) * GROUP_ROW;
        line.rows = Math.max(line.rows, rows);
        continue;
      }
      line = small ? { rows } : null;
      height += GROUP_HEAD + rows * GROUP_ROW;
    }
    return height;
  }

  /** The node follows the panel's height. */
  resize() {
    this.widget.fitPanel();
    this.node.setSize?.([this.node.size[0], this.node.computeSize()[1]]);
    this.node.setDirtyCanvas?.(true, true);
  }

  /** The layout the server is asked for: the chosen one, or under "auto" the family of the last run. */
  requestedLayout() {
    const chosen = this.layoutSelect.value;
    return chosen === "auto" && this.connected ? this.connected : chosen;
  }

  /** A run reported this node's layout ("sd3:24", or a family at full size): "auto" shows it from now on
   * (SD families: as before). */
  connect(family) {
    if (family === this.connected) return;
    this.connected = family;
    if (this.node.properties) this.node.properties[FAMILY_PROPERTY] = family;
    this.refresh();
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
    this.resize();
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
      answer = await postJson("/merge_suite/check/block_weights", { text, layout: this.requestedLayout() });
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
    if (answer.info) this.sized[answer.layout] = answer.info;
    if (answer.empty) {
      this.layout = answer.layout ?? (this.requestedLayout() === "auto" ? this.layout : this.requestedLayout());
      const n = this.info().blocks.length;
      this.values = Array(n).fill(Number(this.scalar?.value ?? 0.5));
      this.render();
      this.sliders.classList.add("ms-disabled");
      return this.showStatus(`empty: the scalar ${this.scalar?.name ?? "ratio"} applies to every block; move a slider to set blocks`, false);
    }
    this.layout = answer.layout;
    this.values = answer.values;
    this.render();
    const label = this.info().label;
    const named = !answer.preset && text.includes("=");
    const from = answer.preset ? `preset ${answer.preset}` : named ? `named values for ${this.namedIds(text).size} blocks, the others take the scalar` : `${answer.values.length} values`;
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

  slider(b, i, group) {
    const input = el("input", { type: "range", step: "0.01", dataset: { block: b } });
    input.oninput = () => this.moveSlider(i, Number(input.value));
    return el("label", { className: `ms-block ms-${group}` }, [input, el("span", { textContent: b })]);
  }

  /** Rebuild the sliders when the layout changes: one grid (SD), or one folding section per group. */
  buildSliders() {
    const { blocks, groups } = this.info();
    const long = this.isLong();
    this.sliders.dataset.layout = this.layout;
    this.sliders.classList.toggle("ms-long", long);
    this.namedRow.style.display = long ? "" : "none";
    const names = ["ALL", ...Object.keys(groups)];
    if ([...this.groupSelect.options].map((o) => o.value).join() !== names.join()) {
      this.groupSelect.replaceChildren(...names.map((g) => el("option", { value: g, textContent: g })));
    }
    if (!long) {
      const groupOf = Object.fromEntries(Object.entries(groups).flatMap(([g, bs]) => bs.map((b) => [b, g])));
      this.sliders.replaceChildren(...blocks.map((b, i) => this.slider(b, i, groupOf[b])));
      this.sliders.style.gridTemplateColumns = `repeat(${blocks.length}, 1fr)`;
      return;
    }
    this.sliders.style.gridTemplateColumns = "";
    this.sliders.replaceChildren(...Object.entries(groups).map(([g, bs]) => {
      const grid = el("div", { className: "ms-group-grid" }, bs.map((b) => this.slider(b, blocks.indexOf(b), g)));
      grid.style.gridTemplateColumns = `repeat(${Math.min(bs.length, GROUP_COLUMNS)}, 14px)`;
      const head = el("button", { className: "ms-group-head", title: `Show or hide the ${g} sliders` });
      const section = el("div", { className: `ms-group${bs.length <= SMALL_GROUP ? " ms-small" : ""}`, dataset: { group: g } }, [head, grid]);
      const show = () => {
        const folded = this.foldedGroups.has(g);
        grid.style.display = folded ? "none" : "";
        head.textContent = `${folded ? "▸" : "▾"} ${g} (${bs.length === 1 ? bs[0] : `${bs[0]}–${bs.at(-1)}`})`;
        section.dataset.folded = String(folded);
      };
      head.onclick = () => {
        if (this.foldedGroups.has(g)) this.foldedGroups.delete(g); else this.foldedGroups.add(g);
        show();
        this.resize();
      };
      show();
      return section;
    }));
  }

  render() {
    const { blocks } = this.info();
    const lo = Math.min(0, ...this.values);
    const hi = Math.max(1, ...this.values);
    if (this.sliders.dataset.layout !== this.layout) {
      const before = this.sliders.dataset.layout;
      this.buildSliders();
      if (before && (this.isLong(before) || this.isLong())) this.resize(); // SD to SD keeps its height
    }
    this.sliders.querySelectorAll("input[type=range]").forEach((input, i) => {
      Object.assign(input, { min: String(lo), max: String(hi), disabled: false });
      input.value = String(this.values[i]);
      input.title = `${blocks[i]} = ${fmt(this.values[i])}`;
    });
  }

  moveSlider(i, value) {
    if (!this.values) return;
    this.values[i] = value;
    this.sliders.querySelectorAll("input[type=range]")[i].title = `${this.info().blocks[i]} = ${fmt(value)}`;
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
    const { blocks, groups } = this.info();
    const chosen = this.groupSelect.value === "ALL" ? blocks : groups[this.groupSelect.value] ?? [];
    this.write(this.values.map((v, i) => (chosen.includes(blocks[i]) ? f(v, x) : v)));
  }

  /** Ids named by "ID=v, A-B=v" text in this layout (ranges in layout order); unknown ids are left out. */
  namedIds(text) {
    const { blocks } = this.info();
    const ids = new Set();
    for (const pair of text.split(/[,\n]/)) {
      const span = this.span(pair.split("=")[0].trim(), blocks);
      if (span) span.forEach((b) => ids.add(b));
    }
    return ids;
  }

  span(token, blocks) {
    if (token.toUpperCase() === "ALL") return blocks;
    const ends = token.split("-").map((t) => t.trim());
    const at = ends.map((e) => blocks.indexOf(e));
    if (ends.length > 2 || at.some((i) => i < 0)) return null;
    const [i, j] = [Math.min(...at), Math.max(...at)];
    return blocks.slice(i, j + 1);
  }

  /** The named-range entry: kept as named text when the text is empty or already named (the node reads
   * that form), else applied to the current values and written as a list. */
  applyNamed() {
    const entry = this.namedInput.value.trim().replace(/^,+|,+$/g, "");
    if (!entry || !this.values) return;
    const current = (this.text.value ?? "").trim();
    if (!current && !(this.presetCombo && this.presetCombo.value !== CUSTOM) || current.includes("=")) {
      if (this.presetCombo && this.presetCombo.value !== CUSTOM) setWidgetValue(this.node, this.presetCombo, CUSTOM);
      setWidgetValue(this.node, this.text, current ? `${current}, ${entry}` : entry);
      this.namedInput.value = "";
      return this.refresh();
    }
    const { blocks, label, layout } = this.info();
    const values = [...this.values];
    for (const pair of entry.split(",")) {
      const [ids, number, extra] = pair.split("=").map((t) => t.trim());
      const value = Number(number);
      const span = this.span(ids ?? "", blocks);
      if (extra !== undefined || number === undefined || number === "" || !Number.isFinite(value)) {
        return this.showStatus(`✗ '${pair.trim()}' is not ID=value. Fix: write pairs such as ${blocks[3] ?? blocks[0]}-${blocks.at(-2)}=0.3.`, true);
      }
      if (!span) {
        return this.showStatus(`✗ unknown block id in '${ids}' for ${label}. Fix: use ids or ranges of its layout: ${layout}, or ALL.`, true);
      }
      span.forEach((b) => { values[blocks.indexOf(b)] = value; });
    }
    this.namedInput.value = "";
    this.write(values);
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
    // A run sends the layout it used ("sd3:24"); else its report starts with the family ("Flux.1 - Weight sum").
    const labels = Object.entries(data.families ?? {}).map(([name, l]) => [name, `${l.label} - `]);
    const chained = node.onExecuted;
    node.onExecuted = function (output) {
      const r = chained?.apply(this, arguments);
      const first = [].concat(output?.text ?? [])[0];
      const used = [].concat(output?.merge_suite_layout ?? [])[0];
      if (typeof used === "string") {
        for (const editor of Object.values(node.mergeSuiteEditors)) editor.connect(used);
      } else if (typeof first === "string") {
        const found = labels.find(([, prefix]) => first.startsWith(prefix));
        for (const editor of Object.values(node.mergeSuiteEditors)) editor.connect(found ? found[0] : null);
      }
      return r;
    };
    node.setSize?.([Math.max(node.size[0], 420), node.computeSize()[1]]);
  },
});
