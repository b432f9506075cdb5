"""sweep: hyperparameter sweeps for transfer learning in computer vision.

The library is usable without the CLI::

    from sweep import load_spec, run_sweep, load_table
"""

from sweep.errors import SpecError, SweepError
from sweep.spec import Spec, load_spec, parse_spec

__all__ = ["Spec", "SpecError", "SweepError", "load_spec", "load_table", "parse_spec", "run_sweep"]


def __getattr__(name: str) -> object:
    # Ray and MLflow are imported only when a sweep runs or is read, not to validate a spec.
    if name == "run_sweep":
        from sweep.runner import run_sweep

        return run_sweep
    if name == "load_table":
        from sweep.export import load_table

        return load_table
    raise AttributeError(name)
