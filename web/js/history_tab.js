// "Merge history" sidebar tab: every merge the pack's nodes performed (GET /merge_suite/history), newest first,
// searchable by words (all / any), paged. Per entry: copy its recipe text, or add a "Merge from History" node
// set to that entry, which re-creates the merge. The list is fetched when the tab opens and after a prompt
// finishes (one request, only while the tab is open). Without this file the history and its node work as before.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { debounce, el, findWidget, setWidgetValue } from "./common.mjs";

const TAB_ID = "merge-suite-history";
const ROUTE = "/merge_suite/history";
const NODE_TYPE = "MergeSuite_MergeFromHistory";
const PAGE_SIZES = [20, 50, 100];
const SEARCH_DELAY_MS = 300;
const EMPTY_TEXT = "No merges recorded yet. Every merge the pack's nodes perform (merges, combines, saved and "
  + "file merges, LoRA merges and extractions) is listed here once its prompt has run.";
const DISABLED_TEXT = "The merge history is turned off on this server (MERGE_SUITE_HISTORY=0): merges are not "
  + "recorded.";

let view = null; // the open tab's state and elements; null while the tab is closed
// what the tab shows, kept while it is closed so it reopens on the same search
const query = { search: "", mode: "and", offset: 0, limit: PAGE_SIZES[0] };

async function fetchPage(asked) {
  const params = new URLSearchParams({ search: asked.search, mode: asked.mode, offset: String(asked.offset),
    limit: String(asked.limit) });
  const response = await api.fetchApi(`${ROUTE}?${params}`);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new Error(body?.error || `${response.status} ${response.statusText}`);
  }
  return body;
}

function firstLine(text) {
  return String(text ?? "").split("\n").find((line) => line.trim()) ?? "";
}

function shortTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return String(iso ?? "");
  const pad = (n) => String(n).padStart(2, "0");
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} `
    + `${pad(when.getHours())}:${pad(when.getMinutes())}`;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no clipboard API (plain http on another host) or no permission: the old way
    const area = el("textarea", { value: text, style: { position: "fixed", left: "-9999px", top: "0" } });
    document.body.append(area);
    area.select();
    let done = false;
    try {
      done = document.execCommand("copy");
    } catch {
      done = false;
    }
    area.remove();
    return done;
  }
}

function liteGraph() {
  return window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
}

/** A "Merge from History" node for entry id, in the middle of what the canvas shows. */
function addHistoryNode(id) {
  const node = liteGraph()?.createNode(NODE_TYPE);
  if (!node) throw new Error(`this server has no ${NODE_TYPE} node`);
  const canvas = app.canvas;
  const ds = canvas.ds;
  const width = (canvas.canvas?.clientWidth ?? 800) / ds.scale;
  const height = (canvas.canvas?.clientHeight ?? 600) / ds.scale;
  node.pos = [Math.round(-ds.offset[0] + width / 2 - node.size[0] / 2),
    Math.round(-ds.offset[1] + height / 3)];
  app.graph.add(node);
  const widget = findWidget(node, "history_id");
  if (widget) setWidgetValue(node, widget, id);
  canvas.selectNode?.(node);
  canvas.setDirty(true, true);
  app.graph.setDirtyCanvas?.(true, true);
  return node;
}

function setStatus(text, kind = "") {
  if (!view) return;
  view.status.textContent = text;
  view.status.className = `ms-history-status${kind ? ` ms-${kind}` : ""}`;
}

function entryRow(entry) {
  const text = String(entry.text ?? "");
  const models = (entry.models ?? []).map((m) => m?.name ?? "?");
  const copy = el("button", { textContent: "Copy recipe", title: "copy the recipe text" });
  copy.onclick = async () => {
    const done = await copyText(text);
    setStatus(done ? `Recipe of #${entry.id} copied.` : `Could not copy the recipe of #${entry.id}.`,
      done ? "ok" : "error");
  };
  const add = el("button", { textContent: "Add to graph", title: "add a Merge from History node for this entry" });
  add.onclick = () => {
    try {
      addHistoryNode(entry.id);
      setStatus(`Added a Merge from History node for #${entry.id}.`, "ok");
    } catch (error) {
      setStatus(String(error.message ?? error), "error");
    }
  };
  return el("div", { className: "ms-history-entry", dataset: { id: String(entry.id) } }, [
    el("div", { className: "ms-history-head" }, [
      el("b", { textContent: `#${entry.id}` }),
      el("span", { textContent: shortTime(entry.time), title: String(entry.time ?? "") }),
      el("span", { className: "ms-history-kind", textContent: entry.kind ?? "" }),
    ]),
    el("div", { className: "ms-history-models", textContent: models.join(", "), title: models.join("\n") }),
    el("div", { className: "ms-history-text", textContent: firstLine(text), title: text }),
    el("div", { className: "ms-history-actions" }, [copy, add]),
  ]);
}

function queryKey(q) {
  return `${q.search}|${q.mode}|${q.offset}|${q.limit}`;
}

async function refresh() {
  if (!view) return;
  const current = view;
  const asked = { ...query };
  const ticket = ++current.ticket;
  current.root.dataset.state = "loading";
  let page;
  try {
    page = await fetchPage(asked);
  } catch (error) {
    if (view !== current || ticket !== current.ticket) return;
    current.root.dataset.state = "error";
    current.list.replaceChildren();
    setStatus(`The history could not be read: ${error.message ?? error}`, "error");
    return;
  }
  if (view !== current || ticket !== current.ticket) return; // a newer request or a closed tab
  show(current, asked, page ?? {});
}

function show(current, shown, page) {
  const { root, list, pager, prev, next } = current;
  root.dataset.query = queryKey(shown);
  if (page.enabled === false || page.disabled === true) {
    root.dataset.state = "disabled";
    list.replaceChildren(el("div", { className: "ms-history-note", textContent: DISABLED_TEXT }));
    pager.textContent = "";
    prev.disabled = next.disabled = true;
    setStatus("");
    return;
  }
  const entries = Array.isArray(page.entries) ? page.entries : [];
  const total = Number(page.total ?? 0);
  root.dataset.total = String(total);
  root.dataset.count = String(page.count ?? 0);
  if (!entries.length && shown.offset > 0) { // the matches shrank under this page: go back to the first
    query.offset = 0;
    refresh();
    return;
  }
  if (!entries.length) {
    const note = Number(page.count ?? 0) ? "No entry matches the search." : EMPTY_TEXT;
    list.replaceChildren(el("div", { className: "ms-history-note", textContent: note }));
  } else {
    list.replaceChildren(...entries.map(entryRow));
  }
  const first = entries.length ? shown.offset + 1 : 0;
  pager.textContent = `${first}\u2013${shown.offset + entries.length} of ${total}`;
  prev.disabled = shown.offset <= 0;
  next.disabled = shown.offset + entries.length >= total;
  root.dataset.state = entries.length ? "ok" : "empty";
  setStatus("");
}

function render(host) {
  injectHistoryStyle();
  const search = el("input", { type: "search", className: "ms-history-search", placeholder: "search the history",
    value: query.search, spellcheck: false });
  const mode = el("select", { className: "ms-history-mode", title: "entries with all the words, or any of them" }, [
    el("option", { value: "and", textContent: "all words" }), el("option", { value: "or", textContent: "any word" }),
  ]);
  mode.value = query.mode;
  const size = el("select", { className: "ms-history-size", title: "entries per page" },
    PAGE_SIZES.map((n) => el("option", { value: String(n), textContent: `${n} / page` })));
  size.value = String(query.limit);
  const prev = el("button", { className: "ms-history-prev", textContent: "\u2039 Previous" });
  const next = el("button", { className: "ms-history-next", textContent: "Next \u203a" });
  const pager = el("span", { className: "ms-history-pager" });
  const list = el("div", { className: "ms-history-list" });
  const status = el("div", { className: "ms-history-status" });
  const root = el("div", { className: "ms-history", dataset: { state: "loading" } }, [
    el("div", { className: "ms-history-title", textContent: "Merge history" }),
    el("div", { className: "ms-history-row" }, [search]),
    el("div", { className: "ms-history-row" }, [mode, size]),
    el("div", { className: "ms-history-row" }, [prev, pager, next]),
    status, list,
  ]);
  host.replaceChildren(root);
  view = { root, list, pager, prev, next, status, ticket: 0 };
  const again = (change) => {
    Object.assign(query, change);
    refresh();
  };
  const searchLater = debounce(() => again({ search: search.value.trim(), offset: 0 }), SEARCH_DELAY_MS);
  search.addEventListener("input", searchLater);
  search.addEventListener("keydown", (e) => e.stopPropagation()); // keep the canvas' shortcuts out of typing
  mode.onchange = () => again({ mode: mode.value, offset: 0 });
  size.onchange = () => again({ limit: Number(size.value), offset: 0 });
  prev.onclick = () => again({ offset: Math.max(0, query.offset - query.limit) });
  next.onclick = () => again({ offset: query.offset + query.limit });
  refresh();
}

let styled = false;
function injectHistoryStyle() {
  if (styled) return;
  styled = true;
  document.head.append(el("style", { textContent: `
.ms-history { display: flex; flex-direction: column; gap: 6px; padding: 8px; font-size: 12px; height: 100%;
  box-sizing: border-box; color: var(--fg-color, #ddd); }
.ms-history-title { font-weight: bold; font-size: 13px; }
.ms-history-row { display: flex; gap: 6px; align-items: center; }
.ms-history-row input, .ms-history-row select, .ms-history-row button, .ms-history-actions button {
  font-size: 12px; background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #555); border-radius: 4px; padding: 2px 6px; }
.ms-history-row button:disabled { opacity: 0.4; }
.ms-history-search { flex: 1 1 auto; min-width: 0; }
.ms-history-pager { flex: 1 1 auto; text-align: center; }
.ms-history-list { display: flex; flex-direction: column; gap: 4px; overflow-y: auto; flex: 1 1 auto; }
.ms-history-entry { border: 1px solid var(--border-color, #555); border-radius: 4px; padding: 4px 6px;
  display: flex; flex-direction: column; gap: 2px; }
.ms-history-head { display: flex; gap: 8px; align-items: baseline; white-space: nowrap; overflow: hidden; }
.ms-history-kind { opacity: 0.8; font-style: italic; overflow: hidden; text-overflow: ellipsis; }
.ms-history-actions { display: flex; gap: 4px; justify-content: flex-end; }
.ms-history-actions button { font-size: 11px; padding: 1px 5px; cursor: pointer; }
.ms-history-models { opacity: 0.8; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.ms-history-text { font-family: monospace; font-size: 11px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.ms-history-note { opacity: 0.8; white-space: normal; }
.ms-history-status { min-height: 14px; }
.ms-history-status.ms-error { color: #ff6b6b; }
.ms-history-status.ms-ok { color: #8fd18f; }
` }));
}

// A finished prompt may have added entries; several events of one prompt make one request.
const refreshAfterRun = debounce(() => view && refresh(), 250);

app.registerExtension({
  name: "merge_suite.history_tab",
  setup() {
    const manager = app.extensionManager;
    if (typeof manager?.registerSidebarTab !== "function") return; // a frontend without sidebar tabs
    manager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-history",
      title: "Merge history",
      tooltip: "Merge history: the merges the pack performed",
      type: "custom",
      render,
      destroy: () => { view = null; },
    });
    api.addEventListener("executed", refreshAfterRun);
    api.addEventListener("execution_success", refreshAfterRun);
  },
});
