"""Checkpoint files read without running code: NNCF 2.x ``.pth`` files (two NNCF enums, nothing else)."""

import enum
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import hf_qat
from hf_qat import CompressionStateError

ROOT = Path(__file__).resolve().parents[2]
NNCF_219 = ROOT.parent / "shared" / "interop" / "nncf2.19-bert"  # reference files made by real NNCF, where present


def _fake_nncf_modules() -> dict[str, types.ModuleType]:
    """Modules with NNCF's enum classes under NNCF's names, so that torch.save pickles them as NNCF does."""
    structs = types.ModuleType("nncf.common.quantization.structs")
    compression = types.ModuleType("nncf.api.compression")

    class QuantizationScheme(enum.Enum):
        SYMMETRIC = "symmetric"
        ASYMMETRIC = "asymmetric"

    class CompressionStage(enum.IntEnum):
        UNCOMPRESSED = 0
        PARTIALLY_COMPRESSED = 1
        FULLY_COMPRESSED = 2

    class SymmetricQuantizer:  # any other NNCF class must be refused (by name: its code is never reached)
        def __init__(self):
            self.scale = 1.0

        def __setstate__(self, state):
            print("this must never run")

    for cls, module in ((QuantizationScheme, structs), (CompressionStage, compression), (SymmetricQuantizer, structs)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    names = ["nncf", "nncf.common", "nncf.common.quantization", "nncf.api"]
    modules = {n: types.ModuleType(n) for n in names}
    modules[structs.__name__], modules[compression.__name__] = structs, compression
    return modules


def _save_nncf_like(path: Path, extra=None) -> None:
    modules = _fake_nncf_modules()
    saved = {n: sys.modules.get(n) for n in modules}
    sys.modules.update(modules)
    try:
        qs = modules["nncf.common.quantization.structs"].QuantizationScheme
        cs = modules["nncf.api.compression"].CompressionStage
        point = {"qspec": {"mode": qs.SYMMETRIC, "scale_shape": (2, 1), "num_bits": 8}, "target_type": "OPERATOR_PRE_HOOK"}
        state = {
            "builder_state": {"quantization": {"quantizer_setup": {"quantization_points": {0: point, 1: point}}}},
            "ctrl_state": {"quantization": {"compression_stage": cs.FULLY_COMPRESSED, "loss_state": None}},
        }
        checkpoint = {"state_dict": {"a.weight": torch.ones(2, 3)}, "compression_state": state}
        if extra:
            checkpoint["extra"] = modules["nncf.common.quantization.structs"].SymmetricQuantizer()
        torch.save(checkpoint, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_nncf_enums_are_read_as_plain_values_without_nncf(tmp_path):
    path = tmp_path / "ckpt.pth"
    _save_nncf_like(path)
    assert b"nncf.common.quantization.structs" in path.read_bytes()  # the pickle names NNCF's class, as NNCF's do
    with pytest.raises(Exception, match="nncf"):
        torch.load(path, weights_only=True)  # plain weights_only loading refuses it
    # a fresh interpreter without any nncf module: nothing is imported, the JSON form comes back
    code = (
        "import json, sys, hf_qat\n"
        f"ckpt = hf_qat.load_checkpoint({str(path)!r})\n"
        "assert not any(m == 'nncf' or m.startswith('nncf.') for m in sys.modules)\n"
        "print(json.dumps({'state': ckpt['compression_state'], 'keys': list(ckpt['state_dict'])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    state, keys = loaded["state"], loaded["keys"]
    point = state["builder_state"]["quantization"]["quantizer_setup"]["quantization_points"]["0"]
    assert point["qspec"] == {"mode": "symmetric", "scale_shape": [2, 1], "num_bits": 8}
    assert state["ctrl_state"]["quantization"]["compression_stage"] == 2 and keys == ["a.weight"]
    ckpt = hf_qat.load_checkpoint(path)
    assert type(ckpt["compression_state"]["ctrl_state"]["quantization"]["compression_stage"]) is int
    assert torch.equal(hf_qat.torch.checkpoint.load_state_dict_file(path)["a.weight"], torch.ones(2, 3))


def test_any_other_nncf_class_is_refused_without_running_it(tmp_path, capfd):
    path = tmp_path / "ckpt.pth"
    _save_nncf_like(path, extra=True)
    with pytest.raises(CompressionStateError, match="Refused to load.*SymmetricQuantizer"):
        hf_qat.load_checkpoint(path)
    assert "this must never run" not in capfd.readouterr().out
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(CompressionStateError, match="unknown extension"):
        hf_qat.load_checkpoint(tmp_path / "x.txt")


@pytest.mark.skipif(not (NNCF_219 / "legacy_bert_ckpt.pth").exists(), reason="reference files of real NNCF 2.19 not present")
def test_real_nncf_219_checkpoint_reads_as_its_json():
    """The .pth NNCF 2.19 wrote reads (weights_only) into exactly the compression state NNCF dumps as JSON."""
    ckpt = hf_qat.load_checkpoint(NNCF_219 / "legacy_bert_ckpt.pth")
    assert ckpt["compression_state"] == json.loads((NNCF_219 / "legacy_bert_state.json").read_text())
    assert len(ckpt["state_dict"]) == 233 and all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())


@pytest.mark.skipif(not (NNCF_219 / "legacy_bert_ckpt.pth").exists(), reason="reference files of real NNCF 2.19 not present")
def test_real_nncf_219_state_from_transformers_4_is_refused_whole():
    """This state was traced by NNCF 2.19 under transformers 4.57, whose BERT runs operations transformers 5 does not
    (``__iadd__``, ``__truediv__``, a ``__mul__`` on the mask): it is refused naming them, and the model is left as it was."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=1000,
                        num_labels=2, attn_implementation="eager")  # fmt: skip
    model = BertForSequenceClassification(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = hf_qat.load_checkpoint(NNCF_219 / "legacy_bert_ckpt.pth")
    nncf_config = {"input_info": [{"sample_size": [1, 128], "type": "long"}] * 2, "compression": {"algorithm": "quantization"}}
    with pytest.raises(CompressionStateError, match="names 4 operation") as info:
        hf_qat.create_compressed_model(model, nncf_config, compression_state=ckpt["compression_state"])
    assert "BertEmbeddings[embeddings]/__iadd___0|OUTPUT" in str(info.value)
    assert "BertSelfAttention[self]/__truediv___0|OUTPUT" in str(info.value)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
