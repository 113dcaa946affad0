"""Writes example_workflows/*.json (UI format, loadable from ComfyUI's template browser).

Kept as code so the graphs stay consistent with the node definitions; rerun after
changing a node's inputs: `python scripts/make_example_workflows.py`.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "example_workflows"

# The Merge Option nodes, in chaining order, with their widgets and defaults.
OPTION_NODES = [
    ("CalcMode", {"calcmode": "normal", "gamma": 0.3, "seed": 0, "tensor2_corrected": False}),
    ("Elemental", {"elemental_full_key": False, "elemental": ""}),
    ("IncludeExclude", {"include_exclude": ""}),
    ("Adjust", {"adjust": ""}),
    ("Report", {"report_keys": False}),
]
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "UNETLoader": [("MODEL", "MODEL")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
    "MergeSuite_ModelMerge": [("MODEL", "MODEL"), ("report", "STRING"), ("recipe", "STRING")],
    "MergeSuite_CLIPMerge": [("CLIP", "CLIP"), ("report", "STRING"), ("recipe", "STRING")],
    "MergeSuite_CheckpointMerge": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("report", "STRING"), ("recipe", "STRING")],
    "MergeSuite_CombineModels": [("MODEL", "MODEL"), ("report", "STRING"), ("recipe", "STRING")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "PreviewAny": [],
    "MergeSuite_ModelSimilarity": [("report", "STRING"), ("similarity_chart", "IMAGE"),
                                   ("difference_chart", "IMAGE"), ("csv", "STRING")],
    "MergeSuite_Elements": [("elements", "STRING")],
    "MergeSuite_TextEncoderTokens": [("tokens", "STRING"), ("csv", "STRING")],
    "MergeSuite_Adjust": [("MODEL", "MODEL")],
    "MergeSuite_RebasinModel": [("MODEL", "MODEL"), ("report", "STRING")],
    "MergeSuite_LoraApply": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("report", "STRING")],
    "MergeSuite_LoraBake": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("report", "STRING")],
    "MergeSuite_LoraExtract": [("lora_name", "STRING"), ("lora_list", "STRING"), ("report", "STRING")],
    "MergeSuite_LoraMerge": [("lora_name", "STRING"), ("lora_list", "STRING"), ("report", "STRING")],
    "MergeSuite_LoraExtractFromLoras": [("lora_name", "STRING"), ("lora_list", "STRING"), ("report", "STRING")],
    "StringConcatenate": [("STRING", "STRING")],
    "MergeSuite_SweepFloats": [("values", "FLOAT"), ("labels", "STRING")],
    "MergeSuite_SweepBlockWeights": [("values", "STRING"), ("labels", "STRING")],
    "MergeSuite_SweepSeeds": [("values", "INT"), ("labels", "STRING")],
    "MergeSuite_SweepCrossProduct": [("x", "*"), ("y", "*"), ("z", "*"), ("x_labels", "STRING"),
                                     ("y_labels", "STRING"), ("z_labels", "STRING"), ("count", "INT")],
    "MergeSuite_SweepGrid": [("grids", "IMAGE"), ("layout", "STRING")],
    "MergeSuite_SweepJoin": [("values", "*"), ("labels", "STRING")],
    "PrimitiveString": [("STRING", "STRING")],
    "MergeSuite_SaveCheckpoint": [("path", "STRING")],
    "MergeSuite_DiffusionModelFileMerge": [("MODEL", "MODEL"), ("file_name", "STRING")],
    "MergeSuite_PinpointBlocks": [("blocks", "STRING"), ("x_label", "STRING"), ("y_label", "STRING")],
    "MergeSuite_PinpointElements": [("elemental", "STRING"), ("x_label", "STRING"), ("y_label", "STRING")],
    "MergeSuite_SweepFloatRange": [("values", "FLOAT"), ("labels", "STRING")],
    "MergeSuite_SweepCalcModes": [("values", "COMBO"), ("labels", "STRING")],
    "MergeSuite_SweepElemental": [("values", "STRING"), ("labels", "STRING")],
    "MergeSuite_SweepAdjust": [("values", "STRING"), ("labels", "STRING")],
    "MergeSuite_SweepModels": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("labels", "STRING")],
    "MergeSuite_LoadRecipe": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("recipe", "STRING")],
    "MergeSuite_MergeFromHistory": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("recipe", "STRING")],
    **{f"MergeSuite_Option{kind}": [("options", "MERGE_OPTIONS")] for kind, _ in OPTION_NODES},
    "MergeSuite_RandomBlockWeights": [("blocks_alpha", "STRING"), ("blocks_beta", "STRING"),
                                      ("elemental", "STRING"), ("seed", "INT"), ("label", "STRING")],
}
TITLES = {"MergeSuite_ModelSimilarity": "Model Similarity per Block", "MergeSuite_Elements": "Elements Browser",
          "MergeSuite_TextEncoderTokens": "Text Encoder Token Norms","MergeSuite_ModelMerge": "Merge Models",
          "MergeSuite_CLIPMerge": "Merge CLIP",
          "MergeSuite_DiffusionModelFileMerge": "Merge Diffusion Model Files (streamed)",
          "MergeSuite_CheckpointMerge": "Merge Checkpoints"}


class Graph:
    def __init__(self, expect_images=None):
        self.nodes, self.links = [], []
        self.expect_images = expect_images  # list outputs: more images than SaveImage nodes

    def add(self, type_, widgets, pos, size=(320, 200), title=None):
        node = {"id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                            for i, (n, t) in enumerate(OUTPUTS[type_])],
                "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title or type_ in TITLES:
            node["title"] = title or TITLES[type_]
        self.nodes.append(node)
        return node

    def link(self, src, slot, dst, name, widget=False):
        type_ = src["outputs"][slot]["type"]
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], slot, dst["id"], len(dst["inputs"]), type_])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"].append({"name": name, "type": type_, "link": link_id,
                              **({"widget": {"name": name}} if widget else {})})

    def to_json(self):
        return {"id": "00000000-0000-4000-8000-000000000000", "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]},
                                                               **({"merge_suite": {"images": self.expect_images}}
                                                                  if self.expect_images else {})},
                "version": 0.4}


def sampler_tail(g, model, model_slot, clip, clip_slot, vae, prefix, x=1100, latent="EmptyLatentImage", cfg=5.0,
                 scheduler="normal", y=0):
    """Prompt -> KSampler -> VAE Decode -> Save Image. latent: EmptySD3LatentImage for 16-channel families (Flux).
    y: the top of the tail (a second tail below the first)."""
    pos = g.add("CLIPTextEncode", ["a watercolor painting of a lighthouse at dusk"], (x, y), (400, 160))
    neg = g.add("CLIPTextEncode", ["blurry"], (x, y + 200), (400, 160))
    g.link(clip, clip_slot, pos, "clip")
    g.link(clip, clip_slot, neg, "clip")
    latent = g.add(latent, [64, 64, 1], (x, y + 400), (300, 110))
    ks = g.add("KSampler", [42, "fixed", 4, cfg, "euler", scheduler, 1.0], (x + 450, y), (300, 260))
    g.link(model, model_slot, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    dec = g.add("VAEDecode", [], (x + 800, y), (200, 50))
    g.link(ks, 0, dec, "samples")
    g.link(vae, 2, dec, "vae")
    save = g.add("SaveImage", [prefix], (x + 800, y + 120), (300, 300))
    g.link(dec, 0, save, "images")
    return dec


def loaders(g, names="ab", layout="sd1"):
    """The tiny checkpoint loaders the examples start from, one per model letter, stacked on the left."""
    return [g.add("CheckpointLoaderSimple", [f"tiny_{layout}_{t}.safetensors"], (0, i * 160), (320, 100),
                  f"Model {t.upper()}") for i, t in enumerate(names)]


def merge_widgets(mode, alpha, beta, preset_a="custom", blocks_a="", preset_b="custom", blocks_b=""):
    return [mode, alpha, beta, preset_a, blocks_a, preset_b, blocks_b]


def merge_options(g, merges, pos, **settings):
    """A chain of Merge Option nodes (one per kind named in settings, stacked down from pos) feeding the
    options input of each merge node in merges; returns {kind: option node} for wiring lists into them."""
    made, last = {}, None
    x, y = pos
    for kind, defaults in OPTION_NODES:
        if not set(defaults) & set(settings):
            continue
        values = [settings.get(k, v) for k, v in defaults.items()]
        height = 60 + 26 * len(defaults) + (160 if kind == "Elemental" else 0)
        node = g.add(f"MergeSuite_Option{kind}", values, (x, y), (360, height))
        if last is not None:
            g.link(last, 0, node, "options")
        made[kind], last, y = node, node, y + height + 40
    for merge in merges:
        g.link(last, 0, merge, "options")
    return made


def checkpoint_block_merge():
    """SD1: weight sum of two checkpoints with the GRAD_V block preset -> KSampler."""
    g = Graph()
    a, b = loaders(g)
    m = g.add("MergeSuite_CheckpointMerge", merge_widgets("Weight sum", 0.5, 0.25, "GRAD_V"), (400, 0), (400, 330))
    merge_options(g, [m], (0, 340), elemental="")  # the elemental helper, for rules on top of the blocks
    for src, name in ((a, "a"), (b, "b")):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, m, f"clip_{name}")
    sampler_tail(g, m, 0, m, 1, a, "merge_suite/block_merge")
    return g


def add_difference_merge():
    """SD1: A + alpha(B - C) on the U-Net with custom block weights, and on the text encoder."""
    g = Graph()
    srcs = loaders(g, "abc")
    blocks = "0.5,1,1,1,1,1,1,0.5,0.5,0.5,0.5,0.5,0.5,0.3,0.5,0.5,0.5,0.5,0.5,0.5,1,1,1,1,1,1"
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Add difference", 1.0, 0.25, "custom", blocks),
              (400, 0), (400, 420))
    merge_options(g, [m], (0, 520), elemental="OUT03-OUT05:attn2:0.5\nNOT M00:ff.net:0.8",
                  adjust="1.5,0,0,0,0,0,0,0", include_exclude="exclude: OUT11", report_keys=True)
    c = g.add("MergeSuite_CLIPMerge", merge_widgets("Add difference", 0.5, 0.25), (400, 460), (400, 300))
    for src, name in zip(srcs, "abc"):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, c, f"clip_{name}")
    sampler_tail(g, m, 0, c, 0, srcs[0], "merge_suite/add_difference")
    shown = g.add("PreviewAny", [], (400, 780), (600, 300), "What was applied")
    g.link(m, 1, shown, "source")
    return g


def sdxl_triple_sum():
    """SDXL: triple sum of three checkpoints, SD1 preset converted to the 20-block SDXL layout."""
    g = Graph()
    srcs = loaders(g, "abc", "sdxl")
    m = g.add("MergeSuite_CheckpointMerge", merge_widgets("Triple sum", 0.4, 0.2, "FLAT_25", "", "custom", ""),
              (400, 0), (400, 380))
    for src, name in zip(srcs, "abc"):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, m, f"clip_{name}")
    sampler_tail(g, m, 0, m, 1, srcs[0], "merge_suite/sdxl_triple_sum")
    return g


def calc_family(name, calcmode, mode, alpha, beta=0.25, preset="custom", blocks="", gamma=0.3, seed=0,
                layout="sd1", models="ab"):
    """One calc mode on the U-Net of two or three SD1 checkpoints, text encoder from A."""
    def build():
        g = Graph()
        srcs = loaders(g, models, layout)
        m = g.add("MergeSuite_ModelMerge", merge_widgets(mode, alpha, beta, preset, blocks), (400, 0), (400, 380))
        merge_options(g, [m], (0, 520), calcmode=calcmode, gamma=gamma, seed=seed)
        for src, tag in zip(srcs, models):
            g.link(src, 0, m, f"model_{tag}")
        sampler_tail(g, m, 0, srcs[0], 1, srcs[0], f"merge_suite/{name}")
        return g
    return build


def analysis():
    """Similarity and difference of a merge against its parent, per block, as charts and a table."""
    g = Graph()
    a, b = loaders(g)
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25, "GRAD_V"), (400, 0), (400, 380))
    g.link(a, 0, m, "model_a")
    g.link(b, 0, m, "model_b")
    sim = g.add("MergeSuite_ModelSimilarity", ["cosine", "mean", "error"], (850, 0), (350, 200))
    g.link(a, 0, sim, "model_a")
    g.link(m, 0, sim, "model_b")
    g.link(a, 1, sim, "clip_a")
    g.link(b, 1, sim, "clip_b")
    report = g.add("PreviewAny", [], (1250, 0), (500, 300), "Report")
    g.link(sim, 0, report, "source")
    for i, name in ((1, "similarity"), (2, "difference")):
        save = g.add("SaveImage", [f"merge_suite/analysis_{name}"], (1250, 320 + (i - 1) * 330), (500, 300))
        g.link(sim, i, save, "images")
    el = g.add("MergeSuite_Elements", ["IN04", "attn2"], (850, 260), (350, 120))
    g.link(a, 0, el, "model")
    shown = g.add("PreviewAny", [], (850, 420), (350, 200), "Elements of IN04")
    g.link(el, 0, shown, "source")
    tokens = g.add("MergeSuite_TextEncoderTokens", [20, "cat, dog", False], (400, 420), (350, 150))
    g.link(a, 1, tokens, "clip")
    shown = g.add("PreviewAny", [], (400, 600), (350, 200), "Token norms")
    g.link(tokens, 0, shown, "source")
    return g


def adjust_only():
    """Adjust on its own: a warmer, brighter, more detailed model A."""
    g = Graph()
    a = g.add("CheckpointLoaderSimple", ["tiny_sd1_a.safetensors"], (0, 0), (320, 100), "Model A")
    adj = g.add("MergeSuite_Adjust", [2.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, -1.0], (400, 0), (320, 300),
                "Adjust Model (detail, contrast, colour)")
    g.link(a, 0, adj, "model")
    sampler_tail(g, adj, 0, a, 1, a, "merge_suite/adjust")
    return g


def random_block_weights():
    """Let the Dice Roll: two seeded draws (OUT blocks random, IN blocks per-key random), two merges, one run."""
    g = Graph(expect_images=2)
    a, b = loaders(g)
    custom = "0.5," + ",".join(["ER"] * 12) + ",0.5," + ",".join(["R"] * 12)
    dice = g.add("MergeSuite_RandomBlockWeights", ["SD1/SD2 (26 blocks)", "custom", "alpha", 5, "fixed", 2, 3,
                                                   custom, "1", "0", "1", "0", ""], (0, 320), (360, 420),
                 "Random Block Weights (Let the Dice Roll)")
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25), (400, 0), (400, 380))
    g.link(a, 0, m, "model_a")
    g.link(b, 0, m, "model_b")
    g.link(dice, 0, m, "blocks_alpha", widget=True)
    opts = merge_options(g, [m], (0, 780), seed=0, elemental="")  # seed: random elemental ratios
    g.link(dice, 2, opts["Elemental"], "elemental", widget=True)
    g.link(dice, 3, opts["CalcMode"], "seed", widget=True)
    sampler_tail(g, m, 0, a, 1, a, "merge_suite/random_block_weights")
    shown = g.add("PreviewAny", [], (400, 420), (400, 200), "Drawn weights")
    g.link(dice, 0, shown, "source")
    return g


def pinpoint_blocks():
    """Pinpoint blocks: merge B into A only in IN04-IN08, then only in OUT03-OUT05; one image per target."""
    g = Graph(expect_images=2)
    a, b = loaders(g)
    pin = g.add("MergeSuite_PinpointBlocks", ["SD1/SD2 (26 blocks)", "IN04-IN08, OUT03-OUT05", "1", ""],
                (0, 320), (360, 220), "Pinpoint Blocks (sweep list)")
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25), (400, 0), (400, 380))
    g.link(a, 0, m, "model_a")
    g.link(b, 0, m, "model_b")
    g.link(pin, 0, m, "blocks_alpha", widget=True)
    sampler_tail(g, m, 0, a, 1, a, "merge_suite/pinpoint_blocks")
    shown = g.add("PreviewAny", [], (400, 420), (400, 200), "Targets")
    g.link(pin, 1, shown, "source")
    return g


def sweep_alpha_x_blocks():
    """X x Y sweep: alpha (3 values) x beta block preset (2), sum Twice of three checkpoints, one queue run,
    ending in a grid. (A block list replaces the scalar of the same ratio, so the axes are alpha and beta.)"""
    g = Graph(expect_images=7)  # 6 cells + 1 grid
    a, b, c = (g.add("CheckpointLoaderSimple", [f"tiny_sd1_{t}.safetensors"], (0, i * 140), (320, 100),
                     f"Model {t.upper()}") for i, t in enumerate("abc"))
    xs = g.add("MergeSuite_SweepFloats", ["0.2, 0.5, 0.8", "alpha"], (0, 420), (320, 100), "X: alpha")
    ys = g.add("MergeSuite_SweepBlockWeights", ["GRAD_V\nGRAD_A", "blocks_beta"], (0, 560), (320, 140),
               "Y: beta block preset")
    cross = g.add("MergeSuite_SweepCrossProduct", [], (360, 420), (300, 200))
    g.link(xs, 0, cross, "x")
    g.link(xs, 1, cross, "x_labels")
    g.link(ys, 0, cross, "y")
    g.link(ys, 1, cross, "y_labels")
    m = g.add("MergeSuite_CheckpointMerge", merge_widgets("sum Twice", 0.5, 0.25), (700, 0), (400, 420))
    for src, name in ((a, "a"), (b, "b"), (c, "c")):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, m, f"clip_{name}")
    g.link(cross, 0, m, "alpha", widget=True)
    g.link(cross, 1, m, "blocks_beta", widget=True)
    decode = sampler_tail(g, m, 0, m, 1, a, "merge_suite/sweep_cells", x=1150)
    grid = g.add("MergeSuite_SweepGrid", ["alpha x beta block preset"], (1950, 400), (320, 160))
    g.link(decode, 0, grid, "images")
    g.link(cross, 3, grid, "x_labels")
    g.link(cross, 4, grid, "y_labels")
    g.link(m, 3, grid, "recipes")
    save = g.add("SaveImage", ["merge_suite/sweep_grid"], (2300, 400), (400, 300))
    g.link(grid, 0, save, "images")
    shown = g.add("PreviewAny", [], (1950, 600), (320, 160), "Grid layout")
    g.link(grid, 1, shown, "source")
    return g


def sweep_seeds_one_merge():
    """A seed sweep over one merge: the merged MODEL is reused for every seed (the merge runs once)."""
    g = Graph(expect_images=4)  # 3 seeds + 1 grid
    a, b = loaders(g)
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.4, 0.25, "GRAD_V"), (400, 0), (400, 420))
    g.link(a, 0, m, "model_a")
    g.link(b, 0, m, "model_b")
    seeds = g.add("MergeSuite_SweepSeeds", ["11, 22, 33", "seed"], (400, 460), (320, 100), "Seeds")
    decode = sampler_tail(g, m, 0, a, 1, a, "merge_suite/seed_sweep")
    ks = next(n for n in g.nodes if n["type"] == "KSampler")
    g.link(seeds, 0, ks, "seed", widget=True)
    grid = g.add("MergeSuite_SweepGrid", ["one merge, three seeds"], (1900, 400), (320, 160))
    g.link(decode, 0, grid, "images")
    g.link(seeds, 1, grid, "x_labels")
    g.link(m, 2, grid, "recipes")
    save = g.add("SaveImage", ["merge_suite/seed_sweep_grid"], (2250, 400), (400, 300))
    g.link(grid, 0, save, "images")
    return g


def paired_lists():
    """Four lists of two, paired element by element: (alpha 0.3, normal, no elemental, no Adjust) and
    (alpha 0.6, cosineA, OUT03-OUT05 attention from B, more detail). Two merges, two images, one run."""
    g = Graph(expect_images=2)
    a, b = loaders(g)
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25), (400, 0), (400, 420))
    g.link(a, 0, m, "model_a")
    g.link(b, 0, m, "model_b")
    opts = merge_options(g, [m], (400, 460), calcmode="normal", elemental="", adjust="")
    lists = [("MergeSuite_SweepFloatRange", [0.3, 0.6, 2, "alpha"], "alpha", m),
             ("MergeSuite_SweepCalcModes", ["normal, cosineA", "calcmode"], "calcmode", opts["CalcMode"]),
             ("MergeSuite_SweepElemental", ["none\n\nOUT03-OUT05:attn2:1", "elemental"], "elemental",
              opts["Elemental"]),
             ("MergeSuite_SweepAdjust", ["0,0,0,0,0,0,0,0\n2,0,0,0,0,0,0,0", "adjust"], "adjust", opts["Adjust"])]
    for i, (node_type, widgets, name, target) in enumerate(lists):
        src = g.add(node_type, widgets, (0, 340 + i * 150), (320, 120))
        g.link(src, 0, target, name, widget=True)
    sampler_tail(g, m, 0, a, 1, a, "merge_suite/paired_lists")
    return g


def model_list_pinpoint_elements():
    """Model B from a checkpoint list (B, then C) paired with pinpoint elements: B's (or C's) cross-attention
    in OUT03-OUT05 only, then its feed-forward in IN04-IN08 only. Two merges, two images, one run."""
    g = Graph(expect_images=2)
    a = loaders(g, "a")[0]
    models = g.add("MergeSuite_SweepModels", ["tiny_sd1_b.safetensors\ntiny_sd1_c.safetensors"], (0, 160),
                   (320, 120), "Sweep Checkpoints (model B)")
    pin = g.add("MergeSuite_PinpointElements", ["SD1/SD2 (26 blocks)", "OUT03-OUT05:attn2, IN04-IN08:ff.net",
                                                "1", "::0"], (0, 320), (360, 220), "Pinpoint Elements (sweep list)")
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25), (400, 0), (400, 420))
    g.link(a, 0, m, "model_a")
    g.link(models, 0, m, "model_b")
    opts = merge_options(g, [m], (400, 460), elemental="")
    g.link(pin, 0, opts["Elemental"], "elemental", widget=True)
    sampler_tail(g, m, 0, a, 1, a, "merge_suite/models_pinpoint_elements")
    return g


def load_recipe():
    """Load Recipe: re-create tiny_sd1_merged (A and B merged by the CLI, GRAD_V at 0.4) from the recipe in its
    metadata, finding A and B among the checkpoints, and sample it with its baked VAE."""
    g = Graph()
    r = g.add("MergeSuite_LoadRecipe", ["tiny_sd1_merged.safetensors"], (0, 0), (360, 120),
              "Load Recipe (re-create a merge)")
    sampler_tail(g, r, 0, r, 1, r, "merge_suite/load_recipe", x=450)
    show = g.add("PreviewAny", [], (0, 200), (400, 200), "Re-created recipe")
    g.link(r, 3, show, "source")
    return g


def merge_from_history():
    """Merge Checkpoints (GRAD_A block weights) sampled, and the same merge re-created by Merge from History
    (-1: the merge just recorded; its after input, wired to the merged MODEL, makes the merge run first)
    and sampled with the same seed and prompt: the two images are identical."""
    g = Graph()
    a, b = loaders(g)
    m = g.add("MergeSuite_CheckpointMerge", merge_widgets("Weight sum", 0.4, 0.25, "GRAD_A"), (400, 0), (400, 330))
    for src, name in ((a, "a"), (b, "b")):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, m, f"clip_{name}")
    sampler_tail(g, m, 0, m, 1, a, "merge_suite/merged")
    h = g.add("MergeSuite_MergeFromHistory", [-1], (400, 700), (360, 140), "Merge from History")
    g.link(m, 0, h, "after")
    sampler_tail(g, h, 0, h, 1, h, "merge_suite/from_history", y=700)
    show = g.add("PreviewAny", [], (0, 700), (360, 160), "Re-created recipe")
    g.link(h, 3, show, "source")
    return g


def save_merged_checkpoint():
    """Merge two checkpoints and save the result as fp16 with the recipe in its metadata (streamed)."""
    g = Graph()
    a, b = loaders(g)
    m = g.add("MergeSuite_CheckpointMerge", merge_widgets("Weight sum", 0.3, 0.25, "GRAD_V"), (400, 0), (400, 420))
    for src, name in ((a, "a"), (b, "b")):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, m, f"clip_{name}")
    save = g.add("MergeSuite_SaveCheckpoint", ["merge_suite/example_merge", "fp16", False, True, True],
                 (850, 500), (360, 220), "Save Checkpoint (streamed, with recipe)")
    g.link(m, 0, save, "model")
    g.link(m, 1, save, "clip")
    g.link(a, 2, save, "vae")
    shown = g.add("PreviewAny", [], (1250, 500), (400, 120), "Saved file")
    g.link(save, 0, shown, "source")
    sampler_tail(g, m, 0, m, 1, a, "merge_suite/saved_merge")
    return g


# --- Model families: tiny Flux checkpoints, tiny diffusion-model files via UNETLoader ---------

def flux_named_blocks():
    """Flux.1: two Forge-style checkpoints merged with named block weights (unnamed blocks take alpha) -> KSampler."""
    g = Graph()
    a, b = loaders(g, layout="flux1-dev")
    m = g.add("MergeSuite_CheckpointMerge",
              merge_widgets("Weight sum", 0.5, 0.25, "custom", "IN=0.2, D00-D01=0.8, S00-S02=0.3, OUT=1"),
              (400, 0), (400, 380))
    for src, name in ((a, "a"), (b, "b")):
        g.link(src, 0, m, f"model_{name}")
        g.link(src, 1, m, f"clip_{name}")
    report = g.add("PreviewAny", [], (400, 420), (500, 300), "Applied ratios")
    g.link(m, 2, report, "source")
    sampler_tail(g, m, 0, m, 1, a, "merge_suite/flux_merge", latent="EmptySD3LatentImage", cfg=1.0,
                 scheduler="simple")
    return g


def unet_loaders(g, family, y=0):
    return [g.add("UNETLoader", [f"tiny_{family}_{t}.safetensors", "default"], (0, y + i * 130), (320, 90),
                  f"{family} {t.upper()} (Load Diffusion Model)") for i, t in enumerate("ab")]


def family_merge(g, family, blocks, y, alpha=0.5):
    """A pair of diffusion-model files merged with named block weights; the merge compared with A per block."""
    a, b = unet_loaders(g, family, y)
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", alpha, 0.25, "custom", blocks), (400, y), (400, 380))
    g.link(a, 0, m, "model_a")
    g.link(b, 0, m, "model_b")
    sim = g.add("MergeSuite_ModelSimilarity", ["cosine", "mean", "error"], (850, y), (350, 200))
    g.link(a, 0, sim, "model_a")
    g.link(m, 0, sim, "model_b")
    report = g.add("PreviewAny", [], (1250, y), (500, 300), f"{family}: similarity to A")
    g.link(sim, 0, report, "source")
    save = g.add("SaveImage", [f"merge_suite/{family}_similarity"], (1800, y), (500, 300))
    g.link(sim, 1, save, "images")
    return m


def sd3_unet_merge_save():
    """SD3: two diffusion-model files merged by joint block, saved as a diffusion-model file, compared with A."""
    g = Graph()
    m = family_merge(g, "sd3", "J00=0.2, J01=0.7, OUT=1", 0, alpha=0.4)
    save = g.add("MergeSuite_SaveCheckpoint", ["merge_suite/sd3_merge", "fp16", False, True, False,
                                               "diffusion model only"], (400, 420), (360, 240),
                 "Save Checkpoint (streamed, with recipe)")
    g.link(m, 0, save, "model")
    shown = g.add("PreviewAny", [], (850, 420), (400, 120), "Saved file")
    g.link(save, 0, shown, "source")
    return g


def unet_families():
    """Z-Image, Qwen-Image and Wan 2.1 from Load Diffusion Model: named block weights per family, compared with A."""
    g = Graph()
    for i, (family, blocks) in enumerate((("z-image", "NR00-CR01=0.9, L00-L01=0.3"),
                                          ("qwen-image", "T00=0.1, T01=0.9"), ("wan21", "B00-B01=0.6, OUT=0"))):
        family_merge(g, family, blocks, i * 450)
    return g


def file_merge_flux():
    """Flux.1: three diffusion-model files merged from disk (A + alpha(B - C), named block weights) into a scaled-fp8
    file in diffusion_models, loaded as MODEL -> KSampler; CLIP and VAE from the Flux checkpoint A."""
    g = Graph()
    clip_vae = g.add("CheckpointLoaderSimple", ["tiny_flux1-dev_a.safetensors"], (0, 0), (320, 100),
                     "Flux CLIP and VAE (checkpoint A)")
    files = [f"tiny_flux1-dev_{t}.safetensors" for t in "abc"]
    m = g.add("MergeSuite_DiffusionModelFileMerge",
              [files[0], files[1], *merge_widgets("Add difference", 0.5, 0.25, "custom", "D00-D01=0.8, S00-S02=0.3"),
               "scaled_fp8", "merge_suite/flux_file_merge", files[2]], (400, 0), (400, 460))
    shown = g.add("PreviewAny", [], (400, 500), (400, 120), "Merged file (diffusion_models)")
    g.link(m, 1, shown, "source")
    sampler_tail(g, m, 0, clip_vae, 1, clip_vae, "merge_suite/flux_file_merge", latent="EmptySD3LatentImage",
                 cfg=1.0, scheduler="simple")
    return g


# --- LoRA ---------------------------------------------------------------------------
# Each graph makes its LoRA files itself (extraction from the tiny checkpoints), so no LoRA needs to be
# installed; a LoRA node's lora_list output ("<file>:1") feeds the next node's list input.

def lora_extract(g, tuned, original, prefix, pos, rank=8):
    ex = g.add("MergeSuite_LoraExtract", [1.0, 1.0, rank, 0, "full", 0.0, 0.0, prefix, "fp16"], pos, (360, 330))
    g.link(tuned, 0, ex, "model_a")
    g.link(original, 0, ex, "model_b")
    g.link(tuned, 1, ex, "clip_a")
    g.link(original, 1, ex, "clip_b")
    return ex


def lora_apply(g, model, lora_list_src, slot, pos):
    ap = g.add("MergeSuite_LoraApply", ["None", 1.0, 1.0, "", "", ""], pos, (360, 330))
    g.link(model, 0, ap, "model")
    g.link(lora_list_src, slot, ap, "lora_list", widget=True)
    g.link(model, 1, ap, "clip")
    return ap


def show(g, src, slot, pos, title):
    shown = g.add("PreviewAny", [], pos, (420, 160), title)
    g.link(src, slot, shown, "source")


def lora_extract_from_models():
    """Make LoRA: rank-8 LoRA of A - B (U-Net and text encoder), applied to B, which then samples like A."""
    g = Graph()
    a, b = loaders(g, "ab")
    ex = lora_extract(g, a, b, "merge_suite/example_extracted", (400, 0))
    ap = lora_apply(g, b, ex, 1, (400, 380))
    show(g, ex, 2, (800, 600), "Extraction report")
    sampler_tail(g, ap, 0, ap, 1, a, "merge_suite/lora_extracted", x=1250)
    return g


def lora_apply_block_weights_bake():
    """Apply a LoRA with the OUTALL block preset at 0.8 (text encoder and OUT blocks only), then bake it."""
    g = Graph()
    a, b = loaders(g, "ab")
    ex = lora_extract(g, a, b, "merge_suite/example_for_blocks", (400, 0))
    spec = g.add("StringConcatenate", ["", ":OUTALL", ""], (400, 380), (300, 150), "name:ratio + :OUTALL")
    g.link(ex, 1, spec, "string_a", widget=True)
    ap = lora_apply(g, b, spec, 0, (800, 0))
    bake = g.add("MergeSuite_LoraBake", [], (800, 380), (300, 100))
    g.link(ap, 0, bake, "model")
    g.link(ap, 1, bake, "clip")
    show(g, ap, 2, (800, 520), "What was applied")
    sampler_tail(g, bake, 0, bake, 1, a, "merge_suite/lora_blocks_baked", x=1250)
    return g


def two_extracted(g, rank_1, rank_2):
    a, b, c = loaders(g, "abc")
    l1 = lora_extract(g, a, c, "merge_suite/example_l1", (400, 0), rank=rank_1)
    l2 = lora_extract(g, b, c, "merge_suite/example_l2", (400, 380), rank=rank_2)
    return a, c, l1, l2


def lora_merge():
    """Merge LoRAs: two extracted LoRAs (ranks 4 and 6) at 0.6 and 0.4, exact SVD merge at rank 10, applied to C."""
    g = Graph()
    a, c, l1, l2 = two_extracted(g, 4, 6)
    listing = g.add("StringConcatenate", ["", "", ", "], (800, 0), (300, 150), "LoRA list")
    g.link(l1, 1, listing, "string_a", widget=True)
    g.link(l2, 1, listing, "string_b", widget=True)
    m = g.add("MergeSuite_LoraMerge", ["", "exact", 10, "full", 0.0, True, "merge", "merge_suite/example_merged",
                                       "fp16", ""], (800, 200), (360, 380))
    g.link(listing, 0, m, "lora_list", widget=True)
    ap = lora_apply(g, c, m, 1, (1200, 0))
    show(g, m, 2, (1200, 380), "Merge report")
    sampler_tail(g, ap, 0, ap, 1, a, "merge_suite/lora_merged", x=1650)
    return g


def lora_extract_from_two_loras():
    """Extract from two LoRAs: what LoRA 2 has that LoRA 1 does not (alpha = beta = gamma = 1), applied to C."""
    g = Graph()
    a, c, l1, l2 = two_extracted(g, 4, 4)  # extract works tensor by tensor: equal ranks
    ex = g.add("MergeSuite_LoraExtractFromLoras", ["", "", 1.0, 1.0, 1.0, True, "merge_suite/example_dissimilar",
                                                   "fp16", "create new", ""], (800, 0), (360, 380))
    g.link(l1, 1, ex, "lora_1", widget=True)
    g.link(l2, 1, ex, "lora_2", widget=True)
    ap = lora_apply(g, c, ex, 1, (1200, 0))
    show(g, ex, 2, (1200, 380), "Extraction report")
    sampler_tail(g, ap, 0, ap, 1, a, "merge_suite/lora_dissimilar", x=1650)
    return g


LORA_WORKFLOWS = {
    "lora_extract_from_models": lora_extract_from_models,
    "lora_apply_block_weights_bake": lora_apply_block_weights_bake,
    "lora_merge_exact": lora_merge,
    "lora_extract_from_two_loras": lora_extract_from_two_loras,
}

def combine_ties():
    """SD1: TIES of three fine-tunes over a base, with the GRAD_V block preset -> KSampler; the report shown."""
    g = Graph()
    base = g.add("CheckpointLoaderSimple", ["tiny_sd1_a.safetensors"], (0, 0), (320, 100), "Base")
    tunes = [g.add("CheckpointLoaderSimple", [name], (0, 160 * (i + 1)), (320, 100), f"Fine-tune {i + 1}")
             for i, name in enumerate(("tiny_sd1_b.safetensors", "tiny_sd1_c.safetensors",
                                       "tiny_sd1_merged.safetensors"))]
    widgets = ["ties", 1.0, "1,0.8,0.6", 0.3, 0.9, 0.1, 0.01, 0.1, 100, 0, "GRAD_V", ""]
    m = g.add("MergeSuite_CombineModels", widgets, (400, 0), (400, 520), "Combine Models")
    g.link(base, 0, m, "base")
    for i, src in enumerate(tunes):
        g.link(src, 0, m, f"model_{i + 1}")
    sampler_tail(g, m, 0, base, 1, base, "merge_suite/combine_ties")
    shown = g.add("PreviewAny", [], (400, 560), (600, 300), "What was applied")
    g.link(m, 1, shown, "source")
    return g


def rebasin_then_merge():
    """SD1: B's hidden units reordered to match A's (Re-basin Model), then a weight sum of A and the result."""
    g = Graph()
    a, b = loaders(g)
    r = g.add("MergeSuite_RebasinModel", [10, 0], (400, 160), (360, 130), "Re-basin Model")
    g.link(a, 0, r, "model_a")
    g.link(b, 0, r, "model_b")
    m = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25), (800, 0), (400, 330))
    g.link(a, 0, m, "model_a")
    g.link(r, 0, m, "model_b")
    sampler_tail(g, m, 0, a, 1, a, "merge_suite/rebasin", x=1250)
    shown = g.add("PreviewAny", [], (400, 340), (360, 200), "Re-basin report")
    g.link(r, 1, shown, "source")
    return g


# --- The demo: the shipped model family (demo/models, demo/train) ------------------------------------------
# Sampler settings and size from the model card (demo/models/README.md). The fine-tunes share the base's frozen
# CLIP and VAE, so the demo merges MODELs only (Merge Models) and encodes and decodes with the base's.
DEMO_MODELS = {"base": "merge-suite-demo-base.safetensors", "A": "merge-suite-demo-pastel.safetensors",
               "B": "merge-suite-demo-stripes.safetensors"}
DEMO_STYLES = ("pastel", "stripes")  # the style names shown in the grid's title
DEMO_PROMPTS = ("a red circle on the left", "a blue square in the middle", "a yellow triangle on the right")
DEMO_SAMPLING = {"size": 64, "seed": 7, "steps": 20, "cfg": 6.0, "sampler": "euler", "scheduler": "normal"}
DEMO_ALPHAS = "0, 0.25, 0.5, 0.75, 1"
# 26 block weights, BASE first: BASE, IN00-IN11 and M00 from A (0), OUT00-OUT11 from B (1).
IN_A_OUT_B = ",".join(["0"] * 14 + ["1"] * 12)


def demo_style_blend(models=None, sampling=None, styles=DEMO_STYLES, prompts=DEMO_PROMPTS):
    """The demo grid: a base model and two style fine-tunes (A, B) merged seven ways -- weight sum at five
    alphas, A + 1*(B - base), and the input side of A with the output side of B -- as the columns, prompts as
    rows; every cell the same seed. The merges' MODEL lists are joined into one list and crossed with the
    prompts, so one KSampler and one grid hold them all. Without a base in models (a user's own A and B),
    only the weight sums, with A's CLIP and VAE."""
    models, s = models or DEMO_MODELS, sampling or DEMO_SAMPLING
    merges = 7 if "base" in models else 5
    g = Graph(expect_images=merges * len(prompts) + 1)  # the cells + the grid
    titles = {"base": "Base", "A": f"A: {styles[0]}", "B": f"B: {styles[1]}"}
    loaded = {k: g.add("CheckpointLoaderSimple", [models[k]], (0, i * 140), (340, 100), titles[k])
              for i, k in enumerate(k for k in ("base", "A", "B") if k in models)}
    a, b, clip_vae = loaded["A"], loaded["B"], loaded.get("base", loaded["A"])
    alphas = g.add("MergeSuite_SweepFloats", [DEMO_ALPHAS, "alpha"], (0, 440), (340, 100), "Alphas (B's share)")
    ws = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25), (400, 0), (400, 380),
               "Weight sum A, B")
    g.link(alphas, 0, ws, "alpha", widget=True)
    parts = [(ws, alphas, 1)]
    if "base" in models:
        ad = g.add("MergeSuite_ModelMerge", merge_widgets("Add difference", 1.0, 0.25), (400, 420), (400, 380),
                   "A + 1*(B - base)")
        g.link(loaded["base"], 0, ad, "model_c")
        bw = g.add("MergeSuite_ModelMerge", merge_widgets("Weight sum", 0.5, 0.25, "custom", IN_A_OUT_B),
                   (400, 840), (400, 380), "Input side from A, output side from B")
        names = [g.add("PrimitiveString", [text], (850, 420 + i * 120), (300, 80), "Column label")
                 for i, text in enumerate(("A + (B - base)", "IN A | OUT B"))]
        parts += [(ad, names[0], 0), (bw, names[1], 0)]
    joined = g.add("MergeSuite_SweepJoin", [], (850, 0), (300, 200), "Join the merges (columns)")
    for part, (merge, labels, slot) in zip("abc", parts):
        g.link(a, 0, merge, "model_a")
        g.link(b, 0, merge, "model_b")
        g.link(merge, 0, joined, part)
        g.link(labels, slot, joined, f"{part}_labels")
    texts = [g.add("PrimitiveString", [text], (850, 700 + i * 120), (300, 80), "Prompt")
             for i, text in enumerate(prompts)]
    rows = g.add("MergeSuite_SweepJoin", [], (1200, 420), (300, 200), "Join the prompts (rows)")
    for part, text in zip("abc", texts):
        g.link(text, 0, rows, part)
    cross = g.add("MergeSuite_SweepCrossProduct", [], (1200, 0), (300, 200))
    for name, src, slot in (("x", joined, 0), ("x_labels", joined, 1), ("y", rows, 0), ("y_labels", rows, 1)):
        g.link(src, slot, cross, name)
    pos = g.add("CLIPTextEncode", [""], (1550, 0), (400, 160), "Prompt (from the rows)")
    g.link(clip_vae, 1, pos, "clip")
    g.link(cross, 1, pos, "text", widget=True)
    neg = g.add("CLIPTextEncode", [""], (1550, 200), (400, 160), "Negative (empty)")
    g.link(clip_vae, 1, neg, "clip")
    latent = g.add("EmptyLatentImage", [s["size"], s["size"], 1], (1550, 400), (300, 110))
    ks = g.add("KSampler", [s["seed"], "fixed", s["steps"], s["cfg"], s["sampler"], s["scheduler"], 1.0],
               (2000, 0), (300, 260))
    g.link(cross, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    dec = g.add("VAEDecode", [], (2350, 0), (200, 50))
    g.link(ks, 0, dec, "samples")
    g.link(clip_vae, 2, dec, "vae")
    save = g.add("SaveImage", ["merge_suite/demo_cell"], (2350, 120), (300, 300))
    g.link(dec, 0, save, "images")
    grid = g.add("MergeSuite_SweepGrid", [f"A = {styles[0]}, B = {styles[1]}, seed {s['seed']}"],
                 (2700, 0), (320, 160))
    g.link(dec, 0, grid, "images")
    g.link(cross, 3, grid, "x_labels")
    g.link(cross, 4, grid, "y_labels")
    save = g.add("SaveImage", ["merge_suite/demo_grid"], (3050, 0), (500, 400))
    g.link(grid, 0, save, "images")
    shown = g.add("PreviewAny", [], (2700, 220), (320, 160), "Grid layout")
    g.link(grid, 1, shown, "source")
    return g

WORKFLOWS = {
    "adjust_model": adjust_only,
    "combine_ties_three_fine_tunes": combine_ties,
    "analysis_similarity_per_block": analysis,
    # similarity-weighted blend: cosineA (cosineB is the same graph with calcmode cosineB)
    "calc_cosine_similarity_blend": calc_family("cosine", "cosineA", "Weight sum", 0.1),
    # difference family: smoothAdd; trainDifference and extract take the same three models
    "calc_smooth_add_difference": calc_family("smooth_add", "smoothAdd", "Add difference", 0.8, models="abc"),
    "calc_extract_features": calc_family("extract", "extract", "Add difference", 0.3, beta=0.5, gamma=2.0,
                                         models="abc"),
    "calc_train_difference": calc_family("train_difference", "trainDifference", "Add difference", 0.5,
                                         models="abc"),
    # slice exchange: tensor (tensor2 slices dim 1 instead)
    "calc_tensor_slices": calc_family("tensor", "tensor", "Weight sum", 0.5, beta=0.25),
    # scaling family: self with block weights (OUT blocks of A scaled by 0.9), plus random
    "calc_self_scale_blocks": calc_family("self", "self", "Weight sum", 1.0,
                                          blocks=",".join(["0"] * 14 + ["0.9"] * 12)),
    "calc_plus_random_sdxl": calc_family("plus_random", "plus random", "Weight sum", 0.002, seed=1234,
                                         layout="sdxl"),
    "merge_checkpoints_block_weights": checkpoint_block_merge,
    "merge_add_difference": add_difference_merge,
    "merge_sdxl_triple_sum": sdxl_triple_sum,
    "merge_random_block_weights": random_block_weights,
    "merge_pinpoint_blocks": pinpoint_blocks,
    "merge_paired_lists": paired_lists,
    "merge_model_list_pinpoint_elements": model_list_pinpoint_elements,
    "load_recipe": load_recipe,
    "rebasin_then_merge": rebasin_then_merge,
    "merge_from_history": merge_from_history,
    "sweep_alpha_x_beta_blocks": sweep_alpha_x_blocks,
    "sweep_seeds_one_merge": sweep_seeds_one_merge,
    "demo_style_blend": demo_style_blend,
    "save_merged_checkpoint_fp16": save_merged_checkpoint,
    "family_flux_named_blocks": flux_named_blocks,
    "family_sd3_unet_merge_save": sd3_unet_merge_save,
    "family_zimage_qwen_wan_unet": unet_families,
    "file_merge_flux_add_difference_scaled_fp8": file_merge_flux,
    **LORA_WORKFLOWS,
}

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (OUT / f"{name}.json").write_text(json.dumps(build().to_json(), indent=1) + "\n")
        print(OUT / f"{name}.json")
