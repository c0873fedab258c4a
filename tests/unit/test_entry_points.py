"""Entry points (issue 12): every error drivestream raises on purpose is a DrivestreamError,
listed in the one tree in schemas/errors.py (what `drivestream <verb>` turns into one line
and an exit code), and a verb's logging flags take effect."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import schemas.errors
from schemas.errors import DrivestreamError

PACKAGES = ("schemas", "ingest", "trainer", "inference", "pipeline")


def our_exception_classes() -> list[type[BaseException]]:
    found = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == info.name:
                    found.append(cls)
    return found


def test_every_error_class_is_a_drivestream_error_in_the_documented_tree():
    classes = our_exception_classes()
    assert {"CheckpointError", "ExportError", "ProduceError", "ModelRejected"} <= {
        c.__name__ for c in classes
    }
    strays = [
        f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, DrivestreamError)
    ]
    assert strays == []
    tree = schemas.errors.__doc__ or ""
    undocumented = [c.__name__ for c in classes if c.__name__ not in tree]
    assert undocumented == []


def test_serve_log_level_takes_effect_under_the_drivestream_command(monkeypatch):
    """`drivestream` configures logging first; serve's --log-level must still apply."""
    import logging

    from inference.service import InferenceService
    from pipeline.cli import main

    monkeypatch.setattr(InferenceService, "run", lambda self: None)
    root = logging.getLogger()
    before = root.level
    try:
        assert main(["serve", "--log-level", "ERROR", "--allow-unsigned"]) == 0
        assert root.level == logging.ERROR  # before: INFO, the flag had no effect
    finally:
        root.setLevel(before)
