"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class S2VTError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class DataError(S2VTError):
    """A malformed annotation, caption or split file."""

    def __init__(self, path, message, line=None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


class SignatureMismatch(S2VTError):
    """Features were extracted differently from what a model was trained on."""


class WeightsNotFound(S2VTError):
    """Pretrained CNN weights are not on disk (nothing is downloaded at run time)."""
