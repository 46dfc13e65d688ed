"""Integrations with other stacks, each behind its own extra: ``jsqueue.contrib.otel``
(``jsqueue[otel]``) and ``jsqueue.contrib.django`` (``jsqueue[django]``). Importing
``jsqueue`` imports none of them."""
