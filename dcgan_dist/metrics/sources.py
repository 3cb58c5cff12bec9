"""The old home of the image sets, kept only for train.py's `from .metrics.sources import ImageSource,
SourceError`. Image sets live in `data.imagesets` (`ImageSet`, `open_image_set`), their error in
`data.errors`; import them from there. This module goes once train.py does."""

from ..data.errors import SourceError
from ..data.imagesets import ImageSet as ImageSource

__all__ = ["ImageSource", "SourceError"]
