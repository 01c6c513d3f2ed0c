"""Backend-neutral placement rules: scope validation and the spec of a quantizer from the config.

Both backends choose quantization points from their own view of the model (traced operations in
PyTorch, layers in Keras) and then ask these functions which spec each point gets, so that one
NNCF config means the same thing on both.
"""

from __future__ import annotations

from ..errors import ScopeError
from .algo_config import QuantizationSettings
from .scopes import matches_any, nearest_names
from .spec import QuantizerGroup, QuantizerSpec

__all__ = ["group_spec", "validate_scopes"]


def validate_scopes(settings: QuantizationSettings, names: list[str]) -> None:
    """Raise [`ScopeError`] for the first scope pattern of the config that matches none of ``names``."""
    checks: list[tuple[str, list[str]]] = [
        ("ignored_scopes", settings.ignored_scopes),
        ("target_scopes", settings.target_scopes),
        ("weights.ignored_scopes", settings.weights.ignored_scopes),
        ("weights.target_scopes", settings.weights.target_scopes),
        ("activations.ignored_scopes", settings.activations.ignored_scopes),
        ("activations.target_scopes", settings.activations.target_scopes),
    ]
    for group, overrides in settings.scope_overrides.items():
        checks.append((f"scope_overrides.{group}", list(overrides)))
    if settings.range_init_is_per_layer:
        for i, r in enumerate(settings.range_init):
            checks.append((f"initializer.range[{i}].target_scopes", r.target_scopes))
            checks.append((f"initializer.range[{i}].ignored_scopes", r.ignored_scopes))
    for where, patterns in checks:
        for pattern in patterns:
            if not any(matches_any(n, [pattern]) for n in names):
                raise ScopeError(pattern, where, nearest_names(pattern, names))


def group_spec(
    settings: QuantizationSettings, group: QuantizerGroup, names: list[str], scale_shape: tuple[int, ...] | None
) -> QuantizerSpec:
    """Spec of a quantizer of ``group`` at the nodes ``names``: group settings, then ``scope_overrides``.

    ``scale_shape`` is used when the group (or an override) asks for per-channel quantization.
    Backends set ``narrow_range``/``half_range`` afterwards (their rules differ).
    """
    g = settings.group_settings(group)
    o = settings.override_for(group, names)
    bits = o.get("bits", g.bits)
    per_channel = o.get("per_channel", g.per_channel)
    signed = o.get("signed", g.signed)
    mode = o.get("mode", g.mode)
    return QuantizerSpec(
        num_bits=bits,
        mode=mode,
        signedness_to_force=signed,
        narrow_range=False,
        half_range=False,
        scale_shape=scale_shape if (per_channel and scale_shape) else (1,),
        is_quantized_on_export=group is QuantizerGroup.WEIGHTS,
        compression_lr_multiplier=settings.compression_lr_multiplier,
    )
