"""ComfyUI adapters: MODEL/CLIP in, merge_core plans, patched clones out. No math here."""
