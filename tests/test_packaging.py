"""hf_qat as users install and import it: optional frameworks, a wheel install, the layer contract, lint."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, importlib.metadata, importlib.util, sys
BLOCKED = set({blocked!r})

def blocked(name):
    name = name.lower().replace("-", "_")
    return name.split(".")[0] in BLOCKED or any(name.startswith(b + "_") for b in BLOCKED)

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

def wrap(function, missing):
    def wrapped(name, *args, **kwargs):
        if blocked(name):
            if missing is None:
                return None
            raise missing(name)
        return function(name, *args, **kwargs)
    return wrapped

sys.meta_path.insert(0, Blocker())
importlib.util.find_spec = wrap(importlib.util.find_spec, None)  # as for a package that is not installed
importlib.metadata.version = wrap(importlib.metadata.version, importlib.metadata.PackageNotFoundError)
importlib.metadata.distribution = wrap(importlib.metadata.distribution, importlib.metadata.PackageNotFoundError)
"""


def run_blocked(blocked: list[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing any of ``blocked`` fails, as if not installed."""
    program = BLOCKER.format(blocked=sorted(blocked)) + code
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_import_without_torch():
    proc = run_blocked(
        ["torch", "transformers", "accelerate"],
        """
import hf_qat, hf_qat.core, hf_qat.hub, hf_qat.onnx
import hf_qat.keras as hqk
from hf_qat.keras.trainer import KerasQATTrainer
config = hf_qat.NNCFConfig.from_dict(hf_qat.default_nncf_config())
assert "torch" not in sys.modules and "transformers" not in sys.modules
try:
    hf_qat.create_compressed_model
except hf_qat.MissingDependencyError as e:
    assert e.extra == "torch" and 'pip install "hf_qat[torch]"' in str(e), str(e)
else:
    raise AssertionError("create_compressed_model loaded without torch")
print("ok")
""",
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_import_without_tensorflow():
    proc = run_blocked(
        ["tensorflow", "tf", "tf_nightly", "intel_tensorflow", "keras", "keras_hub", "keras_nlp", "tf2onnx"],
        """
import hf_qat
from hf_qat import create_compressed_model, QATTrainer, export_onnx
assert "tensorflow" not in sys.modules and "keras" not in sys.modules
try:
    import hf_qat.keras
except hf_qat.MissingDependencyError as e:
    assert e.extra == "tf" and e.package == "tensorflow", str(e)
else:
    raise AssertionError("hf_qat.keras imported without tensorflow")
try:
    hf_qat.KerasQATTrainer
except ImportError as e:
    assert 'hf_qat[tf]' in str(e), str(e)
print("ok")
""",
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_training_without_the_onnx_extra():
    """The torch extra alone trains (QATTrainer, create_compressed_model); ONNX export names the onnx extra."""
    proc = run_blocked(
        ["onnx", "onnxruntime", "onnxscript", "openvino"],
        """
import torch
from transformers import BertConfig, BertForSequenceClassification
import hf_qat
from hf_qat import QATTrainer, QATTrainingArguments, create_compressed_model, register_default_init_args
model = BertForSequenceClassification(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32))
batch = {"input_ids": torch.randint(0, 32, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
config = register_default_init_args(hf_qat.NNCFConfig.from_dict(hf_qat.default_nncf_config(2)), [batch])
ctrl, model = create_compressed_model(model, config)
model(**batch).logits.sum().backward()
assert "onnx" not in sys.modules
try:
    ctrl.export_model("m.onnx")
except hf_qat.MissingDependencyError as e:
    assert e.extra == "onnx" and e.package == "onnx", str(e)
else:
    raise AssertionError("exported without onnx")
print("ok")
""",
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_import_with_neither_framework():
    proc = run_blocked(
        ["torch", "transformers", "tensorflow", "keras", "onnx", "onnxruntime", "openvino", "safetensors"],
        """
import hf_qat
from hf_qat.core.inputs import parse_input_info
config = hf_qat.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 8], "type": "bfloat16"},
                                      "compression": {"algorithm": "quantization"}})
assert parse_input_info(config["input_info"])[0].dtype == "bfloat16"
try:
    hf_qat.export_onnx
except hf_qat.MissingDependencyError as e:
    assert e.extra in ("torch", "onnx"), str(e)
print("ok")
""",
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_an_unexpected_import_error_is_not_swallowed():
    """A broken transformers (installed, but failing on import) surfaces at ``import hf_qat``: a silent skip
    would let ``from_pretrained`` load QAT repos as float models."""
    program = """
import sys, types
broken = types.ModuleType("transformers.quantizers")
def __getattr__(name):
    raise ImportError("transformers.quantizers is broken (injected by the test)")
broken.__getattr__ = __getattr__
import transformers
sys.modules["transformers.quantizers"] = broken
try:
    import hf_qat
except ImportError as e:
    assert "broken" in str(e), str(e)
    print("raised")
"""
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.stdout.strip() == "raised", proc.stderr[-3000:]


def test_no_import_cycles_inside_the_package():
    """No module of hf_qat imports, directly or through others (function-level imports included), one that imports it."""
    import grimp

    graph = grimp.build_graph("hf_qat")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                cycles.append(f"{module} -> {' -> '.join(chain)}")
    assert not cycles, "\n".join(cycles)


def test_layer_contract_and_lint():
    """The import-linter contracts of pyproject.toml (core <- hub <- torch/keras <- transformers <- cli, no framework in
    the core, no torch on the Keras side) and ruff's lint and format checks."""
    lint_imports = Path(sys.executable).parent / "lint-imports"  # import-linter's command, beside this Python
    lint = subprocess.run([str(lint_imports)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert lint.returncode == 0 and "0 broken" in lint.stdout, lint.stdout[-3000:] + lint.stderr[-2000:]
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "hf_qat", "scripts", "tests"], capture_output=True, text=True, cwd=ROOT
    )
    assert ruff.returncode == 0, ruff.stdout[-3000:]
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "hf_qat", "scripts", "tests"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hf_qat").rglob("__init__.py") if "__pycache__" not in p.parts
    }
    assert found | {"hf_qat.hub.templates"} == listed


@pytest.mark.slow
def test_wheel_install_runs_run_qat_with_card_and_push(hub, tmp_path):
    """A wheel built from the repository, installed into a fresh environment (no checkout on its path), runs
    scripts/run_qat.py end to end: training, INT8 ONNX, the model card from the packaged template, a push."""
    from run_qat_utils import common, sentences, tiny_text_model, write_jsonl

    dist = tmp_path / "dist"  # built with the environment's setuptools (the dev extra pins >= 69, as pyproject's build)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = dist.glob("hf_qat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hf_qat/hub/templates/hf_qat_model_card.md" in names and "hf_qat/data/reviews.jsonl" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True, timeout=600)
    where = subprocess.run(
        [python, "-c", "import hf_qat; print(hf_qat.__file__)"], capture_output=True, text=True, cwd=tmp_path, check=True
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed wheel, not the checkout
    assert (venv / "bin" / "hf-qat-train").exists()

    model = tiny_text_model(tmp_path / "model")
    rows = sentences(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    args = ["--model_name", str(model), "--train_file", train, "--validation_file", valid, *common(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [python, str(ROOT / "scripts" / "run_qat.py"), *args, "--push_to_hub", "true", "--hub_model_id", "test-user/wheel"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "qat_results.json").read_text())
    card = (out / "README.md").read_text()
    assert "## Quantization scheme" in card and f"{results['values']['int8_onnx']:.4f}" in card
    files = hub.files("test-user/wheel")
    assert {"model.safetensors", "model.onnx", "README.md", "compression_state.json"} <= set(files)
    assert files["README.md"].decode() == card


def test_architecture_table_lists_every_module():
    """ARCHITECTURE.md's "Where things live" table names exactly the modules and subpackages of the tree."""
    import re

    rows = re.findall(r"^\| `(hf_qat/[\w/]+)` \| (.+) \|$", (ROOT / "ARCHITECTURE.md").read_text(), flags=re.M)
    assert rows
    for package, cell in rows:
        listed = set(re.findall(r"`([\w]+\.py|[\w]+/)`", cell))
        folder = ROOT / package
        present = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
        present |= {p.name + "/" for p in folder.iterdir() if (p / "__init__.py").exists()}
        assert listed == present, (
            f"{package}: listed but absent {sorted(listed - present)}, absent from the table {sorted(present - listed)}"
        )
    packages = {package for package, _ in rows}
    assert packages >= {
        f"hf_qat/{p.name}" for p in (ROOT / "hf_qat").iterdir() if (p / "__init__.py").exists() and p.name != "data"
    }
