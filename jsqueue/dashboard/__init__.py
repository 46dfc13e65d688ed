"""``jsqueue dashboard``: a web page to watch and run the system (the ``dashboard`` extra).

Starlette serves server-rendered pages and a JSON API under ``/api/...`` that the pages use; a
:class:`~jsqueue.dashboard.monitor.Monitor` samples the queues and the worker registry every
second (the rate chart works with events off) and pushes each snapshot to ``/api/stream``
(server-sent events). Every number comes from the same service functions the CLI prints.
Importing ``jsqueue`` never imports this package.
"""

from jsqueue.dashboard.security import Policy
from jsqueue.dashboard.server import create_app, serve

__all__ = ["Policy", "create_app", "serve"]
