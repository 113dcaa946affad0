"""Which keys get which ratio: block-weight text and presets, the block-spec parser, elemental rules,
include/exclude, pinpoint sweeps and dice."""
