import os
import threading

import pytest

from pipeline.errors import DataError, StoreError
from pipeline.registry import Registry
from pipeline.storage import AlreadyExists, S3Options, Store, check_key, validate_name


def test_create_is_create_if_absent_and_never_overwrites(store):
    store.create("a/b.json", b"first")
    with pytest.raises(AlreadyExists, match="already exists"):
        store.create("a/b.json", b"second")
    assert store.read("a/b.json") == b"first"
    assert store.list("a") == ["b.json"]
    assert store.exists("a/b.json") and not store.exists("a/c.json")
    assert store.list("nothing-here") == []


def test_put_file_publishes_whole_files_and_reports_progress(store, tmp_path):
    data = os.urandom(20 << 20)  # > 2 chunks: a multipart upload on S3
    (tmp_path / "big.bin").write_bytes(data)
    seen = []
    store.put_file("art/big.bin", tmp_path / "big.bin", progress=lambda done, total: seen.append((done, total)))
    assert store.read("art/big.bin") == data
    assert seen[-1] == (len(data), len(data)) and len(seen) >= 2
    with pytest.raises(AlreadyExists):
        store.put_file("art/big.bin", tmp_path / "big.bin")
    store.get_file("art/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_read_many_keeps_order_and_missing_keys_raise(store):
    for i in range(5):
        store.create(f"r/{i}.json", str(i).encode())
    assert store.read_many([f"r/{i}.json" for i in (3, 0, 4)]) == [b"3", b"0", b"4"]
    with pytest.raises(FileNotFoundError):
        store.read("r/missing.json")


@pytest.mark.slow
def test_racing_creators_of_one_key_have_exactly_one_winner(store):
    wins, errors = [], []

    def attempt(i: int) -> None:
        try:
            store.create("race/key.json", f"writer {i}".encode())
            wins.append(i)
        except AlreadyExists:
            pass
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(wins) == 1
    assert store.read("race/key.json") == f"writer {wins[0]}".encode()


def test_local_publish_leaves_no_temporary_files(tmp_path):
    store = Store.open(str(tmp_path / "s"))
    store.create("x/y.json", b"1")
    with pytest.raises(AlreadyExists):
        store.create("x/y.json", b"2")
    assert sorted(os.listdir(tmp_path / "s" / "x")) == ["y.json"]


def test_store_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWPRIOR_STORE", raising=False)
    assert Store.open().uri == str(tmp_path / "flowprior-store")
    monkeypatch.setenv("FLOWPRIOR_STORE", str(tmp_path / "env-store"))
    assert Store.open().uri == str(tmp_path / "env-store")
    assert Store.open(f"file://{tmp_path}/f").uri == str(tmp_path / "f")
    assert Store.open("s3://bucket/some/prefix/").uri == "s3://bucket/some/prefix"


@pytest.mark.parametrize("uri, message", [
    ("s3://AKIAEXAMPLE:verysecret@bucket/p", "must not embed credentials"),
    ("s3:///prefix", "names no bucket"),
    ("gs://bucket/p", "unsupported URI scheme 'gs'"),
    ("ftp://user:verysecret@host/p", "must not embed credentials"),
    ("file://user:verysecret@host/p", "must not embed credentials"),
    ("file://host/p", "name a local path"),
])
def test_bad_store_uris_are_refused_without_echoing_secrets(uri, message):
    with pytest.raises(ValueError, match=message) as info:
        Store.open(uri)
    assert "verysecret" not in str(info.value)


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "a//b", "/abs", ".hidden", "a/.tmp-1", "a b"])
def test_unsafe_keys_are_refused(key):
    with pytest.raises(ValueError, match="invalid store key"):
        check_key(key)


@pytest.mark.parametrize("name", ["", "..", "a/b", "../etc", "a..b", ".x", "-x", "a b", "x" * 129, None, "é"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid site id"):
        validate_name(name, "site id")


def test_safe_names_pass():
    for name in ("R80711", "plant-3", "line_2.a", "x" * 128):
        assert validate_name(name) == name


def test_s3_options_from_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("FLOWPRIOR_S3_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("FLOWPRIOR_S3_RETRIES", "3")
    options = S3Options.from_env(endpoint_url="http://127.0.0.1:9")
    assert (options.connect_timeout, options.retries, options.endpoint_url) == (0.5, 3, "http://127.0.0.1:9")
    monkeypatch.setenv("FLOWPRIOR_S3_RETRIES", "many")
    with pytest.raises(ValueError, match="FLOWPRIOR_S3_RETRIES='many' is not a number"):
        S3Options.from_env()
    with pytest.raises(ValueError, match="retries must be >= 1"):
        S3Options(retries=0)


def test_unreachable_s3_endpoint_fails_fast_with_a_clear_error(monkeypatch):
    import socket
    import time

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFLOWPRIORTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret")
    store = Store.open("s3://bucket/prefix", S3Options(endpoint_url=f"http://127.0.0.1:{port}", retries=1))
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"store s3://bucket/prefix: cannot write x.json") as info:
        store.create("x.json", b"1")
    assert time.monotonic() - start < 10
    assert "do-not-print-this-secret" not in str(info.value)


@pytest.mark.parametrize("error, expected", [
    ({"Code": "PreconditionFailed", "Condition": "If-None-Match"}, True),  # AWS and moto: FileExistsError
    ({"Code": "PreconditionFailed"}, True),  # SeaweedFS: a plain OSError caused by the ClientError
    ({"Code": "NoSuchKey"}, False),
    ({"Code": "InternalError"}, False),
])
def test_both_shapes_of_a_precondition_failure_are_recognised(error, expected):
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from pipeline.storage.s3 import is_precondition_failed

    raised = translate_boto_error(ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 412 if expected
                                                                                    else 404}}, "PutObject"))
    if "Condition" in error:
        assert isinstance(raised, FileExistsError)
    assert is_precondition_failed(raised) is expected


def test_feature_uris_with_credentials_are_refused_without_echoing_them():
    from pipeline.data import read_features

    with pytest.raises(DataError, match=r"s3://\*\*\*@bucket/f: URIs must not embed credentials") as info:
        read_features("s3://AKIAEXAMPLE:verysecret@bucket/f")
    assert "verysecret" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)


def test_a_missing_bucket_is_an_error_not_an_empty_store(s3_server):
    store = Store.open("s3://no-such-bucket-here/fleet")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        store.list("registry/records")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        Registry(store).records()  # `registry ls`, and `prior fit`'s check before Ray starts


def test_a_write_whose_reply_was_lost_is_not_a_conflict(store):
    """The retry of a write the server applied finds its own bytes: success, not AlreadyExists."""
    store.create("a/b.json", b"mine")
    store.create("a/b.json", b"mine")  # what a retried PUT meets
    with pytest.raises(AlreadyExists):
        store.create("a/b.json", b"someone else's")
