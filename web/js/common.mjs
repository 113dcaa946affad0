// Shared helpers of the Merge Suite web extension: server calls, widget lookup, DOM widgets.
// .mjs so ComfyUI does not load it as an extension of its own (it imports every *.js).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const PACK_PREFIX = "MergeSuite_";

export function isPackNode(node) {
  return typeof node?.comfyClass === "string" && node.comfyClass.startsWith(PACK_PREFIX);
}

export function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

async function json(response) {
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  return response.json();
}

export function getJson(path) {
  return api.fetchApi(path).then(json);
}

export function postJson(path, body) {
  return api.fetchApi(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  }).then(json);
}

let editorData = null;
/** Layouts, groups and presets, fetched once (they come from merge_core). */
export function getEditorData() {
  editorData ??= getJson("/merge_suite/editor_data");
  return editorData;
}

/** Set a widget's value the way a user edit does, so the graph and the next prompt see it. */
export function setWidgetValue(node, widget, value) {
  widget.value = value;
  widget.callback?.(value, app.canvas, node);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas(true, true);
}

// Space around a panel inside its node (the frontend's default is 10 px on every side).
const PANEL_MARGIN = 4;

/** A DOM widget that is never saved in the workflow nor sent in the prompt; height includes the margins. */
export function addPanel(node, name, element, height) {
  const total = () => (typeof height === "function" ? height() : height);
  const widget = node.addDOMWidget(name, "merge_suite_panel", element, {
    serialize: false,
    hideOnZoom: false,
    margin: PANEL_MARGIN,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: total,
    getMaxHeight: total,
  });
  widget.serialize = false;
  // The element's own height, so Vue-rendered nodes (which size a DOM widget by its content) match the
  // canvas ones; call widget.fitPanel() after the height changes.
  widget.fitPanel = () => { element.style.height = `${total() - 2 * PANEL_MARGIN}px`; };
  widget.fitPanel();
  // The frontend registers a DOM widget as visible but unplaced (no position, no size) and places it
  // only when the canvas next draws its foreground. Panels are added after an await (editor data),
  // often after the loaded graph's last draw, so without a redraw they would sit unplaced, full width
  // at the canvas' left edge, until the user pans. Ask for that draw now.
  app.canvas?.setDirty(true, true);
  return widget;
}

/** Call fn when the widget's value changes, however it was changed (typed, loaded, pasted, by API). */
export function watchValue(node, widget, fn) {
  let last = widget.value;
  const chained = widget.callback;
  widget.callback = function (...args) {
    const r = chained?.apply(this, args);
    if (widget.value !== last) {
      last = widget.value;
      fn(last);
    }
    return r;
  };
  const timer = setInterval(() => {
    if (!node.graph) return clearInterval(timer); // node removed
    if (widget.value !== last) {
      last = widget.value;
      fn(last);
    }
  }, 300);
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

export function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "style") Object.assign(e.style, v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of [].concat(children)) e.append(c);
  return e;
}

let styled = false;
export function injectStyle() {
  if (styled) return;
  styled = true;
  document.head.append(el("style", { textContent: `
.ms-panel { font: 11px sans-serif; color: var(--input-text, #ddd); display: flex; flex-direction: column;
  gap: 3px; box-sizing: border-box; padding: 2px 4px; overflow: hidden; width: 100%; }
.ms-row { display: flex; gap: 3px; align-items: center; flex-wrap: nowrap; }
.ms-row select, .ms-row input, .ms-row button { font-size: 11px; background: var(--comfy-input-bg, #222);
  color: var(--input-text, #ddd); border: 1px solid var(--border-color, #555); border-radius: 3px; padding: 1px 3px; }
.ms-row input[type=number] { width: 52px; }
.ms-row select { min-width: 0; flex: 0 1 auto; }
.ms-row select:last-child { flex: 1 1 auto; }
.ms-status { min-height: 14px; white-space: pre-wrap; overflow-wrap: anywhere; }
.ms-status.ms-error { color: #ff6b6b; }
.ms-status.ms-ok { color: #8fd18f; }
.ms-editor-body { display: flex; flex-direction: column; gap: 3px; }
.ms-sliders { display: grid; gap: 0 1px; align-items: end; }
.ms-sliders.ms-disabled { opacity: 0.35; }
.ms-block { display: flex; flex-direction: column; align-items: center; min-width: 0; }
.ms-block input[type=range] { writing-mode: vertical-lr; direction: rtl; width: 14px; height: 56px; margin: 0; }
.ms-block span { font-size: 8px; writing-mode: vertical-lr; transform: rotate(180deg); height: 26px; opacity: 0.8; }
.ms-block.ms-BASE input { accent-color: #c9a13b; } .ms-block.ms-MID input { accent-color: #b765d6; }
.ms-block.ms-IN input { accent-color: #4a90d9; } .ms-block.ms-OUT input { accent-color: #4fb37a; }
.ms-sliders.ms-long { display: flex; flex-flow: row wrap; gap: 1px 10px; align-items: flex-start; }
.ms-group { display: flex; flex-direction: column; align-items: flex-start; flex: 1 0 100%; }
.ms-group.ms-small { flex: 0 0 auto; }
.ms-group-head { background: none; border: none; color: inherit; font-size: 10px; padding: 0; height: 16px;
  text-align: left; cursor: pointer; }
.ms-group-grid { display: grid; gap: 0 1px; align-items: end; }
.ms-long .ms-block input[type=range] { height: 40px; }
.ms-long .ms-block span { height: 22px; }
.ms-row input.ms-named { flex: 1 1 auto; min-width: 0; }
.ms-block.ms-D input, .ms-block.ms-J input, .ms-block.ms-T input, .ms-block.ms-B input, .ms-block.ms-L input { accent-color: #4a90d9; }
.ms-block.ms-S input, .ms-block.ms-V input, .ms-block.ms-NR input, .ms-block.ms-CR input { accent-color: #b765d6; }
.ms-elements { overflow-y: auto; border: 1px solid var(--border-color, #555); border-radius: 3px; flex: 1; }
.ms-elements div { cursor: pointer; padding: 0 3px; white-space: nowrap; }
.ms-elements div:hover { background: var(--comfy-menu-bg, #333); }
.ms-output { width: 100%; height: 100%; box-sizing: border-box; font: 10px monospace; resize: none;
  background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); border: 1px solid var(--border-color, #555); }
` }));
}
