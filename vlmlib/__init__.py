"""vlmlib: the helper package of the course book *Connecting Language to the World*.

Small modules split along the course's concepts; each module's docstring names the notebook that
introduces it. The most used names are re-exported here::

    import vlmlib
    settings = vlmlib.setup(seed=0)
    world = vlmlib.ShapesWorld()
"""

__version__ = "0.1.0"

import warnings  # noqa: E402

# Without ipywidgets, tqdm.auto (imported by transformers and diffusers) warns in every notebook
# that it falls back to text progress bars; text bars are what we want there, so say nothing.
warnings.filterwarnings("ignore", message="IProgress not found")

from .cache import Artifact, cached, cache_dir  # noqa: E402
from .plotting import (animation_html, bar_chart, heatmap, plot_curves, progress, show_conversations,  # noqa: E402
                       show_images, table)  # noqa: E402
from .report import expect, record, stopwatch  # noqa: E402
from .settings import RunSettings, seed_everything, setup  # noqa: E402
from .shapesworld import ShapesData, ShapesWorld  # noqa: E402

__all__ = [
    "Artifact", "cached", "cache_dir", "animation_html", "bar_chart", "heatmap", "plot_curves", "progress", "show_conversations",
    "show_images", "table",
    "expect", "record", "stopwatch", "RunSettings", "seed_everything", "setup", "ShapesData", "ShapesWorld",
]
