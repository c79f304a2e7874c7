"""Loading migration modules (Redis, Qdrant) from their files, with errors a user can act on."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from releasegate.db import first_line
from releasegate.errors import MigrationScriptError


def load_module(path: Path, module_name: str, what: str) -> ModuleType:
    """Import ``path`` as ``module_name``; ``what`` names it in errors ("redis migration")."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise MigrationScriptError(f"{what} {path.name} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise MigrationScriptError(
            f"{what} {path.name} has a syntax error at line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:
        raise MigrationScriptError(
            f"{what} {path.name} fails to load: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    return module
