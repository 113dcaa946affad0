"""API-format ComfyUI prompts that sample the demo models and their merges, and the reading of the images back.

Shared by the image tests (tests/e2e/test_demo_images.py) and the style table (bench/demo_style_values.py): one
prompt holds every image (ComfyUI runs each loader and merge once), each image saved by its own SaveImage node
under a name such as ``"ws 0.25 | a red circle on the left"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO_MODELS_DIR = REPO / "demo" / "models"
# The shipped family: a base and two style fine-tunes of it; A and B as the merges use them.
DEMO_MODELS = {"base": "merge-suite-demo-base.safetensors", "A": "merge-suite-demo-pastel.safetensors",
               "B": "merge-suite-demo-stripes.safetensors"}
# The model card's sampler settings (demo/models/README.md).
SAMPLING = {"size": 64, "seed": 7, "steps": 20, "cfg": 6.0, "sampler": "euler", "scheduler": "normal"}
# The server's environment for these samples: one CPU thread. The models are tiny, and torch's default thread
# pool spins against the other processes of a busy machine (a 64 px sample took 26 s with the default threads
# on a loaded 2-core machine, 0.5 s with one).
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Block weights, BASE first, then IN00-IN11, M00, OUT00-OUT11: the input side (and BASE) from one model, the
# output side from the other.
IN_A_OUT_B = ",".join(["0"] * 14 + ["1"] * 12)
IN_B_OUT_A = ",".join(["1"] * 14 + ["0"] * 12)


def weight_sum(alpha: float) -> dict:
    return {"mode": "Weight sum", "alpha": alpha, "blocks_alpha": ""}


# The merges of A and B (and the base as C) that the tests and the table sample, by label.
MERGES = {**{f"ws {a:g}": weight_sum(a) for a in ALPHAS},
          "A + (B - base)": {"mode": "Add difference", "alpha": 1.0, "blocks_alpha": "", "c": "base"},
          "IN A | OUT B": {"mode": "Weight sum", "alpha": 0.5, "blocks_alpha": IN_A_OUT_B},
          "IN B | OUT A": {"mode": "Weight sum", "alpha": 0.5, "blocks_alpha": IN_B_OUT_A}}


@dataclass
class ApiPrompt:
    """A prompt in ComfyUI's API format, built node by node: ``add`` returns the node's id, ``out(id, slot)``
    links to one of its outputs; ``saves`` maps each image's name to its SaveImage node."""
    nodes: dict = field(default_factory=dict)
    saves: dict = field(default_factory=dict)

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    @staticmethod
    def out(node_id: str, slot: int = 0) -> list:
        return [node_id, slot]


@dataclass
class SampleSet:
    """What to sample: checkpoints by label (``models``), merges of A and B by label (``merges``, see MERGES),
    the captions, which labels to sample each caption with (a checkpoint's label or a merge's), and which
    checkpoints use their own CLIP and VAE (the rest use the base's: the demo fine-tunes share it exactly)."""
    models: dict
    merges: dict
    captions: tuple
    sampled: tuple
    own_encoders: tuple = ()
    sampling: dict = field(default_factory=lambda: dict(SAMPLING))


def image_name(label: str, caption: str) -> str:
    return f"{label} | {caption}"


def build_prompt(spec: SampleSet) -> ApiPrompt:
    """One prompt sampling every (label, caption) of ``spec``, each with the same seed and settings."""
    p = ApiPrompt()
    s = spec.sampling
    loaders = {label: p.add("CheckpointLoaderSimple", ckpt_name=name) for label, name in spec.models.items()}
    unets = {label: p.out(node, 0) for label, node in loaders.items()}
    for label, merge in spec.merges.items():
        inputs = {"model_a": unets["A"], "model_b": unets["B"], "mode": merge["mode"], "alpha": merge["alpha"],
                  "beta": 0.25, "blocks_alpha_preset": "custom", "blocks_alpha": merge["blocks_alpha"],
                  "blocks_beta_preset": "custom", "blocks_beta": ""}
        if "c" in merge:
            inputs["model_c"] = unets[merge["c"]]
        unets[label] = p.out(p.add("MergeSuite_ModelMerge", **inputs), 0)
    latent = p.add("EmptyLatentImage", width=s["size"], height=s["size"], batch_size=1)
    encoded: dict = {}
    for label in spec.sampled:
        owner = label if label in spec.own_encoders else "base"
        clip, vae = p.out(loaders[owner], 1), p.out(loaders[owner], 2)
        for caption in spec.captions:
            if (owner, caption) not in encoded:
                encoded[owner, caption] = (p.add("CLIPTextEncode", clip=clip, text=caption),
                                           p.add("CLIPTextEncode", clip=clip, text=""))
            positive, negative = encoded[owner, caption]
            sample = p.add("KSampler", model=unets[label], seed=s["seed"], steps=s["steps"], cfg=s["cfg"],
                           sampler_name=s["sampler"], scheduler=s["scheduler"], denoise=1.0,
                           positive=p.out(positive), negative=p.out(negative), latent_image=p.out(latent))
            decoded = p.add("VAEDecode", samples=p.out(sample), vae=vae)
            name = image_name(label, caption)
            p.saves[name] = p.add("SaveImage", images=p.out(decoded), filename_prefix=f"demo_images/{len(p.saves)}")
    return p


def read_images(server, prompt: ApiPrompt, timeout: float = 600.0) -> dict[str, np.ndarray]:
    """Run the prompt on a ``demo/server.py`` ComfyServer; each image by name, (H, W, 3) uint8."""
    entry = server.run_prompt(prompt.nodes, timeout=timeout)
    images = {}
    for name, node_id in prompt.saves.items():
        (info,) = entry["outputs"][node_id]["images"]
        path = server.base / "output" / info.get("subfolder", "") / info["filename"]
        with Image.open(path) as im:
            images[name] = np.asarray(im.convert("RGB"))
    return images
