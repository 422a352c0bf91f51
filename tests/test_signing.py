"""Signed payloads: workers refuse unsigned or altered tasks before unpickling them."""

from __future__ import annotations

import pickle

import pytest

import shardwren
from shardwren import serialize
from shardwren.errors import PayloadSignatureError
from shardwren.futures import Future


def test_sign_and_open():
    key = b"k" * 32
    blob = serialize.sign(key, b"data")
    assert serialize.open_signed(key, blob, "x") == b"data"
    tampered = blob[:-1] + b"X"
    with pytest.raises(PayloadSignatureError, match="signature does not match"):
        serialize.open_signed(key, tampered, "arguments")
    with pytest.raises(PayloadSignatureError):
        serialize.open_signed(b"other" * 8, blob, "arguments")
    with pytest.raises(PayloadSignatureError):
        serialize.open_signed(key, b"short", "arguments")


class Boom:
    """Unpickling this would run code: a forged payload must never get that far."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled a forged payload')",))


def _submit_raw(ex, fn_bytes, payload):
    fut = Future("forged", 0)
    ex.backend.submit("forged-fn", fn_bytes, [(fut, payload)])
    return fut


def test_worker_refuses_tampered_and_unsigned(tmp_path):
    with shardwren.default_executor(workers=1, store=f"file://{tmp_path}", retries=0) as ex:
        good_fn = ex._signed(serialize.dumps_function(lambda x: x + 1))
        good_args = ex._signed(pickle.dumps((1,)))
        assert _submit_raw(ex, good_fn, good_args).result(timeout=30) == 2
        forged_args = good_args[:32] + pickle.dumps((Boom(),))
        with pytest.raises(PayloadSignatureError, match="arguments"):
            _submit_raw(ex, good_fn, forged_args).result(timeout=30)
        with pytest.raises(PayloadSignatureError, match="arguments"):
            _submit_raw(ex, good_fn, pickle.dumps((1,))).result(timeout=30)  # unsigned
        with pytest.raises(PayloadSignatureError, match="function"):
            f = Future("forged2", 0)
            ex.backend.submit("forged-fn-2", pickle.dumps(Boom()), [(f, good_args)])
            f.result(timeout=30)
        assert ex.call_async(lambda x: x * 3, 2).result(timeout=30) == 6  # worker fine


def test_configured_secret_is_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDWREN_SECRET", "s3cr3t-value")
    with shardwren.default_executor(workers=1, store=f"file://{tmp_path}") as ex:
        assert ex.call_async(lambda x: x, 7).result(timeout=30) == 7
        text = repr(ex) + repr(ex.settings) + repr(ex.backend.__dict__.get("settings"))
        assert "s3cr3t-value" not in text
        with pytest.raises(ZeroDivisionError) as info:
            ex.call_async(lambda x: 1 / x, 0).result(timeout=30)
        assert "s3cr3t-value" not in str(info.value) + str(info.value.__cause__)
