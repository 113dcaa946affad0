"""LoRA: key names in both namings, block maps, the SVD math, the merge and extract operations, metadata, files,
and the file-level API."""
