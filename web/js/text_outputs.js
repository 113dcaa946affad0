// Shows a node's text outputs (merge report, analysis tables, recipe) on the node after it runs.
// The nodes send them as ui.text; ComfyUI renders ui.text only for its own Preview nodes.
import { app } from "../../../scripts/app.js";
import { addPanel, el, injectStyle, isPackNode } from "./common.mjs";

const HEIGHT = 160;
// Nodes that send ui.text: their panel exists from the start (Vue-rendered nodes show only the
// widgets a node has when it is drawn); any other pack node gets one when text first arrives.
const TEXT_NODES = new Set(["MergeSuite_ModelMerge", "MergeSuite_CLIPMerge", "MergeSuite_CheckpointMerge",
  "MergeSuite_CombineModels", "MergeSuite_CombineCLIP",
  "MergeSuite_ModelSimilarity", "MergeSuite_Elements", "MergeSuite_TextEncoderTokens"]);

function outputPanel(node) {
  if (!node.mergeSuiteOutput) {
    injectStyle();
    const area = el("textarea", { className: "ms-output", readOnly: true, spellcheck: false,
      placeholder: "the report appears here after a run" });
    const height = () => (area.value ? HEIGHT : 26);
    const widget = addPanel(node, "merge_suite_output", el("div", { className: "ms-panel", style: { height: "100%" } }, [area]), height);
    node.mergeSuiteOutput = { area, widget };
  }
  return node.mergeSuiteOutput;
}

function showText(node, texts) {
  const { area } = outputPanel(node);
  const grow = !area.value;
  area.value = texts.join("\n\n");
  node.mergeSuiteOutput.widget.fitPanel();
  if (grow) node.setSize?.([Math.max(node.size[0], 420), Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "merge_suite.text_outputs",
  nodeCreated(node) {
    if (!isPackNode(node)) return;
    if (TEXT_NODES.has(node.comfyClass)) outputPanel(node);
    const chained = node.onExecuted;
    node.onExecuted = function (output) {
      chained?.apply(this, arguments);
      const texts = (output?.text ?? []).filter((t) => typeof t === "string" && t.length);
      if (texts.length) showText(this, texts);
    };
  },
});
