"""The services: what jsqueue does with the wire, in the words of a task queue.

Producing jobs, results and revocation, dead letters, chords and chain continuations, status,
the worker registry, events and metrics. A service gets what it uses through the small
:class:`~jsqueue.services.deps.Deps` protocol (settings, the broker, the result store), never
the whole App, so nothing here imports the app layer above it.
"""
