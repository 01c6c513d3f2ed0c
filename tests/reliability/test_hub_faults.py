"""Hub faults injected in the test hub (tests/hub_server.py): HTTP 500s, a hung server, dropped connections.

A push retries within bounds (huggingface_hub per request, hf_qat per push), then raises a `HubError`
that says whether the repo changed; the repo holds the whole push or none of it, whatever fails.
"""

from __future__ import annotations

import shutil
import time
import types
from pathlib import Path

import pytest
from hub_server import Fault, HubServer
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

from hf_qat import (
    HubError,
    NNCFConfig,
    create_compressed_model,
    register_default_init_args,
)
from hf_qat.hub import push as hub_module
from hf_qat.hub import push_qat_folder
from hf_qat.transformers import save_qat_model

#: (method, path fragment) of every kind of request a push makes after the access check.
PUSH_REQUESTS = [
    ("POST", "/api/repos/create"),
    ("POST", "/preupload/"),
    ("POST", "/info/lfs/objects/batch"),
    ("PUT", "/info/lfs/objects/"),
    ("POST", "/info/lfs/objects/verify"),
    ("POST", "/commit/"),
]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """Record the waits of huggingface_hub's per-request backoff and of hf_qat's per-push backoff, without sleeping."""
    from huggingface_hub.utils import _http

    recorded: dict[str, list[float]] = {"client": [], "push": []}
    fake_time = types.ModuleType("time")
    fake_time.__dict__.update(_http.time.__dict__)
    fake_time.sleep = recorded["client"].append
    monkeypatch.setattr(_http, "time", fake_time)
    monkeypatch.setattr(hub_module, "_sleep", recorded["push"].append)
    return recorded


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two saved QAT models of the same architecture (the second one's weights differ)."""
    batches = [inputs_of(b) for b in text_batches()]
    folders = []
    for i in range(2):
        config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
        model = tiny_bert()
        if i:
            model.classifier.bias.data += 1.0
        ctrl, model = create_compressed_model(model, config)
        folders.append(save_qat_model(model, ctrl, tmp_path_factory.mktemp(f"saved{i}")))
    return folders[0], folders[1]


def first_push(hub: HubServer, folder: Path, repo: str) -> dict[str, bytes]:
    push_qat_folder(folder, repo)
    return hub.files(repo)


def test_transient_errors_are_retried_and_the_push_lands_once(hub: HubServer, saved, waits) -> None:
    old, new = saved
    repo = "test-user/transient"
    before = first_push(hub, old, repo)
    hub.faults += [Fault("POST", "/commit/", status=503), Fault("POST", "/preupload/", status=500, times=2)]
    push_qat_folder(new, repo)
    assert waits["push"] == [4.0]  # one whole-push retry, after the commit's 503
    commits = hub.commits(repo)
    assert len(commits) == 3 and hub.files(repo) != before
    assert hub.files(repo)["model.safetensors"] == (new / "model.safetensors").read_bytes()


@pytest.mark.parametrize(("method", "path"), PUSH_REQUESTS, ids=[p.strip("/").replace("/", "_") for _, p in PUSH_REQUESTS])
def test_persistent_500s_end_in_a_clear_hub_error_and_an_unchanged_repo(hub: HubServer, saved, waits, method, path) -> None:
    old, new = saved
    repo = f"test-user/p500-{path.strip('/').replace('/', '-')}"
    before = first_push(hub, old, repo)
    hub.requests.clear()
    hub.faults.append(Fault(method, path, status=500, times=1000))
    if path.endswith("verify"):
        # the object was stored by its PUT, only the confirmation failed: the next attempt's LFS batch
        # reports it stored, nothing is verified again, and the push completes
        push_qat_folder(new, repo)
        assert waits["push"] == [4.0] and len(hub.commits(repo)) == 3
        return
    with pytest.raises(HubError) as err:
        push_qat_folder(new, repo)
    message = str(err.value)
    assert "after 3 attempt(s)" in message and "500" in message
    assert f"{repo}@main is unchanged" in message and "Run the push again" in message
    assert waits["push"] == [4.0, 16.0]
    assert len(waits["client"]) <= 3 * 5  # huggingface_hub: at most 5 retries per request and attempt
    hits = [r for r in hub.requests if r[0] == method and path in r[1]]
    assert 1 <= len(hits) <= 3 * 6
    assert hub.files(repo) == before and len(hub.commits(repo)) == 2
    if path != "/commit/":  # the hub commits only after every upload: a failed upload never reaches the commit
        assert not [r for r in hub.requests if "/commit/" in r[1]]


def test_a_hung_server_times_out_instead_of_hanging(hub: HubServer, saved, waits) -> None:
    old, new = saved
    repo = "test-user/hung"
    before = first_push(hub, old, repo)
    hub.faults.append(Fault("PUT", "/info/lfs/objects/", delay=6.0, times=1000))
    start = time.monotonic()
    with pytest.raises(HubError, match=r"caused by \w*Timeout\w*: timed out") as err:
        push_qat_folder(new, repo, timeout=0.25, attempts=2)
    elapsed = time.monotonic() - start
    assert elapsed < 6.0, elapsed  # 2 attempts x 6 requests x 0.25 s, not 12 x 6 s
    assert "after 2 attempt(s)" in str(err.value) and hub.files(repo) == before


def test_dropped_connection_during_lfs_upload(hub: HubServer, saved, waits) -> None:
    old, new = saved
    repo = "test-user/dropped"
    before = first_push(hub, old, repo)
    hub.requests.clear()
    hub.faults.append(Fault("PUT", "/info/lfs/objects/", drop=True, times=1000))
    with pytest.raises(HubError, match="unchanged"):
        push_qat_folder(new, repo)
    assert hub.files(repo) == before
    assert not [r for r in hub.requests if "/commit/" in r[1]]
    hub.faults.clear()
    push_qat_folder(new, repo)  # once the network is back, the same call completes the push
    assert hub.files(repo)["model.safetensors"] == (new / "model.safetensors").read_bytes()


def test_commit_applied_but_response_lost_is_not_reported_as_a_failure(hub: HubServer, saved, waits) -> None:
    """The hub applied the commit and the connection dropped before the answer: the retry finds the files in
    place and returns the existing commit instead of claiming the repo is unchanged (or committing twice)."""
    old, new = saved
    repo = "test-user/lost-answer"
    first_push(hub, old, repo)
    hub.faults.append(Fault("POST", "/commit/", drop=True, after=True))
    info = push_qat_folder(new, repo)
    commits = hub.commits(repo)
    assert len(commits) == 3 and info.oid == commits[0].sha
    assert hub.files(repo)["model.safetensors"] == (new / "model.safetensors").read_bytes()


@pytest.mark.parametrize("kind", ["500", "drop", "drop_after"])
@pytest.mark.parametrize(("method", "path"), PUSH_REQUESTS, ids=[p.strip("/").replace("/", "_") for _, p in PUSH_REQUESTS])
def test_the_repo_holds_the_whole_push_or_none_of_it(hub: HubServer, saved, waits, tmp_path, method, path, kind) -> None:
    old, new = saved
    repo = f"test-user/all-or-nothing-{kind}-{path.strip('/').replace('/', '-')}"
    before = first_push(hub, old, repo)
    folder = Path(shutil.copytree(new, tmp_path / "new"))
    expected = {**before, **{p.name: p.read_bytes() for p in folder.iterdir() if p.name in before}}
    hub.faults.append(Fault(method, path, status=500, drop=kind != "500", after=kind == "drop_after", times=1000))
    try:
        push_qat_folder(folder, repo, attempts=2)
    except HubError:
        pass
    hub.faults.clear()
    assert hub.files(repo) in (before, expected)
    assert len(hub.commits(repo)) in (2, 3)


def test_an_unanswered_token_check_is_not_reported_as_a_bad_token(hub: HubServer, saved, waits) -> None:
    old, _ = saved
    hub.faults.append(Fault("GET", "/api/whoami-v2", status=503, times=1000))
    with pytest.raises(HubError, match=r"(?s)did not answer the token check.*Nothing was uploaded"):
        push_qat_folder(old, "test-user/whoami-down")
    assert not [r for r in hub.requests if r[0] != "GET" and "whoami-down" in r[1]]
