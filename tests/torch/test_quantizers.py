import collections
import copy

import pytest
import torch

from hf_qat.core.spec import QuantizerSpec
from hf_qat.torch import functions
from hf_qat.torch.functions import fake_quantize_asymmetric, fake_quantize_symmetric, tune_range
from hf_qat.torch.quantizers import create_quantizer


def ste_round(x):
    return x + (torch.round(x) - x).detach()


def reference_symmetric(x, scale, ll, lh):
    """NNCF's formula with autograd through a straight-through round: the gradients of the reference."""
    s = scale.abs() + 1e-16
    lo, hi = s * ll / lh, s
    rng = hi - lo
    inside = (x >= lo) & (x <= hi)
    out = torch.round(torch.clamp(x, lo.detach(), hi.detach()) * (lh / s.detach())) * (s.detach() / lh)
    # gradients as the reference defines them
    grad_scale_term = torch.where(inside, (out - x).detach() / rng.detach(), torch.where(x > hi, 1.0, ll / lh))
    return out.detach() + (x - x.detach()) * inside + (s - s.detach()) * grad_scale_term


@pytest.mark.parametrize(
    "bits,signed,narrow", [(8, True, False), (8, True, True), (8, False, False), (4, True, False), (2, True, False)]
)
@pytest.mark.parametrize("per_channel", [False, True])
def test_symmetric_forward_and_gradients_match_reference(bits, signed, narrow, per_channel):
    torch.manual_seed(0)
    spec = QuantizerSpec(
        num_bits=bits, narrow_range=narrow, signedness_to_force=signed, scale_shape=(4, 1) if per_channel else (1,)
    )
    ll, lh = spec.levels(signed)
    x = (torch.randn(4, 300) * 2).requires_grad_()
    scale = (torch.rand(spec.scale_shape) + 0.5).requires_grad_()
    out = fake_quantize_symmetric(x, scale, ll, lh)
    x2, scale2 = x.detach().clone().requires_grad_(), scale.detach().clone().requires_grad_()
    ref = reference_symmetric(x2, scale2, ll, lh)
    step = (scale.detach().abs() / lh).expand_as(x)
    diff = (out - ref).abs()
    assert (diff <= step * 1.001).all() and (diff > 1e-6).float().mean() < 1e-3
    g = torch.randn_like(x)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(scale.grad, scale2.grad, rtol=1e-4, atol=1e-4)
    # values lie on the integer grid
    q = out.detach() / step
    assert torch.allclose(q, q.round(), atol=1e-3) and q.min() >= ll - 1e-3 and q.max() <= lh + 1e-3


def test_scale_gradient_outside_range_matches_finite_differences():
    # Outside the range the output is the (clamped) bound itself: FD of the forward is exact there.
    x = torch.tensor([5.0, 7.0, -6.0])
    scale = torch.tensor([2.0], requires_grad=True)
    out = fake_quantize_symmetric(x, scale, -128, 127)
    out.sum().backward()
    eps = 1e-3
    fd = (
        fake_quantize_symmetric(x, scale.detach() + eps, -128, 127).sum()
        - fake_quantize_symmetric(x, scale.detach() - eps, -128, 127).sum()
    ) / (2 * eps)
    assert scale.grad.item() == pytest.approx(fd.item(), rel=1e-3)
    assert scale.grad.item() == pytest.approx(1 + 1 - 128 / 127, rel=1e-6)


def test_asymmetric_matches_reference_and_zero_is_exact():
    torch.manual_seed(0)
    x = (torch.randn(3, 500) + 0.3).requires_grad_()
    low = torch.tensor([[-1.1], [-0.2], [0.3]], requires_grad=True)
    rng = torch.tensor([[2.5], [1.0], [1.7]], requires_grad=True)
    out = fake_quantize_asymmetric(x, low, rng, 0, 255)
    il, ir = tune_range(low.detach(), rng.detach().abs() + 1e-16, 256)
    step = ir / 255
    zp = torch.round(-il / step)
    ref = (torch.clamp(torch.round(x.detach() / step) + zp, 0, 255) - zp) * step
    assert ((out - ref).abs() <= step * 1.001).all() and ((out - ref).abs() > 1e-6).float().mean() < 1e-3
    assert (fake_quantize_asymmetric(torch.zeros(3, 1), low, rng, 0, 255) == 0).all()
    g = torch.randn_like(x)
    out.backward(g)
    hi = il + ir
    inside = (x.detach() >= il) & (x.detach() <= hi)
    torch.testing.assert_close(x.grad, g * inside)
    torch.testing.assert_close(low.grad, (g * ~inside).sum(1, keepdim=True))
    exp_rng = torch.where(inside, (ref - x.detach()) / ir, (x.detach() > hi).float()) * g
    torch.testing.assert_close(rng.grad, exp_rng.sum(1, keepdim=True), rtol=1e-4, atol=1e-4)


def test_compiled_and_eager_kernels_agree(monkeypatch):
    if not functions.kernels_compiled():
        pytest.skip("compiled kernels disabled")
    x = torch.randn(1 << 17, requires_grad=True)
    scale = torch.tensor([1.5], requires_grad=True)
    out_c = fake_quantize_symmetric(x, scale, -128, 127)
    out_c.sum().backward()
    gx_c, gs_c = x.grad.clone(), scale.grad.clone()
    x.grad = scale.grad = None
    monkeypatch.setattr(functions, "COMPILE_MIN_NUMEL", 1 << 40)
    out_e = fake_quantize_symmetric(x, scale, -128, 127)
    out_e.sum().backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(gx_c, x.grad)
    torch.testing.assert_close(gs_c, scale.grad, rtol=1e-4, atol=1e-3)


def test_quantizer_module_state_and_switches():
    q = create_quantizer(QuantizerSpec(num_bits=8, scale_shape=(1,)))
    assert set(q.state_dict()) == {"scale", "signed_tensor", "enabled", "_num_bits"}
    x = torch.randn(10)
    q.disable_quantization()
    assert q(x) is x
    q.enable_quantization()
    assert not torch.equal(q(x), x)
    a = create_quantizer(QuantizerSpec(mode="asymmetric", scale_shape=(1,)))
    assert set(a.state_dict()) == {"input_low", "input_range", "enabled", "_num_bits"}


def test_half_range_trains_on_seven_bits():
    q = create_quantizer(QuantizerSpec(num_bits=8, half_range=True, scale_shape=(1,)))
    assert q.levels() == (-64, 63)
    out = q(torch.linspace(-1, 1, 1000))
    assert out.unique().numel() <= 128


def test_shared_quantizer_reuses_result_until_parameters_change():
    q = create_quantizer(QuantizerSpec(scale_shape=(1,)), shared=True)
    x = torch.randn(100)
    y1 = q(x)
    assert q(x) is y1
    with torch.no_grad():
        q.scale.mul_(0.5)
    assert q(x) is not y1


@pytest.mark.parametrize(
    "mode,per_channel", [("symmetric", True), ("symmetric", False), ("asymmetric", False), ("asymmetric", True)]
)
def test_quantizer_grid_is_the_contract_grid_forward_computes_on(mode, per_channel):
    """The backend contract: ``grid()`` is a core ``Grid`` and ``forward`` outputs exactly its levels."""
    import numpy as np

    from hf_qat.core.quantizer import Grid, Quantizer

    torch.manual_seed(0)
    spec = QuantizerSpec(num_bits=8, mode=mode, scale_shape=(4, 1) if per_channel else (1,))
    q = create_quantizer(spec)
    with torch.no_grad():
        if mode == "symmetric":
            q.scale.copy_(torch.rand(spec.scale_shape) + 0.5)
        else:
            q.input_low.copy_(-torch.rand(spec.scale_shape) - 0.2)
            q.input_range.copy_(torch.rand(spec.scale_shape) + 1.0)
    q.initialized = True
    grid = q.grid()
    assert isinstance(q, Quantizer) and isinstance(grid, Grid)
    assert grid.step.shape == grid.zero_point.shape == ((4,) if per_channel else (1,))
    low, high = (t.reshape(-1).numpy() for t in q.input_low_high())
    np.testing.assert_allclose(grid.low, low, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grid.high, high, rtol=1e-6, atol=1e-7)
    x = torch.randn(4, 500) * 2
    out = q(x).detach().numpy()
    step = grid.step.reshape(-1, 1) if per_channel else grid.step
    zp = grid.zero_point.reshape(-1, 1) if per_channel else grid.zero_point
    codes = np.rint(out / step) + zp  # every output is a level of the grid
    np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3)
    assert codes.min() >= grid.level_low and codes.max() <= grid.level_high


def test_kernels_compile_once_per_granularity_whatever_the_shapes(monkeypatch):
    """A QAT model over batches of changing sequence length, ranks and channel counts (tiny BERT: 2D weights, 3D
    activations, 4D attention products, per-channel and per-tensor) compiles the backward kernel once per
    granularity (per-channel, per-tensor) and the forward kernel once per granularity inside and outside the
    torch-function mode that quantizes attention products: at most 2 and 4 graphs. Before, views' bases and
    duck-sized dimensions each cost another graph (8 forward graphs here; 12 graphs on all-MiniLM-L6-v2's first
    step)."""
    if not functions.kernels_compiled():
        pytest.skip("compiled kernels disabled")
    from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

    import hf_qat

    monkeypatch.setattr(functions, "COMPILE_MIN_NUMEL", 0)  # compile for the tiny model's tensors too
    torch._dynamo.reset()
    functions._compiled.cache_clear()
    batches = [inputs_of(b) for b in text_batches()]
    config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = hf_qat.create_compressed_model(tiny_bert(), config)  # traced under a torch-function mode
    model.train()
    for seq in (7, 12, 9, 16):
        batch = {k: v[:, :seq] for k, v in batches[0].items()}
        model(**batch).logits.square().mean().backward()
    counts = {
        name: len(torch._dynamo.eval_frame._debug_get_cache_entry_list(kernel.__code__))  # graphs compiled
        for name, kernel in (("forward", functions._forward_kernel), ("backward", functions._backward_kernel))
    }
    assert 1 <= counts["forward"] <= 4 and 1 <= counts["backward"] <= 2, counts


def test_evaluation_compiles_no_graph_per_shape(monkeypatch):
    """Evaluating a fake-quantized model (``eval()``, no gradients) over batches of eight sequence lengths and three
    batch sizes compiles the forward kernel a fixed number of times (per granularity, inside and outside the
    attention-product mode), not once per shape: no recompilation storm on dynamically padded evaluation batches."""
    if not functions.kernels_compiled():
        pytest.skip("compiled kernels disabled")
    from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

    import hf_qat

    monkeypatch.setattr(functions, "COMPILE_MIN_NUMEL", 0)
    torch._dynamo.reset()
    functions._compiled.cache_clear()
    batches = [inputs_of(b) for b in text_batches()]
    config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(quant_config()), batches)
    _, model = hf_qat.create_compressed_model(tiny_bert(), config)
    model.eval()
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for rows in (1, 3, 4):
            for seq in (7, 12, 9, 16, 5, 11, 14, 8):
                model(**{k: v[:rows, :seq] for k, v in batches[0].items()})
    graphs = len(torch._dynamo.eval_frame._debug_get_cache_entry_list(functions._forward_kernel.__code__))
    new_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before
    assert 1 <= graphs <= 4 and new_graphs <= 4, (graphs, new_graphs)


def _tiny_qat_bert():
    from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

    import hf_qat

    batches = [inputs_of(b) for b in text_batches()]
    config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(quant_config()), batches)
    torch.manual_seed(0)
    _, model = hf_qat.create_compressed_model(tiny_bert(), config)
    return model.train(), batches[0]


def test_quantized_layers_save_no_fake_quantized_copy_for_backward(monkeypatch):
    """Linear, convolution and quantized matmul inputs are recomputed in backward from the quantizer's input (which
    the fake quantization saves anyway): a quantized layer keeps one full-precision activation, as its float layer."""
    model, batch = _tiny_qat_bert()
    kinds = collections.Counter()
    pack = functions._pack

    def counting(t):
        saved = pack(t)
        base = t if t._base is None else t._base
        if isinstance(saved, (functions._Recompute, functions._RecomputeView)):
            kinds["recomputed"] += 1
        elif hasattr(base, "_hf_qat_recompute"):
            kinds["fake-quantized, kept"] += 1
        return saved

    monkeypatch.setattr(functions, "_pack", counting)
    model(**batch).logits.square().mean().backward()
    # inputs and weights of the 14 Linear layers, inputs of the attention products
    assert kinds["recomputed"] >= 2 * 14 and kinds["fake-quantized, kept"] == 0, kinds


@pytest.mark.parametrize("min_numel", [1 << 40, 0], ids=["eager", "compiled"])
def test_recomputed_backward_is_bit_identical(monkeypatch, min_numel):
    import contextlib

    from hf_qat.torch import layers, op_hooks

    if min_numel == 0 and not functions.kernels_compiled():
        pytest.skip("compiled kernels disabled")
    monkeypatch.setattr(functions, "COMPILE_MIN_NUMEL", min_numel)

    def grads():
        model, batch = _tiny_qat_bert()
        model(**batch).logits.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    recomputed = grads()
    for module in (layers, op_hooks):
        monkeypatch.setattr(module, "recompute_fake_quantized", contextlib.nullcontext)
    kept = grads()
    assert recomputed.keys() == kept.keys() and any("scale" in n for n in kept)
    assert all(torch.equal(recomputed[n], kept[n]) for n in kept), [n for n in kept if not torch.equal(recomputed[n], kept[n])]


def test_gradient_checkpointing_gives_the_same_gradients():
    """transformers' gradient checkpointing (non-reentrant) re-runs each layer's forward in backward. The shared
    quantizer of Q/K/V sees the same input tensor then as in the first forward: its memo must not hand back the first
    forward's output (torch.utils.checkpoint refused the re-run: 110 tensors saved, then 103), and every quantizer
    must give the same outputs again: gradients equal to training without checkpointing, bit for bit."""
    model, batch = _tiny_qat_bert()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.train()
    assert checkpointed.is_gradient_checkpointing
    for m in (model, checkpointed):
        m(**batch).logits.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    other = {n: p.grad for n, p in checkpointed.named_parameters() if p.grad is not None}
    assert grads.keys() == other.keys() and any("quantizer" in n for n in grads)
    assert all(torch.equal(grads[n], other[n]) for n in grads), [n for n in grads if not torch.equal(grads[n], other[n])]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_half_precision_inputs_are_quantized_in_float32(dtype, symmetric):
    """Under bf16 autocast the activations reaching a quantizer are bf16. The quantizer math runs in float32 on the
    float32 grid the export writes, the output is rounded to the input's dtype: equal to quantizing the float32 copy,
    with float32 range gradients equal to the float32 path's (before: the grid in bf16, 47 of 256 elements off)."""
    torch.manual_seed(0)
    x = (torch.randn(4, 64) * 3).to(dtype)
    params = [torch.tensor([2.7]), torch.tensor([5.9])] if symmetric else [torch.tensor([-2.1]), torch.tensor([5.3])]
    fq = (
        (lambda t, p: fake_quantize_symmetric(t, p[0], -128, 127))
        if symmetric
        else (lambda t, p: fake_quantize_asymmetric(t, p[0], p[1], 0, 255))
    )
    half = [p.clone().requires_grad_() for p in params]
    full = [p.clone().requires_grad_() for p in params]
    xh = x.clone().requires_grad_()
    xf = x.float().requires_grad_()
    out_half, out_full = fq(xh, half), fq(xf, full)
    assert out_half.dtype == dtype and torch.equal(out_half, out_full.to(dtype))
    weights = torch.randint(-4, 5, x.shape) / 4  # exact in half precision: both paths get the same gradient
    (out_half.float() * weights).sum().backward()
    (out_full * weights).sum().backward()
    assert xh.grad.dtype == dtype and torch.equal(xh.grad, xf.grad.to(dtype))
    for h, f in zip(half, full):
        if f.grad is not None:
            assert h.grad.dtype == torch.float32 and torch.allclose(h.grad, f.grad, rtol=1e-6, atol=1e-6)
