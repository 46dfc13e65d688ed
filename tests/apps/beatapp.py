"""Periodic entries for beat tests run as processes; the prefix comes from the environment."""

from __future__ import annotations

import os

from jsqueue import App

app = App("beat", prefix=os.environ.get("JSQ_TEST_PREFIX", "beat"))


@app.task(ignore_result=True)
def tick() -> None: ...


@app.task(ignore_result=True)
def nightly() -> None: ...


app.add_periodic(tick.s(), every=1, name="tick")
app.add_periodic(nightly.s(), cron="0 3 * * *", tz="Europe/Berlin", name="nightly", catch_up="skip")
