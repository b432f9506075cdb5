"""The keys of the MLflow tags (and Optuna user attributes) that sweep writes and reads: one spelling each.

A parent run carries the sweep's identity and what its table needs (metric, mode, searched parameters, budget);
a trial's run carries its Ray id, its ``tNN``, how it ended and where it ran. The role values (``parent``,
``trial``, ``rerun``) are in :mod:`sweep.store`, which queries by them.
"""

# every run of a sweep
ROLE = "sweep.role"
"""parent, trial or rerun (:data:`sweep.store.PARENT` …)."""
NAME = "sweep.name"
SPEC_HASH = "sweep.spec_hash"
SEED = "sweep.seed"
TRAINER = "sweep.trainer"
DATA_SPLIT_SEED = "sweep.data_split_seed"

# the parent run: what the table and status read back
METRIC = "sweep.metric"
"""The objectives' metric names, comma-separated (the first is the primary)."""
MODE = "sweep.mode"
SEARCHED = "sweep.searched"
TRIALS = "sweep.trials"
"""The budget's number of trials."""
MAX_EPOCHS = "sweep.max_epochs"
BEST_TRIAL = "sweep.best_trial"
BEST_RUN = "sweep.best_run"
PARETO = "sweep.pareto"

# a trial's run (and its Optuna trial's user attributes)
TRIAL_ID = "sweep.trial_id"
"""Ray Tune's id of the trial."""
TNN = "sweep.trial"
"""``tNN``: the Optuna trial's number + 1, the trial's name on every surface."""
STATE = "sweep.state"
"""completed, stopped_early, diverged, errored, interrupted (see :func:`sweep.records.end_state`)."""
STOP_REASON = "sweep.stop_reason"
ERROR = "sweep.error"
EPOCHS_RUN = "sweep.epochs_run"
EPOCHS_PLANNED = "sweep.epochs_planned"
RETRIES = "sweep.retries"
LAST_FAILURE = "sweep.last_failure"
RESUMED_AFTER = "sweep.resumed_after_epoch"
NODE_ID = "sweep.node_id"
"""The Ray node the trial last ran on."""
NODES = "sweep.nodes"
"""Every node it ran on, in order, where it moved."""
HOST = "sweep.host"
ORPHANED = "sweep.orphaned"
"""An Optuna trial a killed driver asked for that Ray never saved."""

# the registered model
MODEL_URI = "sweep.model_uri"
RUN_ID = "sweep.run_id"
