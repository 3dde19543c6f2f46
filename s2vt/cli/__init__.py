"""The ``s2vt`` command line (the top layer): one parser, a function per command."""
from s2vt.cli.app import main

__all__ = ["main"]
