"""Dataset folders on disk: layouts, splits, normalisation, prepared data and a CLI.

One module per job; this package re-exports their public names::

  layouts.py   which layout a folder has; split files              detect_layout, read_split_file
  plan.py      the image/mask pair of every id; one check of each  make_plan, check_files
  splits.py    train / val / test ids; the normalisation           split_ids, normalisation, SPLITS
  sources.py   random-access sources and the Dataset               Source, FolderSource, Dataset
  load.py      the dataset a config names, prepared once as TFDS   load_dataset, folder_dataset, NAMES
  report.py    what ``python -m limijax.data`` reports             inspect, format_report
  __main__.py  the command itself (its flags exist only when it runs)

Pixels are read by :mod:`limijax.image_io` (8-bit grey images, the 16-bit policy, mask
binarisation); prepared TFDS copies are written by :mod:`limijax.tfds_builders`, which
imports nothing from this package. From a shell::

  python -m limijax.data --root=DIR [--json] [--split=standard|random] [--preview=FILE.png]
"""

from limijax.data.layouts import BASIC_NAMES
from limijax.data.layouts import IMAGE_EXTS
from limijax.data.layouts import Layout
from limijax.data.layouts import MASK_EXTS
from limijax.data.layouts import NUAA_MASK_SUFFIX
from limijax.data.layouts import detect_layout
from limijax.data.layouts import read_split_file
from limijax.data.load import DEFAULT_DATA_DIR
from limijax.data.load import NAMES
from limijax.data.load import folder_dataset
from limijax.data.load import load_dataset
from limijax.data.report import format_report
from limijax.data.report import inspect
from limijax.data.sources import Dataset
from limijax.data.sources import FolderSource
from limijax.data.sources import Source
from limijax.data.splits import SPLITS
from limijax.data.splits import normalisation
from limijax.data.splits import split_ids
from limijax.image_io import read_image
from limijax.image_io import read_mask

__all__ = [
    'BASIC_NAMES', 'DEFAULT_DATA_DIR', 'IMAGE_EXTS', 'MASK_EXTS', 'NAMES', 'NUAA_MASK_SUFFIX',
    'SPLITS', 'Dataset', 'FolderSource', 'Layout', 'Source', 'detect_layout', 'folder_dataset',
    'format_report', 'inspect', 'load_dataset', 'normalisation', 'read_image', 'read_mask',
    'read_split_file', 'split_ids',
]
