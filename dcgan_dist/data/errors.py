"""The data layer's user-facing errors, in a module of their own so that the tar reader (`tario`),
the start-up checks (`locate`) and the image sets (`imagesets`) can raise them without importing
each other."""

from ..errors import UserError


class DataError(UserError, ValueError):
    """A data problem with a message that names the key or file and the fix."""


class SourceError(UserError, ValueError):
    """An image set that cannot be read, with the path and the fix in the message."""
