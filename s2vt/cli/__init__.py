"""The ``s2vt`` command line (the top layer): one parser, a function per command."""
from s2vt.cli.commands import main

__all__ = ["main"]
