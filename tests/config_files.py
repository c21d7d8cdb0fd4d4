"""Writing the INI files and secret files the tool reads, for unit and integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional


def write_secret(path: Path, data: bytes, mode: int = 0o600) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def write_ini(path: Path, settings: Mapping[str, Optional[Any]], mode: int = 0o600) -> str:
    """settings: {"section.key": value}; a None value leaves the key out."""
    sections: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        lines = sections.setdefault(section, [])
        if value is not None:
            lines.append(f"{key} = {value}")
    path.write_text("".join(f"[{name}]\n" + "".join(line + "\n" for line in lines) for name, lines in sections.items()))
    path.chmod(mode)
    return str(path)
