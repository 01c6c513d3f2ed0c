import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """The project's test hub on 127.0.0.1 (tests/hub_server.py), one per test module."""
    from hub_server import HubServer

    with HubServer() as s:
        yield s


@pytest.fixture
def hub(server, monkeypatch, tmp_path):
    """The test hub with huggingface_hub/transformers pointed at it for one test, and no injected faults."""
    from hub_server import patch_clients

    patch_clients(monkeypatch, server, tmp_path / "hf_home")
    server.faults.clear()
    yield server
    server.faults.clear()
