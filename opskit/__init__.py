"""opskit: denormalize a PostgreSQL + Redis web backend and prove the speed-up."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opskit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
