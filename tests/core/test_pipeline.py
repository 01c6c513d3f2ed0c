"""The create_compressed_model pipeline of hf_qat.core, with a backend that records its hooks."""

import pytest

from hf_qat import CompressionStateError, ConfigError, NNCFConfig, ScopeError
from hf_qat.core.pipeline import compress
from hf_qat.core.state import QuantizerSetup, make_compression_state

CONFIG = {"compression": {"algorithm": "quantization"}}


class RecordingBackend:
    def __init__(self, fail_at=None, error=None):
        self.calls, self.fail_at, self.error = [], fail_at, error or RuntimeError("boom")

    def _step(self, name, result=None):
        self.calls.append(name)
        if name == self.fail_at:
            raise self.error
        return result

    def check_model(self, model):
        self._step("check_model")

    def check_state(self, model, setup):
        self._step("check_state")

    def prepare(self, model, config):
        model["prepared"] = True
        self._step("prepare")

    def build_setup(self, model, config, settings):
        return self._step("build_setup", QuantizerSetup({}, [], 0, 0))

    def insert(self, model, setup, settings, config):
        model["quantizers"] = True
        return self._step("insert", {"setup": setup})

    def restore(self, ctrl, ctrl_state):
        self._step("restore")

    def init_ranges(self, model, ctrl, config, settings):
        self._step("init_ranges")

    def undo(self, model):
        self.calls.append("undo")
        model.clear()


def test_hooks_run_in_order_without_and_with_a_compression_state():
    backend = RecordingBackend()
    ctrl, model = compress({}, CONFIG, None, backend)
    assert backend.calls == ["check_model", "prepare", "build_setup", "insert", "init_ranges"]
    assert model == {"prepared": True, "quantizers": True} and ctrl["setup"].points == {}
    state = make_compression_state(QuantizerSetup({}, [], 0, 0), {"loss": {}, "scheduler": {}, "compression_stage": 2})
    backend = RecordingBackend()
    compress({}, NNCFConfig.from_dict(CONFIG), state, backend)
    assert backend.calls == ["check_model", "check_state", "prepare", "insert", "restore"]


@pytest.mark.parametrize("step", ["prepare", "build_setup", "insert", "init_ranges"])
def test_a_failing_step_is_undone_and_passed_on(step):
    backend = RecordingBackend(fail_at=step, error=ScopeError("{re}nothing", "ignored_scopes", ["a/b"]))
    model = {}
    with pytest.raises(ScopeError):
        compress(model, CONFIG, None, backend)
    assert backend.calls[-1] == "undo" and model == {}


def test_a_foreign_error_while_restoring_a_state_is_a_compression_state_error():
    state = make_compression_state(QuantizerSetup({}, [], 0, 0), {})
    backend = RecordingBackend(fail_at="restore", error=KeyError("scale"))
    model = {}
    with pytest.raises(CompressionStateError, match="nothing was modified") as err:
        compress(model, CONFIG, state, backend)
    assert isinstance(err.value.__cause__, KeyError) and model == {} and backend.calls[-1] == "undo"


def test_bad_config_and_malformed_state_fail_before_any_hook_changes_the_model():
    backend = RecordingBackend()
    with pytest.raises(ConfigError):
        compress({}, {"compression": {"algorithm": "quantization", "bits": 8}}, None, backend)
    assert backend.calls == []
    with pytest.raises(CompressionStateError):
        compress({}, CONFIG, {"builder_state": 3}, backend)
    assert backend.calls == ["check_model"]
