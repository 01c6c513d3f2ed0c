"""Odd models and odd calibration data: compression succeeds (or fails with a clear error), and every
quantizer range is finite and non-empty."""

from __future__ import annotations

import warnings

import pytest
import torch
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert, tiny_gpt2
from torch import nn

from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args


def compress(model: nn.Module, batches: list, **algo):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(**algo)), batches)
    return create_compressed_model(model, config)


def assert_ranges_usable(ctrl) -> None:
    for qid, q in ctrl.quantizers.items():
        low, high = q.input_low_high()
        assert torch.isfinite(low).all() and torch.isfinite(high).all(), qid
        assert bool((high > low).all()), (qid, low, high)


class Branches(nn.Module):
    """fc_zero only ever sees zeros, fc_nan only NaN; fc_empty has a weight with no elements; fc is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.fc_zero = nn.Linear(8, 4)
        self.fc_nan = nn.Linear(8, 4)
        self.fc_empty = nn.Linear(8, 0)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.relu(self.fc(x)))  # a shared module called twice
        zero = self.fc_zero(h * 0.0)
        nan = self.fc_nan(torch.full_like(h, float("nan")))
        empty = self.fc_empty(x)
        return self.out(h) + zero.sum() * 0 + torch.nan_to_num(nan).sum() * 0 + empty.sum()


def test_zero_size_nan_and_zero_activations_and_a_shared_module() -> None:
    torch.manual_seed(0)
    model = Branches().eval()
    x = torch.randn(4, 8)
    reference = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctrl, model = compress(model, [torch.randn(4, 8) for _ in range(2)])
    assert_ranges_usable(ctrl)
    ids = list(ctrl.quantizers)
    assert not [i for i in ids if "fc_empty" in i and "|" not in i]  # nothing to quantize in a 0-element weight
    assert any("fc_nan" in i and "|INPUT0" in i for i in ids)
    assert any("NaN/inf" in str(w.message) and "fc_nan" in str(w.message) for w in caught)
    out = model(x)
    assert torch.isfinite(out).all() and (out - reference).abs().max() < 0.2
    # the same quantizers come back from the compression state
    ctrl2, model2 = create_compressed_model(
        Branches().eval(), NNCFConfig.from_dict(quant_config()), compression_state=ctrl.get_compression_state()
    )
    model2.load_state_dict(model.state_dict())
    assert list(ctrl2.quantizers) == ids and torch.equal(model2(x), out)


@pytest.mark.parametrize("kind", ["all zeros", "all NaN", "empty batch"])
def test_degenerate_calibration_data_gives_finite_non_zero_ranges(kind: str) -> None:
    torch.manual_seed(0)
    data = {"all zeros": torch.zeros(4, 8), "all NaN": torch.full((4, 8), float("nan")), "empty batch": torch.zeros(0, 8)}[kind]
    ctrl, model = compress(Branches().eval(), [data, data])
    assert_ranges_usable(ctrl)
    assert torch.isfinite(model(torch.randn(3, 8))).all()


@pytest.mark.parametrize("value", [0.0, 0.3])
def test_constant_weights(value: float) -> None:
    model = Branches().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.fill_(value)
    ctrl, model = compress(model, [torch.randn(4, 8)])
    assert_ranges_usable(ctrl)
    assert torch.isfinite(model(torch.randn(3, 8))).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype: torch.dtype) -> None:
    batches = [inputs_of(b) for b in text_batches()]
    fp32 = tiny_bert()
    with torch.no_grad():
        reference = fp32(**batches[0]).logits
    ctrl, model = compress(tiny_bert().to(dtype), batches)
    assert_ranges_usable(ctrl)
    with torch.no_grad():
        logits = model(**batches[0]).logits
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()
    assert (logits.float() - reference).abs().max() < 0.5
    loss = model(**batches[0], labels=torch.zeros(4, dtype=torch.long)).loss
    loss.backward()  # QAT trains in the model's dtype
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None)


def test_gpt2_tied_embeddings_stay_tied(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    import hf_qat  # noqa: F401 - quant_method "hf_qat"
    from hf_qat.transformers import save_qat_model

    batches = [{"input_ids": b["input_ids"]} for b in text_batches()]
    ctrl, model = compress(tiny_gpt2(), batches)
    assert_ranges_usable(ctrl)
    assert model.lm_head.weight is model.transformer.wte.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(**batches[0], labels=batches[0]["input_ids"]).loss.backward()
    optimizer.step()
    model.eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    folder = save_qat_model(model, ctrl, tmp_path / "gpt2")
    pulled = AutoModelForCausalLM.from_pretrained(folder)
    assert pulled.lm_head.weight is pulled.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(pulled(**batches[1]).logits, model(**batches[1]).logits)
