"""Dataset sources by name (`jaxmlc.data.info.load` imports this package).

One line per dataset: `register(name)(loader)`, where loader(data_config)
returns a `DatasetSource`. A module with its own loader can instead decorate
it with `@register("name")` and just be imported here.
"""
from jaxmlc.data.builders import digits_mosaic, synthetic_scenes
from jaxmlc.data.info import register
from jaxmlc.data.tfds_source import local_tfds_loader

register("synthetic_scenes")(
    local_tfds_loader(synthetic_scenes.SyntheticScenes, "synthetic_scenes"))
register("digits_mosaic")(
    local_tfds_loader(digits_mosaic.DigitsMosaic, "digits_mosaic"))
from jaxmlc.data.builders import coco, vg200, voc  # noqa: E402,F401  (register on import)
from jaxmlc.data.builders import nuswide, yt8m  # noqa: E402,F401  (register "nuswide", "yt8m_segments")
from jaxmlc.data.builders import mirflickr, paired_features  # noqa: E402,F401  (register "mirflickr25k", "paired_features")
