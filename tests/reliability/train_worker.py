"""A QATTrainer run in its own process, for the crash tests (tests/reliability/test_crash_safety.py).

    python train_worker.py OUT MAX_STEPS [--kill-at STEP] [--fsize-limit-at STEP] [--resume]

``--kill-at STEP``: SIGKILL this process in the middle of writing checkpoint-STEP's optimizer.pt (half of
the file written). ``--fsize-limit-at STEP``: from the save of checkpoint-STEP on, the OS refuses to let
this process grow a file past 4 kB (RLIMIT_FSIZE; writes fail with EFBIG, as on a full disk).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from testing_utils import tiny_bert, tiny_text_dataset
from transformers import TrainerCallback

from hf_qat.transformers import QATTrainer, QATTrainingArguments


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--fsize-limit-at", type=int)
    parser.add_argument("--resume", action="store_true")
    opts = parser.parse_args()

    if opts.kill_at is not None:
        real_save = torch.save
        marker = f"checkpoint-{opts.kill_at}"

        def save_then_die(obj, f, *args, **kwargs):
            if isinstance(f, str) and marker in f and f.endswith("optimizer.pt"):
                import io

                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                with open(f, "wb") as out:
                    out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    out.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save_then_die

    class LimitFileSize(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == opts.fsize_limit_at:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    args = QATTrainingArguments(
        output_dir=opts.out,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=opts.max_steps,
        report_to=[],
        seed=0,
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        logging_steps=2,
        disable_tqdm=True,
        num_calibration_samples=16,
        save_total_limit=3,
    )
    trainer = QATTrainer(
        model=tiny_bert(),
        args=args,
        train_dataset=tiny_text_dataset(),
        callbacks=[LimitFileSize()] if opts.fsize_limit_at else None,
    )
    trainer.train(resume_from_checkpoint=True if opts.resume else None)


if __name__ == "__main__":
    main()
