"""What the repository renders from the module: config.example.ini whole, and the marked blocks of
README.md (the exit codes) and docs/configuration.md (the settings). tests/test_packaging.py fails
when a file differs from its rendering; running this file rewrites them:

    .venv/bin/python tests/generated.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jobbergate_sync  # noqa: E402  (the checkout's module, even without an install)

BLOCK_RE = r"(<!-- generated: {name}; tests/generated.py rewrites it -->\n).*?(<!-- end of generated {name} -->)"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def exit_codes_markdown() -> str:
    rows = ["| code | after a pass | after `check` |", "|---|---|---|"]
    rows += [f"| {entry.code} | {cell(entry.after_pass) or '–'} | {cell(entry.after_check) or '–'} |"
             for entry in jobbergate_sync.EXIT_CODES]
    return "\n".join(rows) + "\n"


def settings_markdown() -> str:
    parts = []
    for section, settings in jobbergate_sync.CONFIG_SCHEMA.items():
        parts += [f"### [{section}]", "", "| key | default | what it does |", "|---|---|---|"]
        for key, setting in settings.items():
            if setting.required:
                default = "**required**"
            elif setting.default in ("", None):
                default = "empty"
            else:
                default = f"`{jobbergate_sync.setting_value_text(setting.default)}`"
            bounds = jobbergate_sync.setting_bounds_text(setting)
            meaning = setting.help + (f" {bounds[0].upper()}{bounds[1:]}." if bounds else "")
            parts.append(f"| `{key}` | {default} | {cell(meaning)} |")
        parts.append("")
    return "\n".join(parts)


def with_block(text: str, name: str, block: str) -> str:
    pattern = re.compile(BLOCK_RE.format(name=re.escape(name)), re.S)
    if not pattern.search(text):
        raise ValueError(f"no generated block {name!r}")
    return pattern.sub(lambda match: match.group(1) + block + match.group(2), text)


def renderings() -> dict[Path, str]:
    """Each generated file as it should read."""
    readme, configuration = ROOT / "README.md", ROOT / "docs" / "configuration.md"
    return {
        ROOT / "config.example.ini": jobbergate_sync.render_example_config(),
        readme: with_block(readme.read_text(), "exit codes", exit_codes_markdown()),
        configuration: with_block(configuration.read_text(), "settings", settings_markdown()),
    }


def main() -> None:
    for path, text in renderings().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"rewrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
