"""Optuna storage URLs: checked when a search space loads, without connecting.

`search.storage_url` is any SQLAlchemy URL Optuna's RDB storage takes; null means
the `optuna.db` beside the sweep's `sweep.json` (sweeps/layout.py). SQLite is fine
for one driver on one machine; on a cluster with many concurrent trials, or
several sweeps sharing one database, use PostgreSQL
(`postgresql+psycopg://user:password@host:5432/db`, `pip install 'kdsweep[postgres]'`):
SQLite's file locking is not safe on network file systems.

Checking at load means parsing the URL, finding its dialect and importing its
driver: a typo or a missing driver is a one-line error before Ray starts, not a
traceback from inside the first trial.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import optuna
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, ProgrammingError

DIALECTS = ("sqlite", "postgresql", "mysql")
EXAMPLES = "e.g. sqlite:////abs/path/optuna.db or postgresql+psycopg://user:password@host:5432/db"
# How to get each driver module SQLAlchemy may ask for (psycopg 3 is the one kdsweep ships an extra for).
INSTALL = {"psycopg": "pip install 'kdsweep[postgres]'",
           "psycopg2": "use postgresql+psycopg://... with pip install 'kdsweep[postgres]' (or pip install psycopg2-binary)",
           "MySQLdb": "pip install mysqlclient (or use mysql+pymysql:// with pip install pymysql)"}


def storage_url_problem(url) -> str | None:
    """Why `url` cannot be an Optuna storage URL here, or None when it can (nothing is connected)."""
    if not isinstance(url, str) or not url:
        return f"got {url!r}, allowed: null (the sweep folder's optuna.db) or a database URL, {EXAMPLES}"
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        return f"{url!r} is not a database URL ({str(e).splitlines()[0]}); {EXAMPLES}"
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in DIALECTS:
        return f"{shown}: backend {parsed.get_backend_name()!r} is not supported; allowed: {', '.join(DIALECTS)}"
    try:
        dialect.import_dbapi()
    except ImportError as e:
        how = INSTALL.get(e.name, f"pip install {e.name}")
        return f"{shown} needs the Python driver {e.name!r}, which is not installed; {how}"
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return f"{shown}: an in-memory database is lost when the driver exits; name a file, {EXAMPLES}"
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            return f"{shown}: the database's folder {folder} does not exist"
    return None


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def display(url: str) -> str:
    """The URL as it may be printed: without its password."""
    parsed: URL = make_url(url)
    return parsed.render_as_string(hide_password=True)


@lru_cache(maxsize=8)
def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url`, one per URL and process.

    Two drivers that open a new, empty database at the same moment both create Optuna's
    tables; PostgreSQL lets one win and gives the other a unique violation (measured: two
    sweeps started together on a fresh database). The loser retries once the tables exist.
    Optuna's own log is kept to warnings (kdsweep's live view says what each trial did).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url)
