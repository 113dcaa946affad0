// Shows a node's text outputs (merge report, analysis tables, recipe) on the node after it runs.
// The nodes send them as ui.text; ComfyUI renders ui.text only for its own Preview nodes.
import { app } from "../../../scripts/app.js";
import { addPanel, el, injectStyle, isPackNode } from "./common.mjs";

const HEIGHT = 160;

function showText(node, texts) {
  injectStyle();
  if (!node.mergeSuiteOutput) {
    const area = el("textarea", { className: "ms-output", readOnly: true, spellcheck: false });
    const widget = addPanel(node, "merge_suite_output", el("div", { className: "ms-panel", style: { height: "100%" } }, [area]), HEIGHT);
    node.mergeSuiteOutput = { area, widget };
    node.setSize?.([Math.max(node.size[0], 420), node.computeSize()[1]]);
  }
  node.mergeSuiteOutput.area.value = texts.join("\n\n");
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "merge_suite.text_outputs",
  nodeCreated(node) {
    if (!isPackNode(node)) return;
    const chained = node.onExecuted;
    node.onExecuted = function (output) {
      chained?.apply(this, arguments);
      const texts = (output?.text ?? []).filter((t) => typeof t === "string" && t.length);
      if (texts.length) showText(this, texts);
    };
  },
});
