"""transformers integration (PyTorch): ``QATTrainer``, the ``quant_method: "hf_qat"`` quantizer that
lets ``from_pretrained`` rebuild QAT models, saving and pushing QAT folders, task data and metrics.

Modules load on first use (``transformers.Trainer`` alone takes seconds to import):

- :mod:`~hf_qat.transformers.trainer`: ``QATTrainer``, ``QATTrainingArguments``;
- :mod:`~hf_qat.transformers.checkpointing`: atomic checkpoints, checks before resuming;
- :mod:`~hf_qat.transformers.evaluation`: the exported ONNX file evaluated with the task's loss;
- :mod:`~hf_qat.transformers.quantizer`: the HfQuantizer registered with transformers;
- :mod:`~hf_qat.transformers.hub`: ``save_qat_model``, ``push_to_hub`` for the bare API;
- :mod:`~hf_qat.transformers.tasks`, :mod:`~hf_qat.transformers.metrics`: run_qat's tasks, offline metrics.
"""

from ..utils.imports import require
from ..utils.lazy import attach

require("torch", feature="hf_qat.transformers")
require("transformers", feature="hf_qat.transformers")

__getattr__, __dir__ = attach(
    __name__,
    {
        "trainer": ["QATTrainer", "QATTrainingArguments", "CompressionSchedulerCallback", "StepTimer"],
        "checkpointing": ["check_checkpoint"],
        "evaluation": ["evaluate_onnx_file", "token_level_loss"],
        "quantizer": ["HfQatConfig", "HfQatQuantizer", "register"],
        "hub": ["save_qat_model", "push_to_hub"],
        "metrics": ["load_metric"],
    },
)

__all__ = [
    "QATTrainer",
    "QATTrainingArguments",
    "CompressionSchedulerCallback",
    "StepTimer",
    "check_checkpoint",
    "evaluate_onnx_file",
    "token_level_loss",
    "HfQatConfig",
    "HfQatQuantizer",
    "register",
    "save_qat_model",
    "push_to_hub",
    "load_metric",
]
