"""Training: a synthesis run in, a LoRA adapter that behaves as if the prompt were there out.

One job per file:

* ``views.py``: each record as token ids with labels (behaviour, teacher, prompt generation);
* ``collator.py``: a batch's sequences packed into shared rows;
* ``trainer.py``: ``GenPIConfig`` and ``GenPITrainer`` (TRL's ``SFTConfig``/``SFTTrainer`` with the joint loss);
* ``plan.py``: how long a run trains (``--min-steps`` raises the default epochs) and whether it was too short;
* ``run.py``: ``train(TrainConfig)``, the run around them, as named steps (data, trainer arguments, model and tuner,
  trainer, save: output, precision, checkpoints, ``genpi.json``).
"""

from genpi.training.run import train, train_resumably

__all__ = ["train", "train_resumably"]
