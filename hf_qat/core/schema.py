"""JSON schema of the NNCF config accepted by hf_qat.

The schema follows NNCF's legacy quantization schema (``nncf/config/schema.py`` and
``schemata/algo/quantization.py``): configs written for NNCF validate unchanged. Every object
sets ``additionalProperties: false`` so that a misspelt key is reported by name instead of being
ignored. Keys that NNCF knows but hf_qat does not implement are listed in
:data:`UNSUPPORTED_KEYS` and rejected by :mod:`hf_qat.core.config` with an explanation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NNCF_CONFIG_SCHEMA", "KNOWLEDGE_DISTILLATION_SCHEMA", "RANGE_INIT_TYPES", "TARGET_DEVICES", "UNSUPPORTED_KEYS"]

RANGE_INIT_TYPES = ["min_max", "mixed_min_max", "mean_min_max", "threesigma", "percentile", "mean_percentile"]
TARGET_DEVICES = ["ANY", "CPU", "GPU", "NPU", "VPU", "TRIAL", "CPU_SPR"]

_SCOPES: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
}

_RANGE_PARAMS = {
    "type": "object",
    "properties": {
        "min_percentile": {"type": "number", "minimum": 0, "maximum": 100},
        "max_percentile": {"type": "number", "minimum": 0, "maximum": 100},
    },
    "additionalProperties": False,
}

_RANGE_INIT_ENTRY = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": RANGE_INIT_TYPES},
        "num_init_samples": {"type": "integer", "minimum": 0},
        "params": _RANGE_PARAMS,
    },
    "additionalProperties": False,
}

_PER_LAYER_RANGE_INIT_ENTRY = {
    "type": "object",
    "properties": {
        **_RANGE_INIT_ENTRY["properties"],
        "target_scopes": _SCOPES,
        "ignored_scopes": _SCOPES,
        "target_quantizer_group": {"type": "string", "enum": ["activations", "weights"]},
    },
    "additionalProperties": False,
}

_INITIALIZER = {
    "type": "object",
    "properties": {
        "range": {
            "anyOf": [
                _RANGE_INIT_ENTRY,
                {"type": "array", "items": _PER_LAYER_RANGE_INIT_ENTRY, "minItems": 1},
            ]
        },
        "batchnorm_adaptation": {
            "type": "object",
            "properties": {"num_bn_adaptation_samples": {"type": "integer", "minimum": 0}},
            "additionalProperties": False,
        },
        # Known to NNCF, rejected by hf_qat with an explanation (see UNSUPPORTED_KEYS).
        "precision": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["manual", "hawq", "autoq"]},
                "bitwidth_per_scope": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "prefixItems": [{"type": "integer", "minimum": 2, "maximum": 8}, {"type": "string"}],
                        "minItems": 2,
                        "maxItems": 2,
                    },
                },
            },
            "required": ["type"],
        },
    },
    "additionalProperties": False,
}

_QUANTIZER_GROUP_PROPERTIES: dict[str, Any] = {
    "mode": {"type": "string", "enum": ["symmetric", "asymmetric"]},
    "bits": {"type": "integer", "minimum": 2, "maximum": 8},
    "signed": {"type": "boolean"},
    "per_channel": {"type": "boolean"},
    "logarithm_scale": {"type": "boolean"},
}

_QUANTIZER_GROUP = {
    "type": "object",
    "properties": {
        **_QUANTIZER_GROUP_PROPERTIES,
        "ignored_scopes": _SCOPES,
        "target_scopes": _SCOPES,
        "unified_scale_ops": {"type": "array"},
    },
    "additionalProperties": False,
}

#: hf_qat's extension of NNCF's weights group: group-wise scales (one per ``group_size`` input channels of each
#: output channel; ``null`` in a scope override keeps a layer per-channel)
_GROUP_SIZE = {"type": ["integer", "null"], "minimum": 2}

_WEIGHTS_GROUP = {**_QUANTIZER_GROUP, "properties": {**_QUANTIZER_GROUP["properties"], "group_size": _GROUP_SIZE}}

#: hf_qat's extension of NNCF's activations group: ``static`` (NNCF's: ranges learned in training, the default),
#: ``none`` (weight-only quantization: no activation quantizers) or ``dynamic_per_token`` (a symmetric scale per
#: token computed at run time, no learned range: torchao's 8-bit dynamic activations)
ACTIVATION_SCHEMES = ["static", "none", "dynamic_per_token"]
_ACTIVATIONS_GROUP = {
    **_QUANTIZER_GROUP,
    "properties": {**_QUANTIZER_GROUP["properties"], "scheme": {"type": "string", "enum": ACTIVATION_SCHEMES}},
}

_SCOPE_OVERRIDE = {
    "type": "object",
    "properties": {
        **_QUANTIZER_GROUP_PROPERTIES,
        "initializer": {
            "type": "object",
            "properties": {"range": _RANGE_INIT_ENTRY},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

_WEIGHTS_SCOPE_OVERRIDE = {**_SCOPE_OVERRIDE, "properties": {**_SCOPE_OVERRIDE["properties"], "group_size": _GROUP_SIZE}}

_STAGED_PARAMS = {
    "type": "object",
    "properties": {
        "activations_quant_start_epoch": {"type": "integer", "minimum": 0},
        "weights_quant_start_epoch": {"type": "integer", "minimum": 0},
        # Known to NNCF's staged scheduler, rejected with an explanation (see UNSUPPORTED_KEYS).
        "lr_poly_drop_start_epoch": {"type": "integer"},
        "lr_poly_drop_duration_epochs": {"type": "integer"},
        "disable_wd_start_epoch": {"type": "integer"},
        "base_lr": {"type": "number"},
        "base_wd": {"type": "number"},
        "batch_multiplier": {"type": "integer"},
    },
    "additionalProperties": False,
}

QUANTIZATION_ALGO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "algorithm": {"const": "quantization"},
        "initializer": _INITIALIZER,
        "preset": {"type": "string", "enum": ["performance", "mixed"]},
        "weights": _WEIGHTS_GROUP,
        "activations": _ACTIVATIONS_GROUP,
        "quantize_inputs": {"type": "boolean"},
        "quantize_outputs": {"type": "boolean"},
        "scope_overrides": {
            "type": "object",
            "properties": {
                "weights": {"type": "object", "additionalProperties": _WEIGHTS_SCOPE_OVERRIDE},
                "activations": {"type": "object", "additionalProperties": _SCOPE_OVERRIDE},
            },
            "additionalProperties": False,
        },
        "ignored_scopes": _SCOPES,
        "target_scopes": _SCOPES,
        "validate_scopes": {"type": "boolean"},
        "overflow_fix": {"type": "string", "enum": ["enable", "first_layer_only", "disable"]},
        "export_to_onnx_standard_ops": {"type": "boolean"},
        "compression_lr_multiplier": {"type": "number", "exclusiveMinimum": 0},
        "params": _STAGED_PARAMS,
    },
    "required": ["algorithm"],
    "additionalProperties": False,
}

_ALGORITHM_ENTRY = {
    "type": "object",
    "properties": {"algorithm": {"type": "string"}},
    "required": ["algorithm"],
}

_INPUT_INFO_ENTRY = {
    "type": "object",
    "properties": {
        "sample_size": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        "type": {"type": "string", "enum": ["float", "long", "int", "bool", "half", "bfloat16", "double"]},
        "filler": {"type": "string", "enum": ["zeros", "ones", "random"]},
        "keyword": {"type": "string"},
    },
    "required": ["sample_size"],
    "additionalProperties": False,
}

NNCF_CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "input_info": {"anyOf": [_INPUT_INFO_ENTRY, {"type": "array", "items": _INPUT_INFO_ENTRY}]},
        "target_device": {"type": "string", "enum": TARGET_DEVICES},
        "hw_config_type": {"type": "string", "enum": ["cpu", "gpu", "npu", "vpu"]},
        "compression": {"anyOf": [_ALGORITHM_ENTRY, {"type": "array", "items": _ALGORITHM_ENTRY}]},
        "log_dir": {"type": "string"},
        "compression_lr_multiplier": {"type": "number", "exclusiveMinimum": 0},
        "disable_shape_matching": {"type": "boolean"},
        "accuracy_aware_training": {"type": "object"},
        # Informational keys that NNCF's own sample configs carry.
        "model": {"type": "string"},
        "num_classes": {"type": "integer"},
        "batch_size": {"type": "integer"},
        "epochs": {"type": "integer"},
        "optimizer": {"type": "object"},
        "pretrained": {"type": "boolean"},
        "dataset": {"type": "string"},
    },
    "additionalProperties": False,
}

#: NNCF's ``knowledge_distillation`` algorithm entry: QATTrainer distils from the FP32 model with it.
KNOWLEDGE_DISTILLATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "algorithm": {"const": "knowledge_distillation"},
        "type": {"enum": ["softmax", "mse"]},
        "scale": {"type": "number", "exclusiveMinimum": 0},
        "temperature": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["algorithm", "type"],
    "additionalProperties": False,
}

#: NNCF keys hf_qat knows but does not implement, keyed by JSON path, with the reason shown to the user.
#: A value of ``None`` for the path means "any value"; otherwise only the listed value is rejected.
UNSUPPORTED_KEYS: dict[str, tuple[Any, str]] = {
    "initializer.precision.type": (
        ("hawq", "autoq"),
        "mixed-precision search (HAWQ/AutoQ) is not implemented; use type 'manual' with bitwidth_per_scope, or "
        "'bits' per group or in scope_overrides.",
    ),
    "quantize_outputs": (True, "quantizing model outputs is not implemented; remove the key or set it to false."),
    "weights.logarithm_scale": (True, "log-domain scales are not implemented; remove the key or set it to false."),
    "activations.logarithm_scale": (True, "log-domain scales are not implemented; remove the key or set it to false."),
    "activations.unified_scale_ops": (
        None,
        "hf_qat does not quantize element-wise ops, so there are no scales to unify; remove the key.",
    ),
    "weights.unified_scale_ops": (None, "unified scales apply to activations only; remove the key."),
    "params.lr_poly_drop_start_epoch": (None, "learning-rate schedules belong to your optimizer/Trainer; remove it."),
    "params.lr_poly_drop_duration_epochs": (
        None,
        "learning-rate schedules belong to your optimizer/Trainer; remove it.",
    ),
    "params.disable_wd_start_epoch": (None, "weight-decay schedules belong to your optimizer/Trainer; remove it."),
    "params.base_lr": (None, "learning-rate schedules belong to your optimizer/Trainer; remove it."),
    "params.base_wd": (None, "weight-decay schedules belong to your optimizer/Trainer; remove it."),
    "params.batch_multiplier": (None, "use gradient accumulation in your training loop instead; remove it."),
}
