"""Errors that a user can act on. The CLI prints them as one line and exits non-zero."""


class ZscirError(Exception):
    """Base class: a problem with the user's input, files or settings (not a bug)."""


class InputError(ZscirError):
    """Bad input: a missing/unreadable image, an empty text, a value out of range."""


class CheckpointError(ZscirError):
    """A checkpoint that cannot be used: wrong kind, another backbone, missing or corrupt files."""


class ImageTooLargeError(InputError):
    """An image whose header declares more pixels than the limit (refused before decoding; HTTP 413)."""
