"""TLS and SASL settings reach every client the wrapper builds, and a cluster that cannot
be reached is one line naming what to check (issue 11)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from pipeline.cli import main
from pipeline.processes import free_port
from schemas.errors import ClusterUnreachableError, ConfigError
from schemas.kafka import Consumer, KafkaSettings, Producer, check_cluster, ensure_topics
from schemas.kafka import admin as kafka_admin
from schemas.topics import default_topics


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("-----BEGIN TEST-----\n")
        files[name] = str(tmp_path / f"{name}.pem")
    return files


@pytest.fixture
def secure_env(monkeypatch: pytest.MonkeyPatch, pem: dict[str, str]) -> dict[str, str]:
    env = {
        "DRIVESTREAM_BOOTSTRAP": "kafka-1:9093,kafka-2:9093",
        "DRIVESTREAM_SECURITY_PROTOCOL": "sasl_ssl",
        "DRIVESTREAM_SASL_MECHANISM": "scram-sha-512",
        "DRIVESTREAM_SASL_USERNAME": "alice",
        "DRIVESTREAM_SASL_PASSWORD": "s3cret",
        "DRIVESTREAM_SSL_CAFILE": pem["ca"],
        "DRIVESTREAM_SSL_CERTFILE": pem["cert"],
        "DRIVESTREAM_SSL_KEYFILE": pem["key"],
        "DRIVESTREAM_SSL_KEY_PASSWORD": "keypw",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


RDKAFKA = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "alice",
    "sasl.password": "s3cret",
    "ssl.key.password": "keypw",
}


def test_every_security_setting_reaches_producer_and_consumer(secure_env) -> None:
    settings = KafkaSettings.from_env()
    files = {
        "ssl.ca.location": secure_env["DRIVESTREAM_SSL_CAFILE"],
        "ssl.certificate.location": secure_env["DRIVESTREAM_SSL_CERTFILE"],
        "ssl.key.location": secure_env["DRIVESTREAM_SSL_KEYFILE"],
    }
    for client in (Producer(settings), Consumer(settings, ["t"], "g"), Consumer(settings)):
        cfg = client._config
        assert {k: cfg[k] for k in (*RDKAFKA, *files)} == {**RDKAFKA, **files}
        assert cfg["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"


def test_every_security_setting_reaches_the_topic_admin_under_kafka_pythons_names(
    secure_env,
) -> None:
    cfg = KafkaSettings.from_env().client_config()
    assert cfg == {
        "bootstrap_servers": ["kafka-1:9093", "kafka-2:9093"],
        "client_id": "drivestream",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": secure_env["DRIVESTREAM_SSL_CAFILE"],
        "ssl_certfile": secure_env["DRIVESTREAM_SSL_CERTFILE"],
        "ssl_keyfile": secure_env["DRIVESTREAM_SSL_KEYFILE"],
        "ssl_password": "keypw",
    }
    assert set(cfg) <= set(KafkaAdminClient.DEFAULT_CONFIG)  # names kafka-python accepts


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_mechanisms(mechanism: str) -> None:
    s = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism.lower(),
        sasl_username="u",
        sasl_password="p",
    )
    assert s.rdkafka_config()["sasl.mechanism"] == mechanism
    assert s.client_config()["sasl_mechanism"] == mechanism


def test_passwords_stay_out_of_repr(secure_env) -> None:
    text = repr(KafkaSettings.from_env())
    assert "s3cret" not in text and "keypw" not in text and "alice" in text


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"security_protocol": "TLS"}, "DRIVESTREAM_SECURITY_PROTOCOL"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "DRIVESTREAM_SASL_PASSWORD"),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u"}, "SASL_SSL"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "GSSAPI",
                "sasl_username": "u",
                "sasl_password": "p",
            },
            "DRIVESTREAM_SASL_MECHANISM",
        ),
        ({"ssl_cafile": "ca.pem"}, "use SSL or SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_certfile": "c.pem"}, "DRIVESTREAM_SSL_KEYFILE"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nope/ca.pem"}, "no such file"),
    ],
)
def test_a_wrong_security_setting_is_a_config_error_naming_the_variable(kw, named) -> None:
    with pytest.raises(ConfigError, match=named):
        KafkaSettings(**kw)


def test_an_unreachable_cluster_is_one_line_naming_the_settings_fast() -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachableError) as info:
        ensure_topics(settings, default_topics(), connect_timeout_s=1)
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert "\n" not in message and "DRIVESTREAM_BOOTSTRAP" in message
    assert "Connection refused" in message
    with pytest.raises(ClusterUnreachableError, match="producer id"):
        Producer(settings).connect(timeout_s=1)


def test_drivestream_topics_on_a_dead_broker_prints_one_line_within_15s(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kafka_admin, "CONNECT_TIMEOUT_S", 2.0)
    t0 = time.monotonic()
    rc = main(["topics", "--bootstrap", f"127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and time.monotonic() - t0 < 15
    assert err.count("\n") == 0 and err.startswith("drivestream topics: no answer")
    assert "Traceback" not in err and "DRIVESTREAM_SECURITY_PROTOCOL" in err


def test_check_cluster_reports_bad_client_settings_as_config_errors() -> None:
    settings = KafkaSettings(extra={"no.such.setting": 1})
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        check_cluster(settings, 1)
