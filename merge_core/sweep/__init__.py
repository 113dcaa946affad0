"""Parameter sweeps: typed value lists (ranges, presets, seeds) and the labelled grid their cells are drawn on."""
