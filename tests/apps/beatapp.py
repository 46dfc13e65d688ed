"""Periodic entries for beat tests run as processes; the prefix comes from the environment."""

from __future__ import annotations

import os

from jsqueue import App

app = App(
    "beat",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "beat"),
    # a test shrinks the Msg-Id window so that only the tick claims can prevent a double send
    duplicate_window=float(os.environ.get("JSQ_TEST_DUPLICATE_WINDOW", "120")),
)


@app.task(ignore_result=True)
def tick() -> None: ...


@app.task(ignore_result=True)
def nightly() -> None: ...


app.add_periodic(tick.s(), every=1, name="tick")
app.add_periodic(nightly.s(), cron="0 3 * * *", tz="Europe/Berlin", name="nightly", catch_up="skip")
