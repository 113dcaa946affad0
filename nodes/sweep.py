"""Sweeps as graph wiring: list nodes, a cross product for X/Y/Z grids, and the grid image.

Each list node outputs its values as a ComfyUI list (one downstream run per
element) and matching labels. ComfyUI pairs lists element by element; the cross
product node expands X, Y and Z into paired lists so an X x Y grid is one queue
run. A merge fed by a list merges once per element; a seed or prompt list that
does not reach the merge reuses the one merged MODEL (see web/docs).
"""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..merge_core.errors import MergeInputError
from ..merge_core.recipe import leaf
from ..merge_core.sweep import grid as core_grid
from ..merge_core.sweep import lists as core
from .errors import named_errors
from .recipe_tags import set_recipe
from .shared import SWEEP_CATEGORY
from .validation import settings_problems

NAME_TIP = "Axis name shown in the labels, e.g. 'alpha' gives 'alpha=0.3'. Empty: the bare values."
LABELS_TIP = "One label per value, for the grid (connect to Sweep Cross Product or Sweep Grid)."
# A combo input (calcmode) accepts a link whose output type is the plain string "COMBO"; io.Combo.Output
# would declare its option list instead, which ComfyUI's validation refuses as a type mismatch.
COMBO = io.Custom("COMBO")


class _TextSweep(io.ComfyNode):
    """A list node over one text field; subclasses declare the parser, output type and texts."""

    NODE_ID = DISPLAY = DESCRIPTION = TEXT_TIP = DEFAULT = NAME = ""
    OUT = io.String
    MULTILINE = True

    @staticmethod
    def parse(text: str, input_name: str) -> list:
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY, category=SWEEP_CATEGORY, description=cls.DESCRIPTION,
            inputs=[io.String.Input("values", default=cls.DEFAULT, multiline=cls.MULTILINE, tooltip=cls.TEXT_TIP),
                    io.String.Input("name", default=cls.NAME, tooltip=NAME_TIP)],
            outputs=[cls.OUT.Output(display_name="values", is_output_list=True,
                                    tooltip="One element per value: each runs the connected nodes once."),
                     io.String.Output(display_name="labels", is_output_list=True, tooltip=LABELS_TIP)],
        )

    @classmethod
    def validate_inputs(cls, values=""):
        return settings_problems(cls, {"values": values}, lambda: cls.parse(values, "values"))

    @classmethod
    def execute(cls, values: str, name: str = "") -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            parsed = cls.parse(values, "values")
            return io.NodeOutput(parsed, core.labels(name.strip(), parsed))


class SweepFloats(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepFloats", "Sweep Float List"
    DESCRIPTION = "A list of numbers for alpha, beta, gamma or any FLOAT input: one run per value."
    TEXT_TIP, DEFAULT, NAME, OUT, MULTILINE = "Numbers separated by commas, e.g. 0.2, 0.4, 0.6.", "0.25, 0.5, 0.75", \
        "alpha", io.Float, False
    parse = staticmethod(core.float_list)


class SweepSeeds(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepSeeds", "Sweep Seed List"
    DESCRIPTION = ("Seeds for KSampler: one image per seed from the same merged model (no re-merge: the merge "
                   "node's inputs do not change).")
    TEXT_TIP, DEFAULT, NAME, OUT, MULTILINE = "Integers separated by commas; -1 draws a random seed.", "1, 2, 3", \
        "seed", io.Int, False
    parse = staticmethod(core.seed_list)


class SweepBlockWeights(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepBlockWeights", "Sweep Block Weights"
    DESCRIPTION = ("Block-weight lists for blocks_alpha / blocks_beta: one per line, each a preset name or 26 "
                   "(SD1) / 20 (SDXL) values. Pinpoint-block lists connect to the same inputs.")
    TEXT_TIP, DEFAULT, NAME = "One line per element: a preset name (GRAD_V, FLAT_25, ...) or comma-separated " \
        "values.", "GRAD_V\nGRAD_A", "blocks"
    parse = staticmethod(core.block_weight_list)


class SweepElemental(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepElemental", "Sweep Elemental"
    DESCRIPTION = "Elemental texts separated by blank lines, for the elemental input of 'Merge Option: Elemental'."
    TEXT_TIP, DEFAULT, NAME = "Entries separated by a blank line; each may have several lines. 'none' = no " \
        "elemental.", "none\n\nOUT03-OUT05:attn2:0.5", "elemental"
    parse = staticmethod(core.blank_line_list)


class SweepCalcModes(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepCalcModes", "Sweep Calc Modes"
    DESCRIPTION = "Calc modes for the calcmode input of 'Merge Option: Calc Mode'."
    TEXT_TIP, DEFAULT, NAME, OUT, MULTILINE = "Calc mode names separated by commas, e.g. normal, cosineA.", \
        "normal, cosineA", "calcmode", COMBO, False
    parse = staticmethod(core.calcmode_list)


class SweepMethods(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepMethods", "Sweep Combine Methods"
    DESCRIPTION = "n-model methods (ties, dare_ties, model_stock, ...) for the method input of 'Combine Models'."
    TEXT_TIP, DEFAULT, NAME, OUT, MULTILINE = "Method names separated by commas, e.g. ties, dare_ties.", \
        "task_arithmetic, ties, dare_ties", "method", COMBO, False
    parse = staticmethod(core.method_list)


class SweepAdjust(_TextSweep):
    NODE_ID, DISPLAY = "MergeSuite_SweepAdjust", "Sweep Adjust"
    DESCRIPTION = ("Adjust strings (8 values: IN, OUT, OUT2, CONT, BRI, COL1, COL2, COL3), one per line, for the "
                   "adjust input of 'Merge Option: Adjust'.")
    TEXT_TIP, DEFAULT, NAME = "One 8-value Adjust string per line.", "0,0,0,0,0,0,0,0\n2,0,0,0,0,0,0,0", "adjust"
    parse = staticmethod(core.adjust_list)


class SweepFloatRange(io.ComfyNode):
    DISPLAY = "Sweep Float Range"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_SweepFloatRange", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="count evenly spaced numbers from start to stop (both included), for any FLOAT input.",
            inputs=[io.Float.Input("start", default=0.0, min=-100.0, max=100.0, step=0.01, tooltip="First value."),
                    io.Float.Input("stop", default=1.0, min=-100.0, max=100.0, step=0.01, tooltip="Last value."),
                    io.Int.Input("count", default=5, min=1, max=core.MAX_ELEMENTS,
                                 tooltip="How many values (grid cells)."),
                    io.String.Input("name", default="alpha", tooltip=NAME_TIP)],
            outputs=[io.Float.Output(display_name="values", is_output_list=True),
                     io.String.Output(display_name="labels", is_output_list=True, tooltip=LABELS_TIP)],
        )

    @classmethod
    def validate_inputs(cls, start=0.0, stop=1.0):
        return settings_problems(cls, {"start": start, "stop": stop})

    @classmethod
    def execute(cls, start: float, stop: float, count: int, name: str = "alpha") -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            values = core.float_range(start, stop, count)
            return io.NodeOutput(values, core.labels(name.strip(), values))


class SweepModels(io.ComfyNode):
    DISPLAY = "Sweep Checkpoints"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_SweepModels", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="Load several checkpoints as a list (SuperMerger's model_A/B/C axes): one run per "
                        "checkpoint. Each MODEL and CLIP carries its file name into the merge recipe.",
            inputs=[io.String.Input("checkpoints", multiline=True, default="",
                                    tooltip="Checkpoint file names, one per line, as in Load Checkpoint.")],
            outputs=[io.Model.Output(display_name="MODEL", is_output_list=True),
                     io.Clip.Output(display_name="CLIP", is_output_list=True),
                     io.Vae.Output(display_name="VAE", is_output_list=True),
                     io.String.Output(display_name="labels", is_output_list=True, tooltip=LABELS_TIP)],
        )

    @classmethod
    def execute(cls, checkpoints: str) -> io.NodeOutput:
        import comfy.sd
        import folder_paths
        with named_errors(cls.DISPLAY):
            names = core._split(checkpoints, "checkpoints", by_line=True)
            paths = []
            for i, name in enumerate(names):
                path = folder_paths.get_full_path("checkpoints", name)
                if path is None:
                    raise MergeInputError("checkpoints", f"line {i + 1}: '{name}' is not in the checkpoints folder.",
                                          "copy the name from a Load Checkpoint node's list.")
                paths.append(path)
            models, clips, vaes = [], [], []
            for name, path in zip(names, paths):
                model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
                    path, output_vae=True, output_clip=True,
                    embedding_directory=folder_paths.get_folder_paths("embeddings"))
                set_recipe(model, "model", leaf(name))
                if clip is not None:
                    set_recipe(clip, "clip", leaf(name))
                models.append(model), clips.append(clip), vaes.append(vae)
            return io.NodeOutput(models, clips, vaes, [n.rsplit(".", 1)[0] for n in names])


def _axis(values, labels, input_name: str):
    if not values:
        return None, None
    if labels and len(labels) != len(values):
        raise MergeInputError(f"{input_name}_labels", f"has {len(labels)} labels for {len(values)} values.",
                              f"connect the labels output of the node that feeds {input_name}.")
    return list(values), (list(labels) if labels else [f"{input_name}{i + 1}" for i in range(len(values))])


class SweepCrossProduct(io.ComfyNode):
    DISPLAY = "Sweep Cross Product (X x Y x Z)"

    @classmethod
    def define_schema(cls):
        any_in = [io.AnyType.Input(n, optional=n != "x", tooltip=f"The {n.upper()} axis values (a list).")
                  for n in ("x", "y", "z")]
        labels_in = [io.String.Input(f"{n}_labels", optional=True, force_input=True,
                                     tooltip=f"Labels of the {n.upper()} values.") for n in ("x", "y", "z")]
        return io.Schema(
            node_id="MergeSuite_SweepCrossProduct", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="Every combination of X, Y and (optional) Z, as paired lists: connect x, y, z to the inputs "
                        "they sweep and the labels to Sweep Grid. Order: for each Z, each Y, each X.",
            inputs=[any_in[0], labels_in[0], any_in[1], labels_in[1], any_in[2], labels_in[2]],
            outputs=[io.AnyType.Output(display_name="x", is_output_list=True),
                     io.AnyType.Output(display_name="y", is_output_list=True),
                     io.AnyType.Output(display_name="z", is_output_list=True),
                     io.String.Output(display_name="x_labels", is_output_list=True),
                     io.String.Output(display_name="y_labels", is_output_list=True),
                     io.String.Output(display_name="z_labels", is_output_list=True),
                     io.Int.Output(display_name="count", tooltip="Number of cells (images) in the run.")],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, x, x_labels=None, y=None, y_labels=None, z=None, z_labels=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            xs, xl = _axis(x, x_labels, "x")
            if not xs:
                raise MergeInputError("x", "is empty.", "connect a list node (e.g. Sweep Float List) to x.")
            ys, yl = _axis(y, y_labels, "y")
            zs, zl = _axis(z, z_labels, "z")
            values = core.cross_product(xs, ys, zs)
            labels = core.cross_product(xl, yl, zl)
            cols = [list(c) for c in zip(*values)]
            label_cols = [[v if v is not None else "" for v in c] for c in zip(*labels)]
            return io.NodeOutput(cols[0], cols[1], cols[2], *label_cols, len(values))


class SweepJoin(io.ComfyNode):
    DISPLAY = "Sweep Join Lists"
    PARTS = ("a", "b", "c")

    @classmethod
    def define_schema(cls):
        inputs = []
        for n in cls.PARTS:
            inputs += [io.AnyType.Input(n, optional=n != "a", tooltip=f"List {n.upper()} (or a single value)."),
                       io.String.Input(f"{n}_labels", optional=True, force_input=True,
                                       tooltip=f"Labels of {n.upper()}'s values; without them, text values are "
                                               "their own labels.")]
        return io.Schema(
            node_id="MergeSuite_SweepJoin", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="One list made of A, then B, then C (e.g. the MODELs of different merge nodes, or a few "
                        "prompts), with their labels: different merges become columns of one grid.",
            inputs=inputs,
            outputs=[io.AnyType.Output(display_name="values", is_output_list=True),
                     io.String.Output(display_name="labels", is_output_list=True, tooltip=LABELS_TIP)],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, a, a_labels=None, b=None, b_labels=None, c=None, c_labels=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            values, labels = [], []
            for name, part, part_labels in (("a", a, a_labels), ("b", b, b_labels), ("c", c, c_labels)):
                if not part:
                    continue
                if part_labels:
                    _axis(part, part_labels, name)
                elif not all(isinstance(v, str) for v in part):
                    raise MergeInputError(f"{name}_labels", "is not connected and the values are not text.",
                                          f"connect labels for {name} (e.g. a String node with the cell's name).")
                values += list(part)
                labels += list(part_labels or part)
            if len(values) > core.MAX_ELEMENTS:
                raise MergeInputError("a", f"joins {len(values)} values (at most {core.MAX_ELEMENTS}).",
                                      "split the sweep into several runs.")
            return io.NodeOutput(values, labels)


class SweepGrid(io.ComfyNode):
    DISPLAY = "Sweep Grid (labelled image grid)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_SweepGrid", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="Assemble the images of a sweep into a labelled grid, one grid per Z value; the title "
                        "states the settings all cells share (from their recipes) plus your title.",
            inputs=[io.Image.Input("images", tooltip="The sweep's images (a list, one per cell)."),
                    io.String.Input("x_labels", force_input=True, tooltip="Column labels, one per image."),
                    io.String.Input("title", default="", tooltip="Text put before the automatic title."),
                    io.String.Input("y_labels", optional=True, force_input=True, tooltip="Row labels, one per image."),
                    io.String.Input("z_labels", optional=True, force_input=True,
                                    tooltip="One grid per distinct Z label."),
                    io.String.Input("recipes", optional=True, force_input=True,
                                    tooltip="The merge nodes' recipe outputs: what all cells share goes into the "
                                            "title.")],
            outputs=[io.Image.Output(display_name="grids", is_output_list=True),
                     io.String.Output(display_name="layout", tooltip="Rows, columns and labels of each grid.")],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, images, x_labels, title=None, y_labels=None, z_labels=None, recipes=None) -> io.NodeOutput:
        from PIL import Image
        with named_errors(cls.DISPLAY):
            frames = [im for batch in images for im in batch]  # a list of [B,H,W,C] batches
            n = len(frames)
            for name, labels in (("x_labels", x_labels), ("y_labels", y_labels), ("z_labels", z_labels)):
                if labels and len(labels) != n:
                    raise MergeInputError(name, f"has {len(labels)} labels for {n} images.",
                                          "connect the labels from the Sweep Cross Product that drives the images "
                                          "(a batch size above 1 also multiplies the images).")
            if not n:
                raise MergeInputError("images", "is empty.", "connect the sweep's decoded images.")
            pil = [Image.fromarray(np.clip(255.0 * f.cpu().numpy(), 0, 255).astype(np.uint8)) for f in frames]
            user = (title or [""])[0].strip()
            shared = core_grid.common_title(list(recipes)) if recipes else ""
            full_title = " | ".join(t for t in (user, shared) if t)
            grids, texts = [], []
            marked = [core_grid.mark_overridden(list(labels or []), list(recipes or []))
                      for labels in (x_labels, y_labels, z_labels)]
            for layout in core_grid.layouts(*marked):
                img = core_grid.draw_grid(pil, layout, full_title)
                grids.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None])
                texts.append(layout.describe())
            return io.NodeOutput(grids, "\n\n".join(texts))


NODES = [SweepFloats, SweepFloatRange, SweepSeeds, SweepBlockWeights, SweepElemental, SweepCalcModes, SweepMethods,
         SweepAdjust, SweepModels, SweepCrossProduct, SweepJoin, SweepGrid]
