"""The command lines' argument parser: argparse whose errors are one line, ``prog: error: message``
(exit code 2, no usage block), so a bad flag is named in a single line before any work starts."""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` with one-line errors (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
