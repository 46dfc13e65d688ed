"""The Python side of the Node example: tasks that a Node producer calls by name.

Task names are explicit (``name="add"``), so that another language can send them without knowing
Python module paths. Run a worker for them from this directory::

    jsqueue worker -A tasks:app

The URL comes from ``$JSQUEUE_URL`` when the app connects; the prefix is the default ``jsq``.
"""

from __future__ import annotations

from jsqueue import App, current_job

app = App("node-example")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="greet")
async def greet(name: str, *, greeting: str = "Hello") -> dict[str, object]:
    """A JSON object back, with when the job was due (a delayed job's ``eta``)."""
    return {"text": f"{greeting}, {name}!", "eta": current_job().eta}
