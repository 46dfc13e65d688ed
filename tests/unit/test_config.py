import pytest

from jsqueue import App, ConfigError
from jsqueue.config import Settings, check_job_id, redact_url


def test_unknown_setting_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'ack_wiat'; did you mean 'ack_wait'"):
        App("demo", ack_wiat=3)  # type: ignore[call-arg]


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="ack_wait must be a positive number"):
        App("demo", ack_wait=0)
    with pytest.raises(ConfigError, match="max_deliver must be a whole number"):
        App("demo", max_deliver=0)
    with pytest.raises(ConfigError, match="prefix 'Bad-Prefix'"):
        App("demo", prefix="Bad-Prefix")
    with pytest.raises(ConfigError, match="must start with nats://"):
        App("demo", url="http://127.0.0.1:4222")
    with pytest.raises(ConfigError, match="queue name 'a b'"):
        App("demo", default_queue="a b")


def test_cloudpickle_without_secret_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs secret_key"):
        App("demo", serializer="cloudpickle")
    app = App("demo")
    with pytest.raises(ConfigError, match="needs the app's secret_key"):

        @app.task(serializer="cloudpickle")
        def f() -> None: ...


def test_url_comes_from_the_environment_only_when_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JSQUEUE_URL", raising=False)
    settings = Settings.create("demo")
    monkeypatch.setenv("JSQUEUE_URL", "nats://10.1.2.3:4444")
    assert settings.resolve_url() == "nats://10.1.2.3:4444"
    assert Settings.create("demo", url="nats://h:1").resolve_url() == "nats://h:1"


def test_wire_names_derive_from_the_prefix() -> None:
    s = Settings.create("demo", prefix="acme")
    assert s.jobs_stream == "ACME_JOBS"
    assert s.queue_subject("emails") == "acme.q.emails"
    assert s.schedule_subject("emails", "j1") == "acme.sched.emails.j1"
    assert s.consumer_name("emails") == "acme_emails"
    assert s.dlq_subject("emails") == "acme.dlq.emails"
    assert s.bucket("results") == "acme_results"


@pytest.mark.parametrize("job_id", ["order-42", "a.b.c", "x/y=z_1", "A" * 200])
def test_valid_job_ids(job_id: str) -> None:
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize(
    "job_id", ["", "a:b", "a b", ".a", "a.", "a..b", "é", "A" * 201, "a*", "a>"]
)
def test_invalid_job_ids_are_refused_with_the_rule(job_id: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed: use 1-200 characters"):
        check_job_id(job_id)


def test_redact_url_hides_passwords_and_tokens() -> None:
    assert redact_url("nats://bob:s3cret@h:4222") == "nats://bob:***@h:4222"
    assert redact_url("nats://tok3n@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222,nats://a:b@g:1") == "nats://h:4222,nats://a:***@g:1"


def test_configure_replaces_settings_before_connecting() -> None:
    app = App("demo", ack_wait=5)
    app.configure(url="nats://127.0.0.1:1")
    assert app.settings.url == "nats://127.0.0.1:1"
    assert app.settings.ack_wait == 5
