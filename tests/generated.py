"""What the repository renders from one source: config.example.ini whole, and the marked blocks of
README.md (the exit codes, the job-metrics figures) and docs/configuration.md (the settings), from
the module; docs/job-metrics.md's figures from the saved output of bench/metrics_benchmark.py
(METRICS_FIGURES). tests/test_packaging.py fails when a file differs from its rendering; running
this file rewrites them:

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
# bench/metrics_benchmark.py --upstream's output, as it printed it (header, table, notes)
METRICS_FIGURES = ROOT / "docs" / "figures" / "metrics-benchmark.txt"


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


def metrics_figures_markdown() -> str:
    """The README's summary of METRICS_FIGURES: its header, then jobbergate-sync beside the upstream
    agent for each pass."""
    lines = METRICS_FIGURES.read_text().splitlines()
    rows = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 14 and fields[3] in ("sync", "upstream") and fields[0].isdigit():
            rows[(fields[0], fields[1], fields[3])] = fields
    header = [line[2:] for line in lines if line.startswith("# ") and not line.startswith("# upstream:")]
    table = ["| jobs | pass | InfluxDB requests | pass s | metrics phase s | ratio, pass (phase) | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for (jobs, kind, tool), sync in rows.items():
        upstream = rows.get((jobs, kind, "upstream"))
        if tool != "sync" or upstream is None:
            continue
        table.append(f"| {int(jobs):,} | {kind} | {int(sync[4]):,} / {int(upstream[4]):,} | {sync[11]} / {upstream[11]} "
                     f"| {sync[12]} / {upstream[12]} | {sync[14]} ({sync[15]}) | {sync[13]} / {upstream[13]} |")
    return "\n".join(["```", *header, "```", "", *table]) + "\n"


def metrics_figures_block() -> str:
    return "```\n" + METRICS_FIGURES.read_text() + "```\n"


def with_block(text: str, name: str, block: str) -> str:
    pattern = re.compile(BLOCK_RE.format(name=re.escape(name)), re.S)
    if not pattern.search(text):
        raise ValueError(f"no generated block {name!r}")
    return pattern.sub(lambda match: match.group(1) + block + match.group(2), text)


def renderings() -> dict[Path, str]:
    """Each generated file as it should read."""
    readme, configuration = ROOT / "README.md", ROOT / "docs" / "configuration.md"
    job_metrics = ROOT / "docs" / "job-metrics.md"
    readme_text = with_block(readme.read_text(), "exit codes", exit_codes_markdown())
    return {
        ROOT / "config.example.ini": jobbergate_sync.render_example_config(),
        readme: with_block(readme_text, "job-metrics figures", metrics_figures_markdown()),
        configuration: with_block(configuration.read_text(), "settings", settings_markdown()),
        job_metrics: with_block(job_metrics.read_text(), "job-metrics figures", metrics_figures_block()),
    }


def main() -> None:
    for path, text in renderings().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"rewrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
