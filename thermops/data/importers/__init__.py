"""Importers of real thermal datasets into the raw format (`thermops.data.raw`).

One module per format (`voc`, `yolo`, `coco`, `images` for frame folders,
`video`), IoU track linking (`tracks`), background-subtraction auto-labelling
(`autolabel`), and `import_source`, which turns one `ingest.sources` entry of
params.yaml into a raw dataset checked against its cameras' calibration files.
"""

from thermops.data.importers.base import DROP, ImportDataError, IngestParams, SourceParams
from thermops.data.importers.source import import_source

__all__ = ["DROP", "ImportDataError", "IngestParams", "SourceParams", "import_source"]
