"""Stores on S3: against moto's S3-compatible server on loopback, started here.
Credentials and endpoint come from the environment only."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import actstore
from actstore import errors, location

from ..conftest import RESUME_OPTS, resume_cli_args, store_files

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

SECRET = "actstore-test-secret-9f3c"
KEY_ID = "actstore-test-key-id"


@pytest.fixture(scope="module")
def s3():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem cached by an earlier test may point at its own server
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    env = dict(
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="acts")
    yield client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    srv.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def _objects(client, prefix: str) -> dict[str, bytes]:
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="acts", Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {k[len(prefix) :]: client.get_object(Bucket="acts", Key=k)["Body"].read() for k in keys}


def test_a_store_on_s3_holds_the_local_stores_bytes_and_no_credentials(
    s3, tiny_model, corpus_file, reference
):
    url = "s3://acts/runs/a.zarr"
    store = actstore.cache(
        out=url, model=tiny_model, dataset=corpus_file, progress=False, **RESUME_OPTS
    )
    assert store.is_complete and store.path == url
    objects = _objects(s3, "runs/a.zarr/")
    assert {k: v for k, v in objects.items() if k != "zarr.json"} == store_files(reference)
    for blob in objects.values():
        assert SECRET.encode() not in blob and KEY_ID.encode() not in blob
    local = actstore.ActivationStore.open(reference)
    for hook in local.sites:
        assert np.array_equal(
            store.acts(hook, rows=slice(3, 11)), local.acts(hook, rows=slice(3, 11))
        )
    with pytest.raises(errors.StoreExistsError, match="already exists .*--resume"):
        actstore.cache(
            out=url, model=tiny_model, dataset=corpus_file, progress=False, **RESUME_OPTS
        )
    from actstore.store import verify_store

    assert verify_store(url, progress=False) == []


def test_a_run_killed_mid_shard_on_s3_resumes_to_the_same_bytes(
    s3, tiny_model, corpus_file, reference
):
    url = "s3://acts/runs/killed.zarr"
    cmd = [sys.executable, "-m", "actstore", *resume_cli_args(url, tiny_model, corpus_file)]
    r = subprocess.run(
        cmd,
        env={**os.environ, "ACTSTORE_FAULT": "mid_write:2", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == -9, r.stderr[-2000:]
    assert list(actstore.ActivationStore.open(url).done) == [True, True, False, False]
    actstore.cache(
        out=url, model=tiny_model, dataset=corpus_file, progress=False, resume=True, **RESUME_OPTS
    )
    objects = _objects(s3, "runs/killed.zarr/")
    assert {k: v for k, v in objects.items() if k != "zarr.json"} == store_files(reference)


def test_overwrite_on_s3_replaces_the_store(s3, tiny_model):
    url = "s3://acts/runs/over.zarr"
    opts = dict(
        model=tiny_model,
        dataset=["one two three four five six seven eight nine ten"] * 8,
        seq_len=8,
        n_rows=4,
        batch_size=2,
        sites="resid_post:0",
        progress=False,
    )
    actstore.cache(out=url, **opts)
    again = actstore.cache(out=url, overwrite=True, **{**opts, "sites": "resid_post:1"})
    assert again.sites == ["blocks.1.hook_resid_post"]
    assert not any("blocks.0" in k for k in _objects(s3, "runs/over.zarr/"))


def test_locations():
    assert location.normalize("file:///tmp/x.zarr") == "/tmp/x.zarr"
    assert location.is_url("s3://b/x.zarr") and not location.is_url("file:///tmp/x.zarr")
    assert location.figure_path("s3://b/runs/x.zarr", ".induction.png") == "x.induction.png"
    assert location.figure_path("/data/x.zarr", ".induction.png") == "/data/x.induction.png"
    with pytest.raises(errors.ConfigError, match="Install"):
        location.exists("nosuchscheme://bucket/x.zarr")
