// Method inputs: Combine Models / Combine CLIP show only the inputs the chosen method reads (TIES: weights and
// density; DELLA: weights, drop_rate, epsilon and seed; ...). The server names them per method in the method
// input's spec (merge_suite_method_inputs, from merge_core's list of the parameters each method uses).
// The others are hidden, never removed: the node keeps every input and widget in its place, so saved workflows
// (widget values by position) and API prompts carry all values and run as before. A hidden input still shows
// while a link feeds it, and a text the method refuses (weights under Model Stock) stays in sight so it can be
// cleared. Without this file the nodes show every input, as before.
//
// How each rendering hides a widget:
// - the canvas (LiteGraph): widget.hidden, which it skips when drawing, sizing and hit-testing;
// - Vue nodes ("Nodes 2.0") of frontends with a widget value store (1.4x, ComfyUI 0.33): options.hidden, the
//   frontend's own way (its Create Bounding Boxes node does the same), read whenever the node's list is rebuilt;
// - Vue nodes of frontend 1.32 (ComfyUI 0.3.75): it copies a node's widget list, options included, and after the
//   first edit keeps that copy, so a changed options.hidden never reaches the page and a widget hidden in the copy
//   could not come back. There every widget keeps its row and the rows of hidden ones are hidden on the page.
import { app } from "../../../scripts/app.js";
import { findWidget, isPackNode, watchValue } from "./common.mjs";

const SPEC_KEY = "merge_suite_method_inputs";
// The measure the frontend gives a widget that takes no room (its own hidden widgets of group nodes): 1.32's
// canvas still gives a hidden widget its row when laying the widgets out (1.49 leaves it out).
const NO_ROOM = () => [0, -4];

/** {method: [inputs it reads]} from a node definition as /object_info sends it, or null. */
function methodInputsOf(nodeData) {
  const spec = nodeData?.input?.required?.method ?? nodeData?.input?.optional?.method;
  const shows = spec?.[1]?.[SPEC_KEY];
  return shows && typeof shows === "object" ? shows : null;
}

/** Whether the frontend keeps a widget's state in its widget value store (1.4x), where Vue nodes follow options. */
function hasWidgetStore(widget) {
  return "widgetId" in widget;
}

function isLinked(node, widget) {
  return node.inputs?.some((input) => input.widget?.name === widget.name && input.link != null) ?? false;
}

/** Whether a choice widget (a combo: its value is always one of its options, never typed text). */
function isChoice(widget) {
  return widget.type === "combo" || Array.isArray(widget.options?.values);
}

/** Whether a widget the chosen method does not read must stay in sight anyway: a typed text (weights) does, so
 * it can be cleared; a choice such as slerp_axis always has a value and hides like a number. */
function keepShown(node, widget) {
  if (isLinked(node, widget)) return true;
  return !isChoice(widget) && typeof widget.value === "string" && widget.value.trim() !== "";
}

function setHidden(widget, hidden) {
  widget.hidden = hidden;
  if (hasWidgetStore(widget)) {
    widget.options ??= {};
    widget.options.hidden = hidden;
  }
  if (hidden && widget.computeSize !== NO_ROOM) {
    widget.mergeSuiteOwnSize = Object.getOwnPropertyDescriptor(widget, "computeSize") ?? null;
    widget.computeSize = NO_ROOM;
  } else if (!hidden && widget.computeSize === NO_ROOM) {
    delete widget.computeSize;
    if (widget.mergeSuiteOwnSize) Object.defineProperty(widget, "computeSize", widget.mergeSuiteOwnSize);
  }
}

/** Vue nodes (1.4x) list a node's widgets through a reactive copy of node.widgets: change its length once so the
 * list is rebuilt and reads the new options (a plain array on the canvas, where this changes nothing). */
function refreshVueWidgets(node) {
  const widgets = node.widgets;
  if (!widgets?.length) return;
  const last = widgets.pop();
  widgets.push(last);
}

/** Frontend 1.32's Vue node: hide the rows of hidden widgets on the page (a row shows its widget's label). */
function hideVueRows(node) {
  const root = document.querySelector(`[data-node-id="${node.id}"]`);
  if (!root || node.widgets?.some(hasWidgetStore)) return;
  const hidden = new Set(node.widgets.filter((w) => w.hidden).map((w) => w.label || w.name));
  for (const row of root.querySelectorAll(".lg-node-widget")) {
    const label = row.querySelector("p")?.textContent?.trim();
    if (label && hidden.has(label)) {
      if (row.style.display !== "none") row.style.display = "none";
      row.dataset.msHidden = "true";
    } else if (row.dataset.msHidden) { // only rows hidden here are shown again
      row.style.display = "";
      delete row.dataset.msHidden;
    }
  }
}

/** Show the chosen method's inputs and hide the other method-specific ones; the node fits its height when that
 * changed anything, or when asked (a loaded workflow keeps the height saved with all inputs shown). */
function showMethodInputs(node, shows, fit = false) {
  const method = findWidget(node, "method")?.value;
  const wanted = new Set(shows[method] ?? Object.values(shows).flat()); // an unknown method: show everything
  const specific = new Set(Object.values(shows).flat());
  let changed = false;
  for (const widget of node.widgets ?? []) {
    if (!specific.has(widget.name)) continue;
    const hidden = !wanted.has(widget.name) && !keepShown(node, widget);
    if (Boolean(widget.hidden) === hidden && (widget.computeSize === NO_ROOM) === hidden) continue;
    setHidden(widget, hidden);
    changed = true;
  }
  if (changed) refreshVueWidgets(node);
  hideVueRows(node);
  if (!changed && !fit) return;
  node.setSize?.([node.size[0], node.computeSize()[1]]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "merge_suite.method_inputs",
  beforeRegisterNodeDef(nodeType, nodeData) {
    const shows = methodInputsOf(nodeData);
    if (!shows) return;
    nodeType.prototype.mergeSuiteMethodInputs = shows;
    // A loaded workflow sets the widget values after the node is created: apply its method then.
    const configured = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const r = configured?.apply(this, args);
      showMethodInputs(this, shows, true);
      return r;
    };
    const connections = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const r = connections?.apply(this, args);
      showMethodInputs(this, shows);
      return r;
    };
  },
  nodeCreated(node) {
    const shows = node.mergeSuiteMethodInputs;
    if (!isPackNode(node) || !shows) return;
    const method = findWidget(node, "method");
    if (!method) return;
    showMethodInputs(node, shows);
    watchValue(node, method, () => showMethodInputs(node, shows));
    // A weights text typed or cleared under a method that does not read it shows or hides the input.
    const weights = findWidget(node, "weights");
    if (weights) watchValue(node, weights, () => showMethodInputs(node, shows));
    // Frontend 1.32's Vue node draws its rows after this and redraws them on its own: keep their rows hidden.
    if (!hasWidgetStore(method)) {
      const timer = setInterval(() => (node.graph ? hideVueRows(node) : clearInterval(timer)), 250);
    }
  },
});
