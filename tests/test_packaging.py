"""What admins install beside the module: the example config, the cron file, the systemd units."""

from __future__ import annotations

import configparser
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import generated
import jobbergate_sync

ROOT = Path(__file__).resolve().parent.parent


def test_generated_files_match_their_rendering():
    for path, text in generated.renderings().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} differs from its rendering: run .venv/bin/python tests/generated.py"


def test_the_rendered_example_shows_defaults_marks_required_keys_and_comments_out_the_rest():
    text = jobbergate_sync.render_example_config()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser.sections() == list(jobbergate_sync.CONFIG_SCHEMA)
    for section, settings in jobbergate_sync.CONFIG_SCHEMA.items():
        for key, setting in settings.items():
            if setting.required or setting.example_set:
                lines = text.splitlines()
                at = lines.index(f"{key} = {setting.example}")
                comment = " ".join(lines[start][2:] for start in range(at - 1, 0, -1)
                                   if all(line.startswith("# ") for line in lines[start:at]))
                assert "Required" in comment, f"[{section}] {key} is not marked required"
                assert parser.get(section, key) == setting.example
            elif setting.default in ("", None):
                assert not parser.has_option(section, key), f"[{section}] {key} has no default: commented out"
                assert re.search(rf"^#{key} =", text, re.M), f"[{section}] {key} is not in the example"
            else:
                value = jobbergate_sync.parse_setting(section, key, parser.get(section, key), setting.kind)
                assert value == setting.default, f"[{section}] {key}: example {value!r} is not the default"


def test_every_setting_is_documented():
    for section, settings in jobbergate_sync.CONFIG_SCHEMA.items():
        for key, setting in settings.items():
            assert setting.help.endswith("."), f"[{section}] {key} has no help sentence"
            assert not setting.required or setting.example, f"[{section}] {key} is required and has no example"


def test_the_readme_and_both_helps_give_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    for entry in jobbergate_sync.EXIT_CODES:
        assert f"| {entry.code} |" in readme
        for command, meaning in (("pass", entry.after_pass), ("check", entry.after_check)):
            help_text = " ".join(jobbergate_sync.exit_codes_help(command).split())
            assert (f" {entry.code} {' '.join(meaning.split())}" in help_text) is bool(meaning), (command, entry.code)


CRON_FIELDS = ((0, 59, {}), (0, 23, {}), (1, 31, {}),
               (1, 12, {name: n for n, name in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}),
               (0, 7, {name: n for n, name in enumerate("sun mon tue wed thu fri sat".split())}))


def cron_field_is_valid(field: str, low: int, high: int, names: dict) -> bool:
    """One field of a crontab schedule as cron(8) reads it: *, numbers, names, ranges, lists, steps."""
    def value(text: str) -> int:
        number = names.get(text.lower(), int(text) if text.isdigit() else None)
        if number is None or not low <= number <= high:
            raise ValueError(text)
        return number

    try:
        for part in field.split(","):
            span, _, step = part.partition("/")
            if step and int(step) < 1:
                return False
            if span != "*":
                first, _, last = span.partition("-")
                if last and value(first) > value(last):
                    return False
                value(first)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize(("schedule", "valid"), [("* * * * *", True), ("*/5 0-23 1,15 jan-dec mon-fri", True),
                                                 ("60 * * * *", False), ("* * * * 8", False), ("*/0 * * * *", False),
                                                 ("5-1 * * * *", False), ("x * * * *", False)])
def test_the_cron_schedule_check_itself(schedule, valid):
    assert all(cron_field_is_valid(f, *spec) for f, spec in zip(schedule.split(), CRON_FIELDS)) is valid


def test_cron_file_follows_debian_cron_d_rules():
    path = ROOT / "cron" / "jobbergate-sync"
    # Debian's cron reads only /etc/cron.d files named with letters, digits, "_" and "-".
    assert re.fullmatch(r"[A-Za-z0-9_-]+", path.name)
    text = path.read_text()
    assert text.endswith("\n")  # cron ignores an unterminated last line
    # cron ignores a cron.d file that group or others can write: the documented install gives 0644 root.
    install = re.search(r"install -m (0?[0-7]{3}) -o root -g root cron/jobbergate-sync /etc/cron\.d/jobbergate-sync", text)
    assert install and int(install.group(1), 8) & 0o022 == 0
    assert "install -m 0644 -o root -g root cron/jobbergate-sync /etc/cron.d/jobbergate-sync" in (ROOT / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assignments = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z]+=", line))
    assert set(assignments) >= {"SHELL", "PATH", "MAILTO"}
    [job] = [line for line in lines if not re.match(r"^[A-Z]+=", line)]
    fields = job.split(None, 6)
    assert len(fields) == 7  # five schedule fields, the user, the command
    assert all(cron_field_is_valid(field, *spec) for field, spec in zip(fields[:5], CRON_FIELDS)), fields[:5]
    assert fields[:5] == ["*"] * 5
    assert fields[5] == "root"
    pwd.getpwnam(fields[5])  # the user field names an account that exists
    assert re.search(r"(?<!\\)%", fields[6]) is None  # cron turns an unescaped % into a newline
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


def systemd_verify(tmp_path: Path, extra_service_line: str = "") -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on copies of the units. verify fails when ExecStart's program does
    not exist, and the tool is not installed at /usr/local/bin where the tests run, so the copies
    start /bin/true instead; everything else is checked as shipped."""
    for name in ("jobbergate-sync.service", "jobbergate-sync.timer"):
        text = (ROOT / "cron" / name).read_text().replace("/usr/local/bin/jobbergate-sync", "/bin/true")
        if name.endswith(".service"):
            text += extra_service_line
        (tmp_path / name).write_text(text)
    return subprocess.run(["systemd-analyze", "verify", "jobbergate-sync.service", "jobbergate-sync.timer"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


SYSTEMD_ANALYZE = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                     reason="systemd-analyze is not installed (tests/run-all.sh installs systemd)")


@SYSTEMD_ANALYZE
def test_systemd_accepts_the_units(tmp_path):
    result = systemd_verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "jobbergate-sync" not in result.stderr, result.stderr  # no unknown keys or bad values


@SYSTEMD_ANALYZE
def test_systemd_verify_would_catch_a_bad_key(tmp_path):
    result = systemd_verify(tmp_path, "RestartSecs=5\n")
    assert "Unknown key 'RestartSecs'" in result.stderr


def logrotate_debug(conf: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["logrotate", "--debug", "--force", "--state", str(tmp_path / "state"), str(conf)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed (tests/run-all.sh installs it)")
def test_logrotate_accepts_its_file_for_the_example_log_path(tmp_path):
    text = (ROOT / "cron" / "jobbergate-sync.logrotate").read_text()
    example_log = re.search(r"^#file = (\S+)$", (ROOT / "config.example.ini").read_text(), re.M).group(1)
    assert f"{example_log} {{" in text  # rotates the file the example configures
    directives = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert "copytruncate" not in directives  # the tool reopens a moved file: "create" rotation
    # logrotate refuses a configuration that group or others can write; and the rotation is tried on a
    # log file under tmp_path, so the debug run has a real file to plan for.
    log_file = tmp_path / "jobbergate-sync.log"
    log_file.write_text("a line\n")
    conf = tmp_path / "jobbergate-sync"
    conf.write_text(text.replace(example_log, str(log_file)))
    conf.chmod(0o644)
    result = logrotate_debug(conf, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert f"considering log {log_file}" in output and "log needs rotating" in output
    assert log_file.read_text() == "a line\n"  # --debug changes nothing


def test_logrotate_file_is_a_valid_logrotate_d_name():
    # logrotate skips files in /etc/logrotate.d whose name ends in a taboo extension; the install
    # line drops ".logrotate".
    text = (ROOT / "cron" / "jobbergate-sync.logrotate").read_text()
    assert "cron/jobbergate-sync.logrotate /etc/logrotate.d/jobbergate-sync" in text
    assert text.endswith("}\n")


def test_the_reliability_doc_names_every_crash_point():
    text = (ROOT / "docs" / "reliability.md").read_text()
    assert all(f"`{point.value}`" in text for point in jobbergate_sync.CrashPoint)


def test_the_readme_opens_with_the_try_out_and_the_whole_suite():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block == ["bash tests/integration/try-it.sh up && bash tests/integration/try-it.sh run",
                           "bash tests/run-all.sh"]
    assert (ROOT / "tests" / "integration" / "try-it.sh").is_file() and (ROOT / "tests" / "run-all.sh").is_file()
    assert text.index("```sh") < text.index("## Installing on a head node")
    assert len(text.encode()) <= 20 * 1024  # the admin's path; the rest lives in docs/
