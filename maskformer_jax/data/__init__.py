"""Input data: sources of raw examples, the reference's augmentations, targets, grain pipelines."""
