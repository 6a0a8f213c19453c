"""Training tasks on model zoos: predict a classifier's test accuracy from its weights
(``generalization``), classify digit INRs by their weights (``inr-classify``) and edit INRs by
predicting a weight delta (``inr-edit``).

* :mod:`.spec`: the tasks (target column, split column, loss, metrics);
* :mod:`.inr_edit`: the edits, running INRs in batches, the edit models;
* :mod:`.edit_plots`: the picture of edits;
* :mod:`.data`: a zoo as (graphs, targets, groups) and the split by group (training run / image);
* :mod:`.metrics`: Kendall tau, R^2, accuracy;
* :mod:`.models`: building a preset for a task;
* :mod:`.checkpoint`: atomic, tensors-only training checkpoints;
* :mod:`.distributed`: data-parallel setup under ``torchrun``;
* :mod:`.config`: :class:`TrainConfig`, every setting of a run (``wgraph train``'s options come from it);
* :mod:`.trainer`: :func:`train`, the loop (seeds, progress, checkpoints, resume, results JSON);
* :mod:`.cli`: ``wgraph train``.
"""

from .config import TrainConfig, TrainError
from .data import TaskData, split_groups, task_data
from .spec import TASKS, Task, TaskError, get_task
from .trainer import train

__all__ = [
    "TASKS", "Task", "TaskError", "get_task", "TaskData", "task_data", "split_groups", "TrainConfig", "TrainError",
    "train",
]
