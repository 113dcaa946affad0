"""pyproject.toml as ComfyUI reads it when it loads the pack from custom_nodes/ (and the registry publishes it)."""
from pathlib import Path

from comfy_config import config_parser

from merge_core import __version__

REPO = Path(__file__).resolve().parents[2]


def test_comfyui_reads_complete_registry_metadata():
    config = config_parser.extract_node_configuration(str(REPO))
    assert config is not None
    comfy, project = config.tool_comfy, config.project
    assert comfy.publisher_id and comfy.display_name and project.name == "merge-suite"
    assert project.version == __version__
    assert project.urls.repository.startswith("https://github.com/")
    assert project.dependencies == ["safetensors>=0.4.2"]  # installing the pack into ComfyUI adds nothing
    assert comfy.icon.startswith("https://raw.githubusercontent.com/")
    icon = REPO / comfy.icon.split("/main/", 1)[1]  # the URL names a file of this repository
    assert icon.is_file() and icon.read_text().lstrip().startswith("<svg")
