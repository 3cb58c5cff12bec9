"""The data layer's user-facing error, in a module of its own so that the tar reader (`tario`) and
the start-up checks (`locate`) can both raise it without importing each other."""

from ..errors import UserError


class DataError(UserError, ValueError):
    """A data problem with a message that names the key or file and the fix."""
