"""Settings of the example project: SQLite, one app (shop), and the jsqueue app's settings."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "proj.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

#: the arguments of the jsqueue App (see jsqueue.contrib.django.django_app); the NATS URL
#: comes from $JSQUEUE_URL when it is not given here
JSQUEUE = {
    "name": "shop",
    "prefix": os.environ.get("EXAMPLE_JSQ_PREFIX", "shop"),
}
