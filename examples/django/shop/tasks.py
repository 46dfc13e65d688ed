"""Tasks of the shop app. Plain ``def``: they use the ORM, which an ``async def`` task could
only reach through ``asgiref.sync.sync_to_async``."""

from django.db import connection
from proj.jsq import app

from shop.models import Note


@app.task
def read_note(note_id: int) -> str:
    """Runs in a worker: the row exists, since the job was sent after the commit."""
    return Note.objects.get(id=note_id).text


@app.task
def connection_was_open() -> bool:
    """Whether this thread's database connection was still open when the job started (the
    worker closes it after each job, as Django does after each request)."""
    was_open = connection.connection is not None
    Note.objects.count()
    return was_open
