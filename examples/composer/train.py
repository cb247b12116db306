"""A tiny Composer training run on the CPU: a two-layer classifier on synthetic data, checkpointed
every epoch and resumed by itself (``autoresume``) when a run is restarted.

Inside a runplane run, ``RUN_NAME`` names the Composer run, so a restart (``mcli run -r``) finds
the checkpoints its earlier attempt left under ``SAVE_ROOT/<run name>``. With
``MOSAICML_PLATFORM=true`` and ``MOSAICML_ACCESS_TOKEN_FILE`` in the environment, Composer adds
its ``MosaicMLLogger`` by itself and reports ``mosaicml/training_progress`` to the run's metadata.

Settings (environment): ``RUN_NAME`` (required), ``SAVE_ROOT`` (default
``/tmp/runplane-composer``), ``EPOCHS`` (10), ``EPOCH_SECONDS`` (0: a pause after each epoch, to
leave time to stop the run part way).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch
from composer import Callback, Event, Logger, State, Trainer
from composer.models import ComposerClassifier
from torch.utils.data import DataLoader, TensorDataset

SAMPLES, FEATURES, CLASSES, BATCH = 256, 8, 2, 32


class Pause(Callback):
    """Sleeps after each epoch, so that a stop can land between two checkpoints."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.EPOCH_END and self.seconds > 0:
            time.sleep(self.seconds)


def dataset(seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    targets = (inputs.sum(dim=1) > 0).long()  # learnable: the sign of the sum
    return TensorDataset(inputs, targets)


def main() -> None:
    run_name = os.environ["RUN_NAME"]
    save_root = os.environ.get("SAVE_ROOT") or os.path.join(
        tempfile.gettempdir(), "runplane-composer"
    )
    epochs = int(os.environ.get("EPOCHS", "10"))
    pause = float(os.environ.get("EPOCH_SECONDS", "0"))

    module = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES)
    )
    trainer = Trainer(
        model=ComposerClassifier(module, num_classes=CLASSES),
        train_dataloader=DataLoader(dataset(), batch_size=BATCH, shuffle=True),
        max_duration=f"{epochs}ep",
        optimizers=torch.optim.SGD(module.parameters(), lr=0.1),
        device="cpu",
        run_name=run_name,
        save_folder=os.path.join(save_root, "{run_name}"),
        save_interval="1ep",
        save_num_checkpoints_to_keep=2,
        autoresume=True,
        callbacks=[Pause(pause)],
        progress_bar=False,
        log_to_console=True,
        console_log_interval="1ep",
        seed=17,
    )
    sys.stdout.write(f"{run_name}: starting at epoch {int(trainer.state.timestamp.epoch)}\n")
    trainer.fit()
    sys.stdout.write(f"{run_name}: finished at epoch {int(trainer.state.timestamp.epoch)}\n")
    trainer.close()


if __name__ == "__main__":
    main()
