"""Client settings pieces: the log filter that keeps a broker outage from flooding logs."""


def test_repeated_client_errors_are_logged_once_per_interval() -> None:
    """A broker that is down for minutes: one line per interval per kind of error."""
    import logging

    from schemas.kafka.settings import RepeatFilter

    f = RepeatFilter(every_s=30.0)

    def record(msg: str, at: float) -> logging.LogRecord:
        r = logging.LogRecord("librdkafka", logging.ERROR, "", 0, msg, None, None)
        r.created = at
        return r

    refused = "Connect to ipv4#127.0.0.1:{} failed: Connection refused (after {}ms)"
    assert f.filter(record(refused.format(9092, 0), 0.0))
    assert not any(f.filter(record(refused.format(9092, i), 0.1 * i)) for i in range(1, 50))
    assert f.filter(record("Disconnected", 1.0)), "another kind of error is not held back"
    later = record(refused.format(9092, 3), 31.0)
    assert f.filter(later) and "(49 more like it in 30 s)" in later.getMessage()
