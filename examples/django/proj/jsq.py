"""The jsqueue app of the project: ``jsqueue worker -A proj.jsq:app`` (from this directory)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

from jsqueue.contrib.django import discover_tasks, django_app

app = django_app()  # django.setup(), then the App that settings.JSQUEUE describes
discover_tasks(app)  # shop.tasks, which imports `app` from here
