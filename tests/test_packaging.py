"""What admins install beside the module: the example config, the cron file, the systemd units."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import jobbergate_sync

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_documents_every_key_with_its_default():
    text = (ROOT / "config.example.ini").read_text()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser.sections() == list(jobbergate_sync.CONFIG_SCHEMA)
    for section, settings in jobbergate_sync.CONFIG_SCHEMA.items():
        for key, setting in settings.items():
            if parser.has_option(section, key):
                value = parser.get(section, key)
                if not setting.required and key not in ("client_secret_file", "jwt_key_file"):
                    parsed = jobbergate_sync.parse_setting(section, key, value, setting.kind)
                    assert parsed == setting.default, f"[{section}] {key}: example {value!r} is not the default"
            else:
                assert re.search(rf"^#{key} =", text, re.M), f"[{section}] {key} is not in config.example.ini"


def test_cron_file_follows_debian_cron_d_rules():
    path = ROOT / "cron" / "jobbergate-sync"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", path.name)
    text = path.read_text()
    assert text.endswith("\n")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assignments = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z]+=", line))
    assert set(assignments) >= {"SHELL", "PATH", "MAILTO"}
    [job] = [line for line in lines if not re.match(r"^[A-Z]+=", line)]
    fields = job.split(None, 6)
    assert fields[:5] == ["*"] * 5 and fields[5] == "root"
    assert "/run/systemd/system" in fields[6]  # stands down where the timer runs
    assert "jobbergate-sync --once --quiet" in fields[6]


def test_service_and_timer_agree():
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str
    service.read(ROOT / "cron" / "jobbergate-sync.service")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["SuccessExitStatus"] == str(jobbergate_sync.EX_TEMPFAIL)
    assert service["Service"]["ExecStart"].endswith("jobbergate-sync --once")
    cron_line = (ROOT / "cron" / "jobbergate-sync").read_text()
    assert service["Service"]["ExecStart"].split()[0] in cron_line  # the same installed binary
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.optionxform = str
    timer.read(ROOT / "cron" / "jobbergate-sync.timer")
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path):
    for name in ("jobbergate-sync.service", "jobbergate-sync.timer"):
        text = (ROOT / "cron" / name).read_text().replace("/usr/local/bin/jobbergate-sync", "/bin/true")
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "jobbergate-sync.service", "jobbergate-sync.timer"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "jobbergate-sync" not in result.stderr, result.stderr  # no unknown keys or bad values
