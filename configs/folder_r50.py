"""MaskFormer R50 with the ADE20K recipe on your own semantic_folder dataset (docs/own_data.md).

The class count comes from the dataset's classes.txt (num_classes 0); pass the dataset folder with
--config.dataset.root and, for a smaller set, fewer --config.num_steps.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.dataset.name = "semantic_folder"
    config.model.num_classes = 0  # taken from <root>/classes.txt
    return config
