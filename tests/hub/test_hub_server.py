"""The fake Hub in tests/hub_server.py, driven by the real huggingface_hub 2.4.0 client (and transformers)."""

from __future__ import annotations

import json
import os
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
from hub_server import Fault, HubServer, patch_clients

hf = pytest.importorskip("huggingface_hub")
errors = pytest.importorskip("huggingface_hub.errors")
_http = pytest.importorskip("huggingface_hub.utils._http")
HfApi, hf_hub_download, snapshot_download = hf.HfApi, hf.hf_hub_download, hf.snapshot_download
HfHubHTTPError, RepositoryNotFoundError = errors.HfHubHTTPError, errors.RepositoryNotFoundError
EntryNotFoundError, RemoteEntryNotFoundError = errors.EntryNotFoundError, errors.RemoteEntryNotFoundError
RevisionNotFoundError = errors.RevisionNotFoundError

TOKEN = "hf_test_token"
BIG = 10 * 1024 * 1024 + 4096  # over the 10 MiB LFS threshold, so LFS by size (not by suffix)


@pytest.fixture(scope="module")
def server():
    with HubServer(token=TOKEN) as srv:
        yield srv


@pytest.fixture
def api(server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HfApi:
    patch_clients(monkeypatch, server, tmp_path / "hf_home")
    server.faults.clear()
    return HfApi(endpoint=server.url, token=TOKEN)


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record http_backoff's waits instead of sleeping (retry logic itself untouched)."""
    waits: list[float] = []
    fake_time = types.ModuleType("time")
    fake_time.__dict__.update(_http.time.__dict__)
    fake_time.sleep = waits.append  # type: ignore[attr-defined]
    monkeypatch.setattr(_http, "time", fake_time)
    return waits


class Upload(NamedTuple):
    files: dict[str, bytes]
    calls: list[tuple[str, str]]  # the (method, path) requests made by upload_folder


@pytest.fixture(scope="module")
def uploaded(server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Upload:
    """A repo with a README, a small text file and a >10 MB binary, uploaded once through upload_folder."""
    folder = tmp_path_factory.mktemp("upload")
    files = {
        "README.md": b"---\nlicense: apache-2.0\n---\n# demo\n",
        "notes.txt": b"hello fake hub\n",
        "data/blob.dat": os.urandom(BIG),
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        patch_clients(mp, server, tmp_path_factory.mktemp("hf_home"))
        api = HfApi(endpoint=server.url, token=TOKEN)
        api.create_repo("test-user/demo")
        before = len(server.requests)
        info = api.upload_folder(repo_id="test-user/demo", folder_path=folder, commit_message="add demo files")
        assert info.oid == server.commits("test-user/demo")[0].sha
        calls = server.requests[before:]
    return Upload(files, calls)


def test_create_repo_and_exist_ok(api: HfApi, server: HubServer) -> None:
    url = api.create_repo("test-user/alpha")
    assert url.repo_id == "test-user/alpha" and url == f"{server.url}/test-user/alpha"
    assert api.create_repo("test-user/alpha", exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("test-user/alpha")
    assert err.value.response.status_code == 409
    assert api.create_repo("beta").repo_id == "test-user/beta"  # no namespace: the token's user
    assert api.create_repo("data-org/set", repo_type="dataset").repo_id == "data-org/set"
    [initial] = server.commits("test-user/alpha")
    assert initial.parent is None and len(initial.sha) == 40 and ".gitattributes" in initial.files
    assert api.whoami()["name"] == "test-user"


def test_upload_folder_lands_in_one_commit(uploaded: Upload, api: HfApi, server: HubServer) -> None:
    assert [m for m, p in uploaded.calls if p.startswith("/api/models/test-user/demo/")] == ["POST", "POST"]
    assert ("POST", "/api/validate-yaml") in uploaded.calls  # README.md
    assert ("POST", "/test-user/demo.git/info/lfs/objects/batch") in uploaded.calls
    lfs_puts = [p for m, p in uploaded.calls if m == "PUT"]
    assert len(lfs_puts) == 1 and lfs_puts[0].startswith("/test-user/demo.git/info/lfs/objects/")  # big file only
    files = server.files("test-user/demo")
    assert {k: v for k, v in files.items() if k != ".gitattributes"} == uploaded.files
    newest, initial = server.commits("test-user/demo")
    assert newest.message == "add demo files" and newest.parent == initial.sha
    assert newest.lfs == {"data/blob.dat"}


def test_model_info_and_listing(uploaded: Upload, api: HfApi, server: HubServer) -> None:
    head = server.commits("test-user/demo")[0]
    info = api.model_info("test-user/demo")
    assert info.id == "test-user/demo" and info.sha == head.sha and info.private is False
    assert {s.rfilename for s in info.siblings} == {".gitattributes", *uploaded.files}
    old = api.repo_info("test-user/demo", revision=head.parent, files_metadata=True)
    assert old.sha == head.parent and [s.rfilename for s in old.siblings] == [".gitattributes"]
    assert sorted(api.list_repo_files("test-user/demo")) == sorted([".gitattributes", *uploaded.files])
    tree = {e.path: e for e in api.list_repo_tree("test-user/demo", recursive=True)}
    assert tree["data/blob.dat"].lfs.size == BIG and tree["data/blob.dat"].size == BIG
    assert tree["notes.txt"].lfs is None and "data" in tree
    assert [e.path for e in api.list_repo_tree("test-user/demo", path_in_repo="data")] == ["data/blob.dat"]
    assert api.file_exists("test-user/demo", "data/blob.dat")
    assert not api.file_exists("test-user/demo", "missing.txt")
    assert not api.file_exists("test-user/nope", "notes.txt")


def test_downloads_return_identical_bytes(uploaded: Upload, api: HfApi, server: HubServer, tmp_path: Path) -> None:
    for name, data in uploaded.files.items():
        path = hf_hub_download("test-user/demo", name, endpoint=server.url, cache_dir=tmp_path / "c1")
        assert Path(path).read_bytes() == data
    folder = Path(snapshot_download("test-user/demo", endpoint=server.url, cache_dir=tmp_path / "c2"))
    assert folder.name == server.commits("test-user/demo")[0].sha
    for name, data in uploaded.files.items():
        assert (folder / name).read_bytes() == data
    local = Path(snapshot_download("test-user/demo", endpoint=server.url, local_dir=tmp_path / "local"))
    assert (local / "data/blob.dat").read_bytes() == uploaded.files["data/blob.dat"]


def test_missing_entry_repo_and_revision(uploaded: Upload, api: HfApi, server: HubServer) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as err:
        hf_hub_download("test-user/demo", "missing.txt", endpoint=server.url)
    assert isinstance(err.value, EntryNotFoundError)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/does-not-exist", "notes.txt", endpoint=server.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-user/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("test-user/demo", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("test-user/demo", "notes.txt", revision="no-such-branch", endpoint=server.url)


def test_bad_or_missing_token(uploaded: Upload, api: HfApi, server: HubServer) -> None:
    bad = HfApi(endpoint=server.url, token="hf_wrong")
    for call in (bad.whoami, lambda: bad.create_repo("test-user/evil"), lambda: bad.model_info("test-user/demo")):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 401
        assert err.value.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    with pytest.raises(HfHubHTTPError) as err:
        bad.create_repo("test-user/evil", exist_ok=True)  # 401 -> falls back to repo_info -> re-raises
    assert err.value.response.status_code == 401
    anonymous = HfApi(endpoint=server.url, token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo("test-user/evil")
    assert err.value.response.status_code == 401
    assert ("model", "test-user/evil") not in server.repos
    assert anonymous.model_info("test-user/demo").id == "test-user/demo"  # public reads need no token
    api.create_repo("test-user/secret", private=True)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("test-user/secret")
    assert api.model_info("test-user/secret").private is True


def test_upload_file_and_branch(api: HfApi, server: HubServer) -> None:
    api.create_repo("test-user/branchy")
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="v.txt", repo_id="test-user/branchy")
    api.create_branch("test-user/branchy", branch="dev")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="v.txt", repo_id="test-user/branchy", revision="dev")
    assert server.files("test-user/branchy")["v.txt"] == b"v1"
    assert server.files("test-user/branchy", revision="dev")["v.txt"] == b"v2"
    dev = server.commits("test-user/branchy", revision="dev")
    assert len(dev) == 3 and dev[1].sha == server.commits("test-user/branchy")[0].sha
    assert api.model_info("test-user/branchy", revision="dev").sha == dev[0].sha
    path = hf_hub_download("test-user/branchy", "v.txt", revision="dev", endpoint=server.url)
    assert Path(path).read_bytes() == b"v2"
    # unchanged content: preupload returns the remote oid and the client skips the empty commit
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="v.txt", repo_id="test-user/branchy")
    assert len(server.commits("test-user/branchy")) == 2
    api.delete_file("v.txt", repo_id="test-user/branchy")
    assert "v.txt" not in server.files("test-user/branchy")


def _post_commit(server: HubServer, repo_id: str, lines: list[dict]) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.url}/api/models/{repo_id}/commit/main",
        data=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_commit_with_unuploaded_lfs_object_is_rejected_atomically(api: HfApi, server: HubServer) -> None:
    api.create_repo("test-user/atomic")
    before = server.commits("test-user/atomic")
    status, body = _post_commit(
        server,
        "test-user/atomic",
        [
            {"key": "header", "value": {"summary": "half", "description": ""}},
            {"key": "file", "value": {"path": "ok.txt", "content": "aGk=", "encoding": "base64"}},
            {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}},
        ],
    )
    assert status == 422 and "never uploaded" in body["error"]
    assert server.commits("test-user/atomic") == before and "ok.txt" not in server.files("test-user/atomic")


def test_lfs_put_500_twice_is_retried(api: HfApi, server: HubServer, no_backoff_sleep: list[float]) -> None:
    api.create_repo("test-user/flaky")
    fault = Fault(method="PUT", path_contains="/lfs/", status=500, times=2)
    server.faults.append(fault)
    before = len(server.requests)
    data = os.urandom(1 << 20)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id="test-user/flaky")  # LFS by suffix
    puts = [p for m, p in server.requests[before:] if m == "PUT"]
    assert fault.times == 0 and len(puts) == 3 and no_backoff_sleep == [1, 2]
    assert server.files("test-user/flaky")["w.bin"] == data and len(server.commits("test-user/flaky")) == 2


def test_lfs_put_dropped_connection_is_retried(api: HfApi, server: HubServer, no_backoff_sleep: list[float]) -> None:
    api.create_repo("test-user/dropped")
    server.faults.append(Fault(method="PUT", path_contains="/lfs/", drop=True))
    api.upload_file(path_or_fileobj=b"x" * 1000, path_in_repo="w.bin", repo_id="test-user/dropped")
    assert no_backoff_sleep == [1] and server.files("test-user/dropped")["w.bin"] == b"x" * 1000


@pytest.mark.parametrize("status, times, waits", [(500, 6, [1, 2, 4, 8, 8]), (403, 1, [])])
def test_lfs_put_failure_creates_no_commit(
    api: HfApi, server: HubServer, no_backoff_sleep: list[float], status: int, times: int, waits: list[float]
) -> None:
    repo_id = f"test-user/broken-{status}"
    api.create_repo(repo_id)
    server.faults.append(Fault(method="PUT", path_contains="/lfs/", status=status, times=times))
    with pytest.raises(RuntimeError, match="Error while uploading 'w.bin'") as err:
        api.upload_file(path_or_fileobj=b"y" * 1000, path_in_repo="w.bin", repo_id=repo_id)
    assert isinstance(err.value.__cause__, HfHubHTTPError) and err.value.__cause__.response.status_code == status
    assert no_backoff_sleep == waits  # 5xx: 5 retries with backoff; 4xx: no retry
    assert len(server.commits(repo_id)) == 1
    assert not any(p.endswith(f"/{repo_id}/commit/main") for _, p in server.requests)


@pytest.mark.parametrize("path, retried", [("/preupload/", True), ("/objects/batch", True), ("/commit/", False)])
def test_500_on_other_upload_steps(
    api: HfApi, server: HubServer, no_backoff_sleep: list[float], path: str, retried: bool
) -> None:
    repo_id = "test-user/steps-" + path.strip("/").replace("/", "-")
    api.create_repo(repo_id)
    server.faults.append(Fault(method="POST", path_contains=path, status=500))

    def upload() -> None:
        api.upload_file(path_or_fileobj=b"z" * 100, path_in_repo="z.bin", repo_id=repo_id)

    if retried:  # preupload and LFS batch go through http_backoff
        upload()
        assert no_backoff_sleep == [1] and len(server.commits(repo_id)) == 2
    else:  # the commit POST is sent once (retry_on_error=False): the error surfaces, nothing is committed
        with pytest.raises(HfHubHTTPError) as err:
            upload()
        assert err.value.response.status_code == 500 and no_backoff_sleep == []
        assert len(server.commits(repo_id)) == 1
        upload()  # the LFS object is already stored: the batch answers without actions, no second PUT
        assert len(server.commits(repo_id)) == 2
        assert [m for m, p in server.requests if p.startswith(f"/{repo_id}.git/info/lfs/objects/")].count("PUT") == 1


def test_transformers_push_to_hub_and_from_pretrained(server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    patch_clients(monkeypatch, server, tmp_path / "hf_home")  # after the import: resets transformers' cached HfApi
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    model = transformers.BertModel(config)
    model.push_to_hub("test-user/tiny-bert", commit_message="push tiny bert")  # no token/endpoint arguments
    assert server.commits("test-user/tiny-bert")[0].message == "push tiny bert"
    assert "model.safetensors" in server.commits("test-user/tiny-bert")[0].lfs
    loaded = transformers.BertModel.from_pretrained("test-user/tiny-bert")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)

    model.push_to_hub("test-user/tiny-bert", revision="v2")  # goes through create_branch
    assert "model.safetensors" in server.files("test-user/tiny-bert", revision="v2")
    again = transformers.BertModel.from_pretrained("test-user/tiny-bert", revision="v2")
    assert all(torch.equal(expected[k], again.state_dict()[k]) for k in expected)
