"""The model card rendered from the packaged template: its code snippets name things that exist."""

import ast
import importlib
import re

import pytest
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args
from hf_qat.hub.model_card import render_model_card


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_card_snippets_import_what_exists(framework):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    ctrl, _model = create_compressed_model(tiny_bert(), config)
    results = {"task": "text-classification", "metric": "accuracy", "values": {"fp32": 0.9, "int8": 0.89, "int8_onnx": 0.89}}
    card = str(render_model_card(ctrl, results, "org/base", repo_id="me/qat", framework=framework))
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert snippets
    checked = 0
    for snippet in snippets:
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "hf_qat":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"the card imports {node.module}.{alias.name}, which does not exist"
                    checked += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "hf_qat":
                        importlib.import_module(alias.name)
                        checked += 1
    assert checked
