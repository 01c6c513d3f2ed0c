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


# -- metadata, links, deployment, verification and per-layer tables ------------------------------------------------

RESULTS = {"task": "text-classification", "metric": "accuracy", "values": {"fp32": 0.9, "int8": 0.89, "int8_onnx": 0.89}}
ONNX, OV_XML, OV_BIN = "model.onnx", "openvino_model.xml", "openvino_model.bin"
OPENVINO = {
    "file": OV_XML,
    "checks": {
        "f32": {
            "inference_precision": "f32",
            "max_abs_diff": 1.5e-6,
            "mean_abs_diff": 2e-7,
            "top1_agreement": 1.0,
            "num_rows": 48,
        },
        "default": {
            "inference_precision": "bf16",
            "max_abs_diff": 0.031,
            "mean_abs_diff": 0.004,
            "top1_agreement": 0.979,
            "num_rows": 48,
        },
    },
}


@pytest.fixture(scope="module")
def ctrl():
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    return create_compressed_model(tiny_bert(), config)[0]


def layer_report(sqnrs):
    rows = [
        {
            "scope": f"Net/NNCFLinear[l{i}]",
            "path": f"l{i}",
            "layer_type": "Linear",
            "weight_bits": 8,
            "input_bits": 8,
            "sqnr_db": v,
            "local_sqnr_db": None if v == "nan" else (v if isinstance(v, str) else v + 0.5),
        }
        for i, v in enumerate(sqnrs)
    ]
    return {"format": "hf_qat.layer_report", "version": 1, "num_batches": 2, "num_samples": 8, "rows": rows, "not_run": []}


def card_of(ctrl, base_model="org/base", **kw):
    from huggingface_hub import ModelCard

    text = str(render_model_card(ctrl, kw.pop("results", RESULTS), base_model, **kw))
    return text, ModelCard(text).data.to_dict()


def python_snippets(text):
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for snippet in snippets:
        ast.parse(snippet)  # every snippet is valid Python
    return snippets


def test_metadata_fields_only_when_given(ctrl):
    _text, data = card_of(ctrl)
    assert not {"license", "datasets", "language"} & set(data)
    _text, data = card_of(ctrl, license="apache-2.0", datasets=["nyu-mll/glue"], language="en")
    assert (data["license"], data["datasets"], data["language"]) == ("apache-2.0", ["nyu-mll/glue"], ["en"])
    _text, data = card_of(ctrl, language=["en", "de"], dataset="nyu-mll/glue")
    assert data["language"] == ["en", "de"] and data["datasets"] == ["nyu-mll/glue"] and "license" not in data
    with pytest.raises(TypeError, match="is a string"):
        card_of(ctrl, datasets="nyu-mll/glue")


def test_license_of_reads_the_base_models_card_without_network(tmp_path, monkeypatch):
    from hf_qat.hub.model_card import license_of

    folder = tmp_path / "base"
    folder.mkdir()
    assert license_of(folder) is None  # no README.md
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# Base\n")
    assert license_of(folder) == license_of(str(folder)) == "mit"
    (folder / "README.md").write_text("# Base, no metadata\n")
    assert license_of(folder) is None
    (folder / "README.md").write_text("---\nlicense: [mit\n---\n")
    assert license_of(folder) is None  # metadata that does not parse: unknown, logged
    assert license_of(None) is None
    # a hub id: only its cached README.md is read
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert license_of("org/base") is None
    snapshot = cache / "models--org--base" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--org--base" / "refs").mkdir()
    (cache / "models--org--base" / "refs" / "main").write_text("a" * 40)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    assert license_of("org/base") == "apache-2.0"


def test_local_base_model_is_not_metadata(ctrl, tmp_path):
    folder = tmp_path / "my-finetuned-bert"
    folder.mkdir()
    text, data = card_of(ctrl, base_model=str(folder))
    assert "base_model" not in data and "base_model_relation" not in data
    assert str(tmp_path) not in text and "a local model (`my-finetuned-bert`)" in text
    assert "# my-finetuned-bert-hf-qat-int8" in text
    # a folder of the hub cache is the hub model it holds
    snapshot = tmp_path / "models--org--base" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    text, data = card_of(ctrl, base_model=str(snapshot))
    assert data["base_model"] == "org/base" and data["base_model_relation"] == "quantized"
    assert str(tmp_path) not in text
    # the hub id named explicitly
    _text, data = card_of(ctrl, base_model="google-bert/bert-base-uncased")
    assert data["base_model"] == "google-bert/bert-base-uncased"


def test_saved_folder_card_has_no_user_placeholder(ctrl):
    text, _data = card_of(ctrl, artifacts=[ONNX, OV_XML, OV_BIN])
    assert "<user>" not in text
    assert '"path/to/this-folder"' in text and 'ORTModelForSequenceClassification.from_pretrained("path/to/this-folder")' in text
    for framework in ("pytorch", "keras"):
        text, _data = card_of(ctrl, framework=framework, artifacts=[ONNX, OV_XML, OV_BIN])
        assert "<user>" not in text and "hf://" not in text and "hf_hub_download" not in text
        python_snippets(text)
    text, _data = card_of(ctrl, repo_id="me/qat", framework="keras", artifacts=[ONNX, OV_XML, OV_BIN])
    assert 'from_pretrained("hf://me/qat")' in text and 'hf_hub_download("me/qat", "model.onnx")' in text


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_no_dead_links(ctrl, tmp_path, framework):
    full = dict(
        artifacts=[ONNX, OV_XML, OV_BIN], openvino=OPENVINO, layer_report=layer_report([3.0]), layer_report_plot="sqnr.png"
    )
    for base in ("org/base", str(tmp_path), None, "SomeClassName"):
        text, _data = card_of(ctrl, base_model=base, framework=framework, **full)
        assert "github.com" not in text and "hf-qat/hf_qat" not in text
        links = re.findall(r"\]\(([^)]*)\)", text)
        allowed = {"#deployment", "sqnr.png"} | ({"https://huggingface.co/org/base"} if base == "org/base" else set())
        assert set(links) <= allowed, links


TASKS = {
    "text-classification": "SequenceClassification",
    "token-classification": "TokenClassification",
    "image-classification": "ImageClassification",
    "causal-lm": "CausalLM",
}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("files", [(), (ONNX,), (OV_XML, OV_BIN), (ONNX, OV_XML, OV_BIN)], ids=["none", "onnx", "ir", "both"])
def test_deployment_snippets_match_task_and_files(ctrl, task, files):
    text, data = card_of(ctrl, repo_id="me/qat", results={**RESULTS, "task": task}, artifacts=[*files, "config.json"])
    python_snippets(text)
    suffix = TASKS[task]
    use_cache = ", use_cache=False" if task == "causal-lm" else ""
    ort = f'ORTModelFor{suffix}.from_pretrained("me/qat"{use_cache})'
    ov = f'OVModelFor{suffix}.from_pretrained("me/qat"{use_cache})'
    ov_f32 = f'OVModelFor{suffix}.from_pretrained("me/qat"{use_cache}, ov_config={{"INFERENCE_PRECISION_HINT": "f32"}})'
    assert (ort in text) == (ONNX in files)
    assert (ov in text) == (ov_f32 in text) == (OV_XML in files)
    assert ("## Deployment" in text) == bool(files)
    assert ("openvino" in data["tags"]) == (OV_XML in files)
    other = [s for t, s in TASKS.items() if t != task]
    assert not any(f"ModelFor{s}" in text for s in other)
    if files:
        assert "`ORTQuantizer`, `OVQuantizer`, `nncf.quantize`" in text and "optimum-cli export onnx" in text
        assert ("QOrderedMatMul" in text) == (ONNX in files)
        assert "needs `import hf_qat`" in text or "only after `import hf_qat`" in text
    if OV_XML in files:
        assert "bf16" in text


def test_deployment_snippets_for_other_tasks_and_keras_use_the_runtimes(ctrl):
    for kw in ({"results": {**RESULTS, "task": "question-answering"}}, {"framework": "keras"}):
        text, _data = card_of(ctrl, repo_id="me/qat", artifacts=[ONNX, OV_XML, OV_BIN], **kw)
        python_snippets(text)
        assert "ORTModelFor" not in text and "OVModelFor" not in text
        assert 'ort.InferenceSession(hf_hub_download("me/qat", "model.onnx"))' in text
        assert 'compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})' in text
    with pytest.raises(ValueError, match="without openvino_model.bin"):
        card_of(ctrl, artifacts=[ONNX, OV_XML])


def test_openvino_verification_table_only_when_given(ctrl):
    text, _data = card_of(ctrl, artifacts=[ONNX, OV_XML, OV_BIN])
    assert "OpenVINO precision" not in text
    text, _data = card_of(ctrl, artifacts=[ONNX, OV_XML, OV_BIN], openvino=OPENVINO)
    table = [line for line in text.splitlines() if line.startswith("| default") or line.startswith("| f32")]
    assert table == ["| default (bf16) | 97.9% of 48 | 0.031 | 0.004 |", "| f32 | 100.0% of 48 | 1.5e-06 | 2e-07 |"]
    # the checks mapping alone, missing keys, and the form qat_results.json keeps (results["openvino"])
    text, _data = card_of(ctrl, artifacts=[ONNX, OV_XML, OV_BIN], openvino={"f32": {"top1_agreement": None}})
    assert "| f32 | n/a | n/a | n/a |" in text
    text, _data = card_of(ctrl, artifacts=[ONNX, OV_XML, OV_BIN], results={**RESULTS, "openvino": OPENVINO})
    assert "| default (bf16) | 97.9% of 48 |" in text
    text, _data = card_of(ctrl, artifacts=[ONNX], results={**RESULTS, "openvino": {"error": "not exported"}})
    assert "OpenVINO precision" not in text and "not exported" not in text


def test_layer_table_shows_the_ten_worst_in_order(ctrl):
    text, _data = card_of(ctrl)
    assert "Per-layer" not in text
    sqnrs = [30.0, 20.0, "inf", 5.0, 25.0, 12.0, 40.0, "nan", 8.0, 18.0, 22.0, 27.0, 33.0, "-inf"]
    text, _data = card_of(ctrl, layer_report=layer_report(sqnrs))
    rows = [line for line in text.splitlines() if line.startswith("| `Net/")]
    expected = sorted(range(len(sqnrs)), key=lambda i: (0, 0) if sqnrs[i] == "nan" else (1, float(sqnrs[i])))[:10]
    assert [re.search(r"\[l(\d+)\]", r).group(1) for r in rows] == [str(i) for i in expected]
    assert rows[0] == "| `Net/NNCFLinear[l7]` | Linear | nan | n/a |"
    assert rows[1] == "| `Net/NNCFLinear[l13]` | Linear | -inf | -inf |"
    assert rows[2] == "| `Net/NNCFLinear[l3]` | Linear | 5.0 | 5.5 |"
    assert "on 8 samples" in text and "![" not in text
    text, _data = card_of(ctrl, layer_report=layer_report([3.0, 4.0]), layer_report_plot="plots/sqnr.png")
    assert "The 2 lowest" in text and "![SQNR per quantized layer, in network order](plots/sqnr.png)" in text
    for bad in ("/abs/sqnr.png", "../sqnr.png", "https://example.com/x.png"):
        with pytest.raises(ValueError, match="not a file name inside the repository"):
            card_of(ctrl, layer_report=layer_report([3.0]), layer_report_plot=bad)
    with pytest.raises(ValueError, match="no 'rows' list"):
        card_of(ctrl, layer_report={"layers": []})


def test_layer_table_from_a_real_report(ctrl):
    import copy

    from hf_qat.torch.report import quantization_report

    model = tiny_bert()
    fp32 = copy.deepcopy(model)
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    _ctrl, qat = create_compressed_model(model, config)
    report = quantization_report(fp32, qat, text_batches(n=1))
    text, _data = card_of(ctrl, layer_report=report.to_dict())
    rows = [line for line in text.splitlines() if line.startswith("| `BertForSequenceClassification/")]
    assert [r.split("`")[1] for r in rows] == [r.scope for r in report.worst(10)]


def test_write_model_card_lists_the_folder(ctrl, tmp_path):
    from hf_qat.hub.model_card import write_model_card

    (tmp_path / ONNX).write_bytes(b"onnx")
    path = write_model_card(tmp_path, ctrl, RESULTS, "org/base")
    text = path.read_text()
    assert path.name == "README.md" and "ORTModelForSequenceClassification" in text and "OVModelFor" not in text
    (tmp_path / OV_XML).write_text("<net/>")
    (tmp_path / OV_BIN).write_bytes(b"\0")
    assert "OVModelForSequenceClassification" in write_model_card(tmp_path, ctrl, RESULTS, "org/base").read_text()
    with pytest.raises(FileNotFoundError, match="Write it first"):
        write_model_card(tmp_path, ctrl, RESULTS, "org/base", layer_report=layer_report([3.0]), layer_report_plot="sqnr.png")
    (tmp_path / "sqnr.png").write_bytes(b"\x89PNG")
    text = write_model_card(
        tmp_path, ctrl, RESULTS, "org/base", license="mit", layer_report=layer_report([3.0]), layer_report_plot="sqnr.png"
    ).read_text()
    assert "](sqnr.png)" in text and "license: mit" in text
