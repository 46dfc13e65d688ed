"""``python -m jsqueue`` is the ``jsqueue`` command."""

from jsqueue.cli import main

main()
