import json

import pytest

from hf_qat import ConfigError, NNCFConfig
from hf_qat.core.algo_config import QuantizationSettings
from hf_qat.core.spec import QuantizationMode

# The Hugging Face configs shipped with NNCF's transformers patch (v2.8.1), as listed in the reference.
HF_CONFIGS = {
    "bert_mrpc": {
        "input_info": [{"sample_size": [1, 128], "type": "long"}] * 3,
        "compression": {
            "algorithm": "quantization",
            "initializer": {
                "range": {
                    "num_init_samples": 64,
                    "type": "percentile",
                    "params": {"min_percentile": 0.01, "max_percentile": 99.99},
                },
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
            },
            "activations": {"mode": "symmetric"},
            "weights": {"mode": "symmetric", "per_channel": False},
        },
    },
    "bert_squad": {
        "input_info": [{"sample_size": [1, 384], "type": "long"}] * 3,
        "compression": {
            "algorithm": "quantization",
            "initializer": {
                "range": {
                    "num_init_samples": 32,
                    "type": "percentile",
                    "params": {"min_percentile": 0.01, "max_percentile": 99.99},
                },
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
            },
            "activations": {"mode": "symmetric"},
            "weights": {"mode": "symmetric", "signed": True, "per_channel": False},
        },
    },
    "bert_xnli": {
        "input_info": [{"sample_size": [1, 128], "type": "long"}] * 3,
        "compression": {
            "algorithm": "quantization",
            "initializer": {"range": {"num_init_samples": 96}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
            "ignored_scopes": [
                "{re}BertSelfAttention\\[self\\]/__add___0",
                "{re}BertIntermediate\\[intermediate\\]/NNCFLinear\\[dense\\]/linear_0",
            ],
            "activations": {"mode": "asymmetric"},
            "weights": {"mode": "symmetric"},
        },
    },
    "distilbert_sst2": {
        "input_info": [{"sample_size": [1, 128], "type": "long"}] * 2,
        "compression": {
            "algorithm": "quantization",
            "initializer": {
                "range": {"num_init_samples": 32, "type": "mean_percentile"},
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
            },
            "activations": {"mode": "symmetric"},
            "weights": {"mode": "symmetric", "signed": True},
        },
    },
    "roberta_mnli": {
        "input_info": {"sample_size": [1, 128], "type": "long", "filler": "ones", "keyword": "input_ids"},
        "compression": {
            "algorithm": "quantization",
            "initializer": {"range": {"num_init_samples": 24}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
            "activations": {"mode": "asymmetric"},
            "weights": {"mode": "asymmetric"},
        },
    },
    "gpt2_wikitext": {
        "input_info": {"sample_size": [1, 1024], "type": "long"},
        "hw_config_type": "cpu",
        "compression": {
            "algorithm": "quantization",
            "initializer": {
                "range": {"num_init_samples": 16, "type": "percentile"},
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
            },
            "ignored_scopes": [
                "{re}GPT2Model\\[transformer\\]/__add___0",
                "{re}.*Attention\\[attn\\]/__truediv___0",
                "{re}.*GPT2Block\\[[0-9]*\\]/__add___0",
                "{re}.*GPT2Block\\[[0-9]*\\]/__add___1",
                "GPT2LMHeadModel/NNCFLinear[lm_head]/linear_0",
            ],
        },
    },
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_configs_validate_unchanged(name):
    config = NNCFConfig.from_dict(HF_CONFIGS[name])
    assert dict(config) == HF_CONFIGS[name]
    settings = QuantizationSettings.from_config(config)
    assert settings.weights.bits == 8


def test_defaults_follow_nncf():
    s = QuantizationSettings.from_config(NNCFConfig.from_dict({"compression": {"algorithm": "quantization"}}))
    assert s.weights.mode is QuantizationMode.SYMMETRIC and s.weights.per_channel is True
    assert s.activations.mode is QuantizationMode.SYMMETRIC and s.activations.per_channel is False
    assert s.range_init[0].type == "mixed_min_max" and s.num_init_samples == 256
    assert s.num_bn_adaptation_samples == 2000 and s.overflow_fix == "enable" and s.quantize_inputs
    mixed = QuantizationSettings.from_config(
        NNCFConfig.from_dict({"target_device": "TRIAL", "compression": {"algorithm": "quantization", "preset": "mixed"}})
    )
    assert mixed.activations.mode is QuantizationMode.ASYMMETRIC
    assert mixed.weights.per_channel is False  # TRIAL has no hardware config
    assert mixed.overflow_fix == "disable"  # only CPU/ANY


def test_every_documented_key_is_accepted():
    config = {
        "input_info": [{"sample_size": [2, 8], "type": "long", "filler": "zeros", "keyword": "input_ids"}],
        "target_device": "CPU",
        "log_dir": "/tmp/x",
        "compression_lr_multiplier": 2.0,
        "compression": [
            {
                "algorithm": "quantization",
                "initializer": {
                    "range": [
                        {
                            "type": "threesigma",
                            "num_init_samples": 8,
                            "target_scopes": ["{re}.*"],
                            "target_quantizer_group": "weights",
                        },
                        {
                            "type": "min_max",
                            "num_init_samples": 8,
                            "ignored_scopes": ["x"],
                            "target_quantizer_group": "activations",
                        },
                    ],
                    "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
                },
                "preset": "mixed",
                "weights": {
                    "mode": "symmetric",
                    "bits": 4,
                    "per_channel": True,
                    "signed": True,
                    "ignored_scopes": [],
                    "target_scopes": [],
                },
                "activations": {
                    "mode": "asymmetric",
                    "bits": 6,
                    "per_channel": False,
                    "ignored_scopes": "a",
                    "target_scopes": [],
                },
                "scope_overrides": {
                    "weights": {"{re}.*dense.*": {"bits": 8, "mode": "asymmetric", "per_channel": False}},
                    "activations": {
                        "{re}.*matmul.*": {"bits": 8, "signed": True, "initializer": {"range": {"type": "mean_min_max"}}}
                    },
                },
                "ignored_scopes": ["{re}.*pooler.*"],
                "target_scopes": ["{re}.*"],
                "validate_scopes": False,
                "overflow_fix": "first_layer_only",
                "quantize_inputs": False,
                "quantize_outputs": False,
                "export_to_onnx_standard_ops": True,
                "compression_lr_multiplier": 5.0,
                "params": {"activations_quant_start_epoch": 1, "weights_quant_start_epoch": 0},
            }
        ],
    }
    s = QuantizationSettings.from_config(NNCFConfig.from_dict(config))
    assert s.weights.bits == 4 and s.activations.bits == 6 and s.compression_lr_multiplier == 5.0
    assert s.range_init_is_per_layer and len(s.range_init) == 2
    assert s.activations_quant_start_epoch == 1 and s.weights_quant_start_epoch == 0


@pytest.mark.parametrize(
    "config, path, fragment",
    [
        (
            {"compression": {"algorithm": "quantization", "initializer": {"range": {"type": "minmax"}}}},
            "$.compression.initializer.range.type",
            "mixed_min_max",
        ),
        ({"compression": {"algorithm": "quantization", "weights": {"bitz": 8}}}, "$.compression.weights.bitz", "bits"),
        ({"compression": {"algorithm": "quantization", "activations": {"bits": 9}}}, "$.compression.activations.bits", "<= 8"),
        ({"compression": {"algorithm": "quantization", "activations": {"bits": 1}}}, "$.compression.activations.bits", ">= 2"),
        ({"compression": {"algorithm": "quantization", "preset": "fast"}}, "$.compression.preset", "performance"),
        ({"compression": {"algorithm": "quantization", "overflow_fix": True}}, "$.compression.overflow_fix", "string"),
        ({"compression": {"algorithm": "magnitude_sparsity"}}, "$.compression.algorithm", "quantization"),
        (
            {"compression": [{"algorithm": "quantization"}, {"algorithm": "pruning"}]},
            "$.compression[1].algorithm",
            "quantization",
        ),
        (
            {"compression": {"algorithm": "quantization", "quantize_outputs": True}},
            "$.compression.quantize_outputs",
            "Not supported",
        ),
        (
            {"compression": {"algorithm": "quantization", "initializer": {"precision": {"type": "hawq"}}}},
            "$.compression.initializer.precision.type",
            "mixed-precision",
        ),
        ({"compression": {"algorithm": "quantization", "params": {"base_lr": 0.1}}}, "$.compression.params.base_lr", "optimizer"),
        (
            {"compression": {"algorithm": "quantization", "ignored_scopes": ["{re}(unclosed"]}},
            "$.compression.ignored_scopes[0]",
            "regular expression",
        ),
        (
            {
                "compression": {
                    "algorithm": "quantization",
                    "initializer": {"range": {"params": {"min_percentile": 99, "max_percentile": 1}}},
                }
            },
            "$.compression.initializer.range.params",
            "min_percentile < max_percentile",
        ),
        (
            {"target_device": "NPU", "compression": {"algorithm": "quantization", "preset": "mixed"}},
            "$.compression.preset",
            "NPU",
        ),
        ({"input_info": {"sample_size": "1x128"}}, "$.input_info.sample_size", "array"),
        ({"target_device": "TPU"}, "$.target_device", "CPU"),
        ({"compresion": {}}, "$.compresion", "compression"),
        ([1, 2], "$", "JSON object"),
    ],
)
def test_bad_configs_raise_config_error_with_path(config, path, fragment):
    with pytest.raises(ConfigError) as info:
        NNCFConfig.from_dict(config)
    assert info.value.path == path, str(info.value)
    assert fragment in str(info.value)


def test_from_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(HF_CONFIGS["bert_mrpc"]))
    assert NNCFConfig.from_json(p) == HF_CONFIGS["bert_mrpc"]
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="valid JSON"):
        NNCFConfig.from_json(p)


def test_config_roundtrip_to_json(tmp_path):
    c = NNCFConfig.from_dict(HF_CONFIGS["bert_xnli"])
    c.to_json(tmp_path / "out.json")
    assert NNCFConfig.from_json(tmp_path / "out.json") == c


def test_config_with_comments_and_trailing_commas(tmp_path):
    """NNCF read configs with a comment-tolerant reader (NNCF's GPT-2 configs carry // comments)."""
    p = tmp_path / "gpt2.json"
    p.write_text(
        "{\n  // NNCF's GPT-2 WikiText config style\n"
        '  "input_info": [{"sample_size": [1, 1024], "type": "long"},],  /* one input */\n'
        '  "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8,},},},\n}\n'
    )
    config = NNCFConfig.from_json(p)
    assert config["input_info"] == [{"sample_size": [1, 1024], "type": "long"}]
    assert config["compression"]["initializer"]["range"]["num_init_samples"] == 8
    # the strict checks hold in commented files too
    for text, reason in [
        ('{// c\n "input_info": {"sample_size": [1, 8]}, "compression": {"algorithm": "quantization", "x": NaN}}', "NaN"),
        ('{// c\n "compression": {"algorithm": "quantization"}, "compression": {}}', "appears twice"),
        ('{// c\n "compression" {"algorithm": "quantization"}}', "nor JSON with comments"),
    ]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=reason):
            NNCFConfig.from_json(p)


def test_nncf_sample_top_level_keys_are_ignored_with_a_warning():
    """NNCF's sample configs carry their scripts' options at the top level; NNCF's schema allowed them."""
    config = {
        "model": "resnet50",
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "multiprocessing_distributed": True,
        "seed": 0,
        "compression": {"algorithm": "quantization"},
    }
    with pytest.warns(UserWarning, match=r"ignoring top-level key\(s\) \['multiprocessing_distributed', 'seed'\]"):
        parsed = NNCFConfig.from_dict(config)
    assert parsed["multiprocessing_distributed"] is True  # kept in the dict, like NNCF's NNCFConfig
    # inside "compression" an unknown key is still an error, and a misspelt top-level key of hf_qat's too
    with pytest.raises(ConfigError, match=r"\$\.compression\.seed"):
        NNCFConfig.from_dict({**config, "compression": {"algorithm": "quantization", "seed": 1}})
    with pytest.raises(ConfigError, match="did you mean 'input_info'"):
        NNCFConfig.from_dict({"inputs_info": {"sample_size": [1, 8]}, "compression": {"algorithm": "quantization"}})


@pytest.mark.parametrize("text", ["0", "[]", '"x"', "null"])
def test_a_json_file_that_is_not_an_object_is_refused_naming_the_file(tmp_path, text):
    """The reliability fuzz found ``0``: the error named neither the file nor more than ``$``."""
    path = tmp_path / "nncf_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        NNCFConfig.from_json(path)
    assert str(path) in str(info.value) and "JSON object" in str(info.value)
