"""The failure policy as pure functions, with plain data."""

from __future__ import annotations

import pytest

from shardwren import policy
from shardwren.errors import TaskMemoryError, TaskTimeoutError, WorkerCrashedError


@pytest.mark.parametrize("exc,attempt,retries,retry_on,expected", [
    (WorkerCrashedError("x"), 1, 2, (), True),
    (WorkerCrashedError("x"), 2, 2, (), True),
    (WorkerCrashedError("x"), 3, 2, (), False),     # retries used up
    (TaskTimeoutError("x"), 1, 2, (), True),
    (ConnectionResetError("x"), 1, 2, (), True),   # transient storage error
    (ValueError("x"), 1, 2, (), False),             # the task's own error
    (ValueError("x"), 1, 2, (ValueError,), True),   # ... unless asked
    (TaskMemoryError("x"), 1, 2, (MemoryError,), False),  # never: it would fail again
    (WorkerCrashedError("x"), 1, 0, (), False),
])
def test_should_retry(exc, attempt, retries, retry_on, expected):
    assert policy.should_retry(exc, attempt, retries, retry_on) is expected


def test_backoff_grows_and_is_capped():
    delays = [policy.backoff(a) for a in range(1, 12)]
    assert delays[0] == 0.05 and delays[1] == 0.1 and delays[2] == 0.2
    assert all(b >= a for a, b in zip(delays, delays[1:])) and max(delays) == 5.0


def test_labels():
    assert [policy.label(e) for e in (WorkerCrashedError("a"), TaskTimeoutError("b"),
                                      TaskMemoryError("c"), ConnectionError("d"), KeyError("e"))] \
        == ["crashed", "timeout", "memory", "storage", "error"]


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:  # noqa: BLE001
        return exc


def test_object_store_network_errors_are_transient():
    botocore = pytest.importorskip("botocore.exceptions")
    aiohttp = pytest.importorskip("aiohttp")
    endpoint = botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    closed = botocore.ConnectionClosedError(endpoint_url="http://127.0.0.1:9")
    for exc in (endpoint, closed, aiohttp.ServerDisconnectedError(),
                aiohttp.ClientPayloadError("cut short"),
                _raised_from(OSError("s3fs re-raised it"), endpoint)):
        assert policy.is_transient(exc), exc
        assert policy.should_retry(exc, 1, 2)
        assert policy.label(exc) == "storage"
    # botocore's errors that are the caller's fault are final
    assert not policy.should_retry(botocore.ParamValidationError(report="bad"), 1, 2)
    assert not policy.should_retry(_raised_from(OSError("no"), ValueError("bad")), 1, 2)


def test_transient_names_match_only_their_library():
    ConnectionError_ = type("ConnectionError", (Exception,), {"__module__": "mylib.errors"})
    assert not policy.is_transient(ConnectionError_("not botocore's"))
    lookalike = type("HTTPClientError", (Exception,), {"__module__": "botocore.exceptions"})
    assert policy.is_transient(lookalike("matched by module and name"))


def test_the_network_error_behind_a_remote_oserror_is_retried(executor):
    botocore = pytest.importorskip("botocore.exceptions")

    def flaky_read(_):
        try:
            raise botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        except Exception as err:
            raise OSError("s3fs re-raised it") from err  # as s3fs's translate_boto_error does

    fut = executor.map(flaky_read, [0], retries=1)[0]
    with pytest.raises(OSError, match="s3fs re-raised it"):
        fut.result()
    assert fut.stats["attempt"] == 2  # retried once: the chain reached the driver
    assert fut.stats["failures"] == ["OSError: s3fs re-raised it"]
    assert policy.label(fut.exception()) == "storage"
