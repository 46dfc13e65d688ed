from django.db import transaction
from django.http import HttpRequest, JsonResponse
from proj.jsq import app

from jsqueue.contrib.django import delay_on_commit
from shop.models import Note
from shop.tasks import read_note


def create_note(request: HttpRequest) -> JsonResponse:
    """POST text=...: create a note and send a job that reads it, in one transaction; with
    rollback=1 the transaction rolls back, and the job is never sent."""
    with transaction.atomic():
        note = Note.objects.create(text=request.POST["text"])
        job = delay_on_commit(read_note, note.id)
        if request.POST.get("rollback"):
            transaction.set_rollback(True)
    return JsonResponse({"note": note.id, "job": job.id})


def job_result(request: HttpRequest, job_id: str) -> JsonResponse:
    """What became of a job: its state, and its value once it succeeded."""
    handle = app.result(job_id)
    state = handle.state_sync()
    value = handle.get_sync(timeout=1) if state.value == "SUCCESS" else None
    return JsonResponse({"state": state.value, "value": value})
