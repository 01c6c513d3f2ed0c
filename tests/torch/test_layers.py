"""Quantized layer classes: importable classes, from_module/to_module, and whole-model pickling
(``torch.save(model)``, ``pickle``, ``copy.deepcopy``), in this process and in a fresh one."""

import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert, tiny_gpt2
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args
from hf_qat.core.spec import QuantizerSpec
from hf_qat.torch.layers import (
    NNCFConv1d,
    NNCFConv2d,
    NNCFConv3d,
    NNCFEmbedding,
    NNCFLinear,
    NNCFUserConv1D,
    QuantizedLayerMixin,
    is_wrapped,
    layer_kind,
    nncf_class_name,
    unwrap_module,
    wrap_module,
)
from hf_qat.torch.quantizers import BaseQuantizer, create_quantizer


class MyLinear(nn.Linear):
    """A user subclass that keeps ``nn.Linear.forward`` (quantizable)."""


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = MyLinear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def compress(model, batches, **algo):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(**algo)), batches)
    return create_compressed_model(model, config)


def compressed(arch, **algo):
    if arch == "bert":
        batches = text_batches()
        ctrl, model = compress(tiny_bert(), batches, **algo)
    else:
        batches = text_batches(with_token_types=False)
        ctrl, model = compress(tiny_gpt2(), batches, **algo)
    return ctrl, model, inputs_of(batches[0])


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def last_hidden(model, inputs):
    """The last hidden state, from a call of the whole model (operation quantizers count calls per
    forward of the root model). Less quantized than the logits, so small range changes show."""
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states[-1]


def quantizers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseQuantizer)}


def input_quantizers(model):
    return {
        name: m.__dict__["_hf_qat_input_quantizer"]
        for name, m in model.named_modules()
        if "_hf_qat_input_quantizer" in m.__dict__
    }


def assert_input_quantizers_in_container(model):
    owned = {id(q) for q in model._hf_qat.modules()}
    iqs = input_quantizers(model)
    assert iqs and all(id(q) in owned for q in iqs.values())


def assert_trainable(model, inputs):
    """A backward pass reaches the range parameters of every quantizer."""
    model.train()
    model.zero_grad()
    model(**inputs).logits.float().pow(2).mean().backward()
    qs = quantizers(model)
    grads = [p.grad for q in qs.values() for p in q.parameters(recurse=False)]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    model.eval()


def make_quantizer(scale_shape=(1,)):
    q = create_quantizer(QuantizerSpec(num_bits=8, scale_shape=scale_shape))
    with torch.no_grad():
        q.scale.fill_(0.5)
    return q


# -- classes --------------------------------------------------------------------------------------
def test_classes_are_importable_and_used_by_compression():
    ctrl, model, _ = compressed("bert")
    self_attn = model.bert.encoder.layer[0].attention.self
    assert type(self_attn.query) is NNCFLinear and isinstance(self_attn.query, nn.Linear)
    assert type(model.bert.embeddings.word_embeddings) is NNCFEmbedding
    assert isinstance(model.bert.embeddings.word_embeddings, nn.Embedding)
    # node names are unchanged: NNCF's wrapper names in the scopes
    names = [qp.target_node_name for qp in ctrl.setup.points.values()]
    assert any(n.endswith("/NNCFLinear[query]/linear_0") for n in names)
    assert any(n.endswith("/NNCFEmbedding[word_embeddings]/embedding_0") for n in names)

    ctrl, gpt2, _ = compressed("gpt2")
    c_attn = gpt2.transformer.h[0].attn.c_attn
    assert type(c_attn) is NNCFUserConv1D and isinstance(c_attn, Conv1D)
    assert any("/NNCFUserConv1D[c_attn]/addmm_0" in qp.target_node_name for qp in ctrl.setup.points.values())

    for cls in (NNCFLinear, NNCFConv1d, NNCFConv2d, NNCFConv3d, NNCFEmbedding, NNCFUserConv1D):
        assert cls.__name__ == cls._hf_qat_kind.nncf_name and cls.__module__ == "hf_qat.torch.layers"
        assert pickle.loads(pickle.dumps(cls)) is cls  # by reference


LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), NNCFLinear, (1, 3, 6), (5, 1)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3), NNCFConv1d, (1, 2, 8), (3, 1, 1)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3), NNCFConv2d, (1, 2, 6, 6), (3, 1, 1, 1)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 3), NNCFConv3d, (1, 2, 4, 4, 4), (3, 1, 1, 1, 1)),
    "embedding": (lambda: nn.Embedding(10, 4), NNCFEmbedding, None, (10, 1)),
    "hf_conv1d": (lambda: Conv1D(5, 6), NNCFUserConv1D, (1, 3, 6), (1, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_module_to_module_round_trip(name):
    factory, cls, in_shape, wshape = LAYERS[name]
    torch.manual_seed(0)
    layer = factory()
    original_cls = type(layer)
    x = torch.randint(0, 10, (2, 3)) if in_shape is None else torch.randn(in_shape)
    params = {n: id(p) for n, p in layer.named_parameters()}
    calls = []
    layer.register_forward_hook(lambda m, a, o: calls.append(1))
    ref = layer(x)
    wq = make_quantizer(wshape)
    iq = make_quantizer() if in_shape is not None else None

    out = cls.from_module(layer, weight_quantizer=wq, input_quantizer=iq)
    assert out is layer and type(layer) is cls and isinstance(layer, original_cls) and is_wrapped(layer)
    assert layer.weight_quantizer is wq and layer._modules["weight_quantizer"] is wq
    assert {n: id(p) for n, p in layer.named_parameters(recurse=False)} == params  # the same Parameter objects
    if iq is not None:
        assert layer.__dict__["_hf_qat_input_quantizer"] is iq and iq not in list(layer.children())
    quantized = layer(x)
    assert not torch.equal(quantized, ref)  # a coarse grid (scale 0.5) changes the output
    assert len(calls) == 2  # hooks kept

    assert layer.to_module() is layer
    assert type(layer) is original_cls and not is_wrapped(layer)
    assert {n: id(p) for n, p in layer.named_parameters()} == params
    assert "weight_quantizer" not in layer.__dict__ and "weight_quantizer" not in layer._modules
    assert "_hf_qat_input_quantizer" not in layer.__dict__
    assert torch.equal(layer(x), ref) and len(calls) == 3

    # the thin wrappers do the same
    wrap_module(layer, wq, iq)
    assert type(layer) is cls and layer.weight_quantizer is wq
    unwrap_module(layer)
    assert type(layer) is original_cls
    unwrap_module(layer)  # no-op on a plain layer


def test_from_module_rejects_other_layers():
    with pytest.raises(TypeError, match="Conv2d"):
        NNCFLinear.from_module(nn.Conv2d(2, 3, 3))

    class CustomForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(TypeError):
        NNCFLinear.from_module(CustomForward(2, 2))
    with pytest.raises(TypeError):
        QuantizedLayerMixin.from_module(nn.LayerNorm(4))


def test_from_module_on_user_subclass():
    layer = MyLinear(4, 3)
    NNCFLinear.from_module(layer, make_quantizer((3, 1)))
    cls = type(layer)
    assert cls.__name__ == "NNCFUserMyLinear" and nncf_class_name(layer) == "NNCFUserMyLinear"
    assert isinstance(layer, MyLinear) and isinstance(layer, NNCFLinear) and layer_kind(layer).base is nn.Linear
    assert type(QuantizedLayerMixin.from_module(MyLinear(2, 2))) is cls  # made once
    layer.to_module()
    assert type(layer) is MyLinear


# -- torch.save / torch.load ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_torch_save_load_same_process(arch, tmp_path):
    _, model, inputs = compressed(arch)
    ref = logits(model, inputs)
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "backward hook ... will not be serialized"
        torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded is not model and type(loaded) is type(model)
    assert {n: type(m) for n, m in loaded.named_modules()} == {n: type(m) for n, m in model.named_modules()}
    assert torch.equal(logits(loaded, inputs), ref)
    assert_input_quantizers_in_container(loaded)
    assert_trainable(loaded, inputs)
    assert torch.equal(logits(model, inputs), ref)  # the original is untouched


CHILD = textwrap.dedent(
    """
    import sys
    import torch

    assert "hf_qat" not in sys.modules
    model_path, inputs_path, ref_path = sys.argv[1:4]
    model = torch.load(model_path, weights_only=False)
    inputs = torch.load(inputs_path)
    ref = torch.load(ref_path)
    from hf_qat.torch.layers import is_wrapped
    from hf_qat.torch.quantizers import BaseQuantizer

    wrapped = {n: type(m).__name__ for n, m in model.named_modules() if is_wrapped(m)}
    print(sorted(set(wrapped.values())))
    with torch.no_grad():
        out = model(**inputs)
    out = out if isinstance(out, torch.Tensor) else out.logits
    assert torch.equal(out, ref), (out - ref).abs().max()
    owned = {id(q) for q in model._hf_qat.modules()}
    iqs = [m.__dict__["_hf_qat_input_quantizer"] for m in model.modules() if "_hf_qat_input_quantizer" in m.__dict__]
    assert iqs and all(id(q) in owned for q in iqs)
    model.train()
    out = model(**inputs)
    (out if isinstance(out, torch.Tensor) else out.logits).pow(2).mean().backward()
    grads = [p.grad for q in model.modules() if isinstance(q, BaseQuantizer) for p in q.parameters(recurse=False)]
    assert grads and all(g is not None for g in grads)
    print("CHILD OK")
    """
)


def run_child(tmp_path, model, inputs, ref, extra_path=None):
    paths = [tmp_path / n for n in ("model.pt", "inputs.pt", "ref.pt")]
    torch.save(model, paths[0])
    torch.save(inputs, paths[1])
    torch.save(ref, paths[2])
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "CHILD OK" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_torch_save_load_fresh_process(arch, tmp_path):
    _, model, inputs = compressed(arch)
    out = run_child(tmp_path, model, inputs, logits(model, inputs))
    assert ("NNCFLinear" if arch == "bert" else "NNCFUserConv1D") in out


USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class FreshLinear(nn.Linear):
        pass


    class FreshNet(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1 = FreshLinear(8, 16)
            self.fc2 = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))
    """
)


def test_user_subclass_fresh_process(tmp_path, monkeypatch):
    """The generated class ``NNCFUserFreshLinear`` does not exist in the child before loading."""
    pkg = tmp_path / "user_pkg"
    pkg.mkdir()
    (pkg / "fresh_user_layers.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(pkg))
    import fresh_user_layers

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    _, model = compress(fresh_user_layers.FreshNet(), [x, x * 2])
    assert type(model.fc1).__name__ == "NNCFUserFreshLinear"

    with torch.no_grad():
        ref = model(x)
    # FreshNet.forward takes ``x``: feed it as a keyword
    out = run_child(tmp_path, model, {"x": x}, ref, extra_path=pkg)
    assert "NNCFUserFreshLinear" in out


# -- pickle ----------------------------------------------------------------------------------
class _RecordingUnpickler(pickle.Unpickler):
    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_user_subclass(protocol):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    _, model = compress(UserNet(), [x, x * 2])
    generated = type(model.fc1)
    assert generated.__name__ == "NNCFUserMyLinear" and type(model.fc2) is NNCFLinear
    ref = model(x)
    data = pickle.dumps(model, protocol=protocol)
    unpickler = _RecordingUnpickler(data)
    loaded = unpickler.load()
    # only importable classes and the rebuild function are referenced, never the generated class
    assert ("hf_qat.torch.layers", "_rebuild_quantized_layer") in unpickler.globals
    assert (MyLinear.__module__, "MyLinear") in unpickler.globals
    assert not any(name.startswith("NNCF") for _, name in unpickler.globals)
    assert isinstance(loaded.fc1, MyLinear) and type(loaded.fc1) is generated  # the cached class
    assert type(loaded.fc2) is NNCFLinear and nncf_class_name(loaded.fc1) == "NNCFUserMyLinear"
    assert torch.equal(loaded(x), ref)
    loaded.fc1.to_module()
    assert type(loaded.fc1) is MyLinear


def test_pickle_with_lr_multiplier_keeps_gradient_scaling():
    """Range-gradient multiplier hooks (tensor hooks are not serialised by torch) are registered again."""
    _, model, inputs = compressed("bert", compression_lr_multiplier=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = pickle.dumps(model)
    copies = [pickle.loads(data), copy.deepcopy(model)]

    def grads(m):
        m.zero_grad()
        m(**inputs).logits.pow(2).mean().backward()
        return {n: q.scale.grad.clone() for n, q in quantizers(m).items()}

    ref = grads(model)
    for other in copies:
        got = grads(other)
        assert got.keys() == ref.keys() and all(torch.equal(got[n], ref[n]) for n in ref)
        for q in quantizers(other).values():
            q.clear_lr_multiplier()
        unscaled = grads(other)
        assert all(torch.allclose(unscaled[n] * 10.0, ref[n]) for n in ref)
        assert any(ref[n].abs().sum() > 0 for n in ref)


# -- deepcopy --------------------------------------------------------------------------------
def test_deepcopy_independent_quantizers_shared_within_copy():
    _, model, inputs = compressed("bert")
    ref = logits(model, inputs)
    dup = copy.deepcopy(model)
    assert torch.equal(logits(dup, inputs), ref)

    orig_q, dup_q = quantizers(model), quantizers(dup)
    orig_scales = {n: q.scale.detach().clone() for n, q in orig_q.items()}
    assert orig_q.keys() == dup_q.keys()
    assert all(dup_q[n] is not orig_q[n] for n in orig_q)
    assert not {id(p) for p in dup.parameters()} & {id(p) for p in model.parameters()}

    # input quantizers: still the container's, and still shared by query, key and value
    assert_input_quantizers_in_container(dup)
    attn = dup.bert.encoder.layer[0].attention.self
    shared = [m.__dict__["_hf_qat_input_quantizer"] for m in (attn.query, attn.key, attn.value)]
    assert shared[0] is shared[1] is shared[2]
    assert shared[0] is not model.bert.encoder.layer[0].attention.self.query.__dict__["_hf_qat_input_quantizer"]

    # changing the copy leaves the original alone: a weight quantizer, a shared input quantizer and
    # an operation (``Q @ K^T``) quantizer reached through the copied forward hooks
    matmul_qids = [qid for qid in dup._hf_qat.external_quantizers if "/matmul_0|INPUT" in qid]
    assert matmul_qids
    changed = [attn.query.weight_quantizer, shared[0], dup._hf_qat.external_quantizers[matmul_qids[0]]]
    ref_hidden = last_hidden(model, inputs)
    before = last_hidden(dup, inputs)
    assert torch.equal(before, ref_hidden)
    for q in changed:
        with torch.no_grad():
            q.scale.mul_(3.0)
        after = last_hidden(dup, inputs)
        assert not torch.equal(after, before)
        before = after
    assert torch.equal(logits(model, inputs), ref) and torch.equal(last_hidden(model, inputs), ref_hidden)
    assert all(torch.equal(q.scale, orig_scales[n]) for n, q in orig_q.items())
    changed_names = [n for n in dup_q if any(dup_q[n] is q for q in changed)]
    assert len(changed_names) >= 3  # a shared quantizer is reachable under several names
    assert all(not torch.equal(dup_q[n].scale, orig_scales[n]) for n in changed_names)


def test_copy_after_training_step_and_strip():
    """A training forward leaves non-leaf tensors in shared quantizers' memo; copies must not carry them."""
    ctrl, model, inputs = compressed("bert")
    model.train()
    model(**inputs).logits.sum().backward()  # no optimizer step: the weights and ranges are unchanged
    # copied right after the training step, while the memos hold tensors of the autograd graph
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    stripped = ctrl.strip()  # a deepcopy
    model.eval()
    ref = logits(model, inputs)
    for dup in copies:
        assert torch.equal(logits(dup.eval(), inputs), ref)
    out = logits(stripped.eval(), inputs)
    assert not any(is_wrapped(m) for m in stripped.modules())
    buf = io.BytesIO()
    torch.save(stripped, buf)
    buf.seek(0)
    assert torch.equal(logits(torch.load(buf, weights_only=False), inputs), out)


# -- the controller attached to the model -------------------------------------------------------
def test_pickle_with_controller_attached():
    """``model._hf_qat_ctrl`` (set by the trainer) pickles without the calibration loaders, which need
    not be picklable (accelerate's are not); deepcopy shares them, as ``copy.deepcopy(config)`` does."""
    batches = text_batches()
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), loader)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    model._hf_qat_ctrl = ctrl
    inputs = inputs_of(batches[0])
    ref = logits(model, inputs)

    loaded = pickle.loads(pickle.dumps(model))
    lctrl = loaded._hf_qat_ctrl
    assert lctrl is not ctrl and lctrl.model is loaded and torch.equal(logits(loaded, inputs), ref)
    assert dict(lctrl.config) == dict(ctrl.config) and lctrl.config.get_all_extra_structs() == []
    assert ctrl.config.get_all_extra_structs()  # the original keeps its loaders
    modules = {id(m) for m in loaded.modules()}
    assert lctrl.quantizers.keys() == ctrl.quantizers.keys() and all(id(q) in modules for q in lctrl.quantizers.values())
    lctrl.disable_activation_quantization()
    lctrl.disable_weight_quantization()
    assert not torch.equal(logits(loaded, inputs), ref) and torch.equal(logits(model, inputs), ref)

    dup = copy.deepcopy(model)
    dctrl = dup._hf_qat_ctrl
    assert dctrl.model is dup and all(id(q) in {id(m) for m in dup.modules()} for q in dctrl.quantizers.values())
    assert dctrl.config.get_all_extra_structs()[0] is ctrl.config.get_all_extra_structs()[0]
    assert torch.equal(logits(dup, inputs), ref)
