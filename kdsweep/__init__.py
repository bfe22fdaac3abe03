"""kdsweep: the command line on top of `distill` (one run), `sweeps` (Ray Tune + Optuna) and `analysis`.

Nothing below imports this package: the CLI sits above every layer.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdsweep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
