"""The ``jsqueue`` command: a thin click group over the public coroutines.

Every command takes ``-A module:app`` (or ``$JSQUEUE_APP``) and ``--url`` (or ``$JSQUEUE_URL``).
Errors are one line on stderr and a non-zero exit. This package is the only code that imports
click.
"""

from jsqueue.cli import dashboard, deadletters, operate, processes, queues
from jsqueue.cli.common import cli

__all__ = ["cli", "dashboard", "deadletters", "main", "operate", "processes", "queues"]


def main() -> None:
    """Entry point of the ``jsqueue`` console script."""
    cli(prog_name="jsqueue")
