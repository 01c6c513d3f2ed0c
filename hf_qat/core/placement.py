"""Backend-neutral placement rules: scope validation and the spec of a quantizer from the config.

Both backends choose quantization points from their own view of the model (traced operations in
PyTorch, layers in Keras) and then ask these functions which spec each point gets, so that one
NNCF config means the same thing on both.
"""

from __future__ import annotations

import re
import warnings

from ..errors import ScopeError
from .algo_config import QuantizationSettings
from .renames import OP_RENAMES, translate_scope
from .scopes import matches_any, nearest_names
from .spec import QuantizerGroup, QuantizerSpec

__all__ = ["group_spec", "weight_group_size", "quantizer_names", "validate_scopes"]


def validate_scopes(settings: QuantizationSettings, names: list[str]) -> None:
    """Check every scope pattern of the config against the model's operation ``names``.

    A pattern that matches nothing is translated when an exact translation exists (see
    :mod:`hf_qat.core.renames`: operations transformers renamed, ``scaled_dot_product_attention`` computed
    eagerly); ``settings`` is updated in place and a warning names each translation. Otherwise
    [`ScopeError`] is raised for the first such pattern.
    """
    lists: list[tuple[str, list[str]]] = [
        ("ignored_scopes", settings.ignored_scopes),
        ("target_scopes", settings.target_scopes),
        ("weights.ignored_scopes", settings.weights.ignored_scopes),
        ("weights.target_scopes", settings.weights.target_scopes),
        ("activations.ignored_scopes", settings.activations.ignored_scopes),
        ("activations.target_scopes", settings.activations.target_scopes),
    ]
    if settings.range_init_is_per_layer:
        for i, r in enumerate(settings.range_init):
            lists.append((f"initializer.range[{i}].target_scopes", r.target_scopes))
            lists.append((f"initializer.range[{i}].ignored_scopes", r.ignored_scopes))
    for where, patterns in lists:
        for i, pattern in enumerate(patterns):
            patterns[i] = _resolve(pattern, where, names)
    if settings.bitwidth_per_scope:
        ids = [*names, *(f"{n}|WEIGHT" for n in names), *(f"{n}|INPUT{p}" for n in names for p in range(4))]
        for i, (bits, scope) in enumerate(settings.bitwidth_per_scope):
            settings.bitwidth_per_scope[i] = (bits, _resolve(scope, f"initializer.precision.bitwidth_per_scope[{i}]", ids))
    for group, overrides in list(settings.scope_overrides.items()):
        # rebuilt in order: a later entry wins when several match, so the order is kept
        settings.scope_overrides[group] = {
            _resolve(pattern, f"scope_overrides.{group}", names): values for pattern, values in overrides.items()
        }


def _resolve(pattern: str, where: str, names: list[str]) -> str:
    if any(matches_any(n, [pattern]) for n in names):
        return pattern
    translated = translate_scope(pattern, names)
    if translated is None:
        raise ScopeError(pattern, where, nearest_names(pattern, names), scope_hint(pattern, names))
    new, rename = translated
    warnings.warn(
        f"NNCF config {where}: {pattern!r} matches no operation of the model; using {new!r} ({rename.reason}).",
        UserWarning,
        stacklevel=4,
    )
    return new


def scope_hint(pattern: str, names: list[str]) -> str:
    """What a scope that matches nothing may have meant: the operations of the module it names, and whether it
    names an operation transformers renamed or the fused attention hf_qat computes eagerly."""
    body = pattern[4:] if pattern.startswith("{re}") else pattern
    lines = []
    module, _, op = body.rpartition("/")
    if module:
        by_module: dict[str, list[str]] = {}
        for n in names:
            scope, _, node_op = n.rpartition("/")
            by_module.setdefault(scope, []).append(node_op)
        try:
            if pattern.startswith("{re}"):
                found = [m for m in by_module if re.fullmatch(module, m)] or [m for m in by_module if re.search(module, m)]
            else:
                found = [m for m in by_module if m == module]
        except re.error:
            found = []
        if len(found) == 1 or (found and not pattern.startswith("{re}")):
            ops = sorted(set(by_module[found[0]]))
            lines.append(f"Operations of {found[0]}: {', '.join(ops[:20])}{' ...' if len(ops) > 20 else ''}.")
        elif found:
            lines.append(
                f"{len(found)} modules match {module!r}, e.g. {found[0]}: {', '.join(sorted(set(by_module[found[0]]))[:20])}."
            )
    for rename in OP_RENAMES:
        if re.search(rename.old, op or body):
            lines.append(f"Note: {rename.reason}; the translation does not apply exactly to this pattern.")
    return "\n".join(lines)


def quantizer_names(group: QuantizerGroup, names: list[str]) -> list[str]:
    """The names a quantizer answers to in ``bitwidth_per_scope``: its node names, and NNCF's quantizer ids
    (``<node>|WEIGHT`` for weights; activation ids ``<node>|INPUT<port>`` are among ``names`` already)."""
    if group is QuantizerGroup.WEIGHTS:
        return [*names, *(f"{n}|WEIGHT" for n in names)]
    return list(names)


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
    ids = quantizer_names(group, names)
    for manual_bits, scope in settings.bitwidth_per_scope:  # NNCF's manual mixed precision; later entries win
        if any(matches_any(n, [scope]) for n in ids):
            bits = manual_bits
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


def weight_group_size(settings: QuantizationSettings, names: list[str]) -> tuple[int | None, str]:
    """``group_size`` of the weight quantizer at the nodes ``names`` (``None``: per-channel or per-tensor) and the
    config path it comes from (``weights.group_size`` or the matching ``scope_overrides`` entry), for messages."""
    override = settings.override_for(QuantizerGroup.WEIGHTS, names)
    if "group_size" in override:
        pattern = next(
            (
                p
                for p, v in reversed(list(settings.scope_overrides.get("weights", {}).items()))
                if "group_size" in v and any(matches_any(n, [p]) for n in names)
            ),
            "?",
        )
        return override["group_size"], f"$.compression.scope_overrides.weights[{pattern!r}].group_size"
    return settings.weights.group_size, "$.compression.weights.group_size"
