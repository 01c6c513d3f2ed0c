"""QAT folders of tiny models for the deployment-clients referee, one per task of ``scripts/run_qat.py``.

Runs in hf_qat's own environment (``python scripts/clients/make_folders.py DEST``): each task's tiny model (built
from a config, saved with its tokenizer or image processor) goes through ``scripts/run_qat.py`` on a few generated
rows, and the files a deployment client reads (:data:`CLIENT_FILES`) are copied to ``DEST/<task>``. With
``--all-files`` the folders keep what a hub push holds (checkpoint, QAT files, card and plot too; no pickles), so that
they can be pushed (``scripts/clients/hub_roundtrip.py``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

#: what optimum's OVModelFor* / ORTModelFor* read from a folder (the rest of a QAT folder is hf_qat's)
CLIENT_FILES = (
    "config.json",
    "model.onnx",
    "openvino_model.xml",
    "openvino_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
    "qat_results.json",
)
TASKS = ("text-classification", "token-classification", "image-classification", "causal-lm")


def make_folder(task: str, work: Path) -> Path:
    """Run scripts/run_qat.py on a tiny model of ``task`` in ``work``; returns its output folder."""
    import torch
    from run_qat_utils import WORDS, common, load_script, sentences, tiny_text_model, write_jsonl

    run_qat = load_script()
    out = work / "out"
    if task == "text-classification":
        model, rows = tiny_text_model(work / "model"), sentences(40)
    elif task == "token-classification":
        model = tiny_text_model(work / "model")
        rows = [
            {"tokens": ["alice", "bob", "is", "in", "paris", f"w{i % 40}"], "ner_tags": [1, 2, 0, 0, 3, 0]} for i in range(40)
        ]
    elif task == "causal-lm":
        model = tiny_text_model(work / "model", arch="gpt2")
        rows = [{"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30))} for i in range(40)]
    else:
        from PIL import Image
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        model = work / "model"
        torch.manual_seed(0)
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64)  # fmt: skip
        ViTForImageClassification(config).save_pretrained(model)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model)
        rows = []
        for i in range(40):
            path = work / f"img{i}.png"
            Image.new("RGB", (40, 40), (200, 30, 30) if i % 2 else (30, 30, 200)).save(path)
            rows.append({"image": str(path), "label": i % 2})
    train, valid = write_jsonl(work / "train.jsonl", rows[:32]), write_jsonl(work / "valid.jsonl", rows[32:])
    run_qat.main(["--model_name", str(model), "--task", task, "--train_file", train, "--validation_file", valid,
                  *common(out)])  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--all-files", action="store_true")
    args = parser.parse_args(argv)
    for task in args.tasks.split(","):
        with tempfile.TemporaryDirectory(prefix=f"hf_qat_{task}_") as tmp:
            out = make_folder(task, Path(tmp))
            dest = args.dest / task
            shutil.rmtree(dest, ignore_errors=True)
            if args.all_files:
                from hf_qat.core.layout import TRANSFORMERS_LAYOUT

                dest.mkdir(parents=True)
                for pattern in TRANSFORMERS_LAYOUT.pushed:
                    for path in out.glob(pattern):
                        if path.is_file():
                            shutil.copy2(path, dest / path.name)
            else:
                dest.mkdir(parents=True)
                for name in CLIENT_FILES:
                    if (out / name).is_file():
                        shutil.copy2(out / name, dest / name)
            print(f"{task}: {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 2**10:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
