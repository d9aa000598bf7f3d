"""Content digests: of files, and of the Python code under folders (what a run executed)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, or '' when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def code_digest(folders: list[Path] | list[str]) -> str:
    """sha256 over the .py files under `folders`, each named "<folder>/<relative path>"."""
    digest = hashlib.sha256()
    for root in map(Path, folders):
        paths = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in paths:
            name = root.name if path == root else f"{root.name}/{path.relative_to(root)}"
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
