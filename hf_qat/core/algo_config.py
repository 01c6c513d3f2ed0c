"""Typed view of the ``quantization`` section of a validated :class:`~hf_qat.core.config.NNCFConfig`.

All of NNCF's defaults live here, in one place (NNCF does not inject them into the config dict
either): a backend asks this object what a given quantizer should look like and never reads the
raw dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .scopes import matches_any, to_list
from .spec import QuantizationMode, QuantizerGroup

__all__ = [
    "GroupSettings",
    "RangeInitSettings",
    "QuantizationSettings",
    "DistillationSettings",
    "without_distillation",
    "DEFAULT_NUM_INIT_SAMPLES",
]

DEFAULT_NUM_INIT_SAMPLES = 256
DEFAULT_RANGE_TYPE = "mixed_min_max"
DEFAULT_BN_ADAPTATION_SAMPLES = 2000
#: Target devices whose hardware config makes weights per-channel by default.
_PER_CHANNEL_DEVICES = {"ANY", "CPU", "GPU", "NPU", "VPU", "CPU_SPR"}
#: Target devices on which NNCF applies the overflow fix.
_OVERFLOW_FIX_DEVICES = {"ANY", "CPU"}


@dataclass
class GroupSettings:
    """Settings of one quantizer group (weights or activations) after defaults and preset."""

    mode: QuantizationMode
    bits: int = 8
    signed: bool | None = None
    per_channel: bool = False
    #: hf_qat's extension (weights): group-wise scales along the input axis
    group_size: int | None = None
    #: hf_qat's extension (activations): "static" (NNCF's learned ranges), "none" (weight-only) or
    #: "dynamic_per_token" (a scale per token computed at run time)
    scheme: str = "static"
    ignored_scopes: list[str] = field(default_factory=list)
    target_scopes: list[str] = field(default_factory=list)


@dataclass
class RangeInitSettings:
    type: str = DEFAULT_RANGE_TYPE
    num_init_samples: int = DEFAULT_NUM_INIT_SAMPLES
    min_percentile: float = 0.1
    max_percentile: float = 99.9
    target_scopes: list[str] = field(default_factory=list)
    ignored_scopes: list[str] = field(default_factory=list)
    target_group: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], **extra: Any) -> RangeInitSettings:
        params = d.get("params", {})
        return cls(
            type=d.get("type", DEFAULT_RANGE_TYPE),
            num_init_samples=d.get("num_init_samples", DEFAULT_NUM_INIT_SAMPLES),
            min_percentile=params.get("min_percentile", 0.1),
            max_percentile=params.get("max_percentile", 99.9),
            target_scopes=to_list(d.get("target_scopes")),
            ignored_scopes=to_list(d.get("ignored_scopes")),
            target_group=d.get("target_quantizer_group"),
            **extra,
        )


@dataclass
class DistillationSettings:
    """NNCF's ``knowledge_distillation`` entry: ``loss = task + scale * KD`` with KD the temperature-scaled
    KL divergence of the softmaxes (``softmax``) or the mean squared error of the logits (``mse``)."""

    kind: str
    scale: float = 1.0
    temperature: float = 1.0

    @classmethod
    def from_config(cls, config: dict) -> DistillationSettings | None:
        """The config's ``knowledge_distillation`` entry (validated), or ``None``."""
        compression = config.get("compression")
        entries = compression if isinstance(compression, list) else ([compression] if compression else [])
        entry = next((e for e in entries if isinstance(e, dict) and e.get("algorithm") == "knowledge_distillation"), None)
        if entry is None:
            return None
        return cls(entry["type"], float(entry.get("scale", 1.0)), float(entry.get("temperature", 1.0)))


def without_distillation(config: dict) -> dict:
    """A shallow copy of ``config`` without its ``knowledge_distillation`` entry (what compression itself reads)."""
    compression = config.get("compression")
    if not isinstance(compression, list):
        return dict(config)
    kept = [e for e in compression if not (isinstance(e, dict) and e.get("algorithm") == "knowledge_distillation")]
    return {**config, "compression": kept[0] if len(kept) == 1 else kept}


@dataclass
class QuantizationSettings:
    """Everything the ``quantization`` algorithm needs from the config, defaults applied."""

    target_device: str
    weights: GroupSettings
    activations: GroupSettings
    range_init: list[RangeInitSettings]
    range_init_is_per_layer: bool
    num_bn_adaptation_samples: int
    ignored_scopes: list[str]
    target_scopes: list[str]
    validate_scopes: bool
    overflow_fix: str
    quantize_inputs: bool
    scope_overrides: dict[str, dict[str, dict[str, Any]]]
    compression_lr_multiplier: float | None
    activations_quant_start_epoch: int | None
    weights_quant_start_epoch: int | None
    config_path: tuple[Any, ...] = ()
    #: NNCF's manual mixed precision (``initializer.precision.bitwidth_per_scope``): ``(bits, scope)``, later wins.
    bitwidth_per_scope: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: dict) -> QuantizationSettings:
        """Build settings from a validated NNCF config (see :func:`hf_qat.core.config.validate_config`).

        Raises:
            [`ConfigError`]: if the config has no ``quantization`` entry.
        """
        compression = config.get("compression")
        entries = compression if isinstance(compression, list) else ([compression] if compression else [])
        index = next((i for i, e in enumerate(entries) if e.get("algorithm") == "quantization"), None)
        if index is None:
            raise ConfigError(
                "$.compression",
                compression,
                'an object {"algorithm": "quantization", ...} (or a list holding one)',
                detail="hf_qat needs a quantization algorithm section to compress the model.",
            )
        algo = entries[index]
        path = ("compression", index) if isinstance(compression, list) else ("compression",)
        device = config.get("target_device", "ANY")
        preset = algo.get("preset", "performance")

        def group(name: str, default_mode: str, default_per_channel: bool) -> GroupSettings:
            g = algo.get(name, {})
            return GroupSettings(
                mode=QuantizationMode(g.get("mode", default_mode)),
                bits=g.get("bits", 8),
                signed=g.get("signed"),
                per_channel=g.get("per_channel", default_per_channel),
                group_size=g.get("group_size"),
                scheme=g.get("scheme", "static"),
                ignored_scopes=to_list(g.get("ignored_scopes")),
                target_scopes=to_list(g.get("target_scopes")),
            )

        act_mode = "asymmetric" if preset == "mixed" else "symmetric"
        weights = group("weights", "symmetric", device in _PER_CHANNEL_DEVICES)
        activations = group("activations", act_mode, False)

        init = algo.get("initializer", {})
        raw_range = init.get("range", {})
        per_layer = isinstance(raw_range, list)
        range_init = (
            [RangeInitSettings.from_dict(r) for r in raw_range] if per_layer else [RangeInitSettings.from_dict(raw_range)]
        )
        params = algo.get("params")
        overflow_fix = algo.get("overflow_fix", "enable") if device in _OVERFLOW_FIX_DEVICES else "disable"
        return cls(
            target_device=device,
            weights=weights,
            activations=activations,
            range_init=range_init,
            range_init_is_per_layer=per_layer,
            num_bn_adaptation_samples=init.get("batchnorm_adaptation", {}).get(
                "num_bn_adaptation_samples", DEFAULT_BN_ADAPTATION_SAMPLES
            ),
            ignored_scopes=to_list(algo.get("ignored_scopes")),
            target_scopes=to_list(algo.get("target_scopes")),
            validate_scopes=algo.get("validate_scopes", True),
            overflow_fix=overflow_fix,
            quantize_inputs=algo.get("quantize_inputs", True),
            scope_overrides=algo.get("scope_overrides", {}),
            compression_lr_multiplier=algo.get("compression_lr_multiplier", config.get("compression_lr_multiplier")),
            activations_quant_start_epoch=(params or {}).get("activations_quant_start_epoch", 1) if params is not None else None,
            weights_quant_start_epoch=(params or {}).get("weights_quant_start_epoch", 1) if params is not None else None,
            config_path=path,
            bitwidth_per_scope=[
                (int(bits), str(scope)) for bits, scope in (init.get("precision") or {}).get("bitwidth_per_scope", [])
            ],
        )

    # -- queries ------------------------------------------------------------------------------
    @property
    def num_init_samples(self) -> int:
        return max(r.num_init_samples for r in self.range_init)

    def group_settings(self, group: QuantizerGroup) -> GroupSettings:
        return self.weights if group is QuantizerGroup.WEIGHTS else self.activations

    def is_node_quantized(self, node_name: str, group: QuantizerGroup) -> bool:
        """Whether ``node_name`` passes the global and the group's target/ignored scopes (never for activations
        with ``scheme: "none"``)."""
        g = self.group_settings(group)
        if g.scheme == "none":  # weight-only quantization
            return False
        if matches_any(node_name, self.ignored_scopes) or matches_any(node_name, g.ignored_scopes):
            return False
        if self.target_scopes and not matches_any(node_name, self.target_scopes):
            return False
        if g.target_scopes and not matches_any(node_name, g.target_scopes):
            return False
        return True

    def override_for(self, group: QuantizerGroup, names: list[str]) -> dict[str, Any]:
        """Merged ``scope_overrides`` entries whose pattern matches any of ``names`` (later keys win)."""
        merged: dict[str, Any] = {}
        for pattern, values in self.scope_overrides.get(group.value, {}).items():
            if any(matches_any(n, [pattern]) for n in names):
                merged.update(values)
        return merged

    def range_init_for(self, group: QuantizerGroup, names: list[str], quantizer_id: str) -> RangeInitSettings:
        """The range-init settings that apply to a quantizer (scope overrides win over the initializer)."""
        override = self.override_for(group, names).get("initializer", {}).get("range")
        if override is not None:
            return RangeInitSettings.from_dict(override)
        if not self.range_init_is_per_layer:
            return self.range_init[0]
        for entry in self.range_init:
            if entry.target_group is not None and entry.target_group != group.value:
                continue
            if any(matches_any(n, entry.ignored_scopes) for n in names):
                continue
            if entry.target_scopes and not any(matches_any(n, entry.target_scopes) for n in names):
                continue
            return entry
        raise ConfigError(
            _json(self.config_path + ("initializer", "range")),
            [r.__dict__ for r in self.range_init],
            f"an entry whose scopes match the {group.value} quantizer {quantizer_id!r}",
            detail="Add a catch-all entry without target_scopes at the end of the list.",
        )


def _json(path: tuple[Any, ...]) -> str:
    from .config import json_path

    return json_path(path)
