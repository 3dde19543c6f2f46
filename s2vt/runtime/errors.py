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


class ConfigError(S2VTError):
    """A configuration value that makes no sense; the message names the flag."""


class FieldError(ConfigError):
    """A value that breaks its field's declaration, as data: the field ``name`` of config class
    ``owner``, the ``requirement`` it breaks ("must be >= 1") and the value as shown (``got``).
    A caller that knows the value under another name words the message with :meth:`about`."""

    def __init__(self, name: str, owner: str, requirement: str, got: str):
        self.name, self.owner, self.requirement, self.got = name, owner, requirement, got
        super().__init__(self.about(f"--{name.replace('_', '-')} ({owner}.{name})"))

    def about(self, subject: str) -> str:
        """The message with ``subject`` naming the value: "its signature's sampling.stride must be >= 1, got 0"."""
        return f"{subject} {self.requirement}, got {self.got}"
