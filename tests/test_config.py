"""load_config / validate_config: defaults, environment overrides, strictness and secret files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

import jobbergate_sync
from config_files import write_ini, write_secret
from fakes import JWT_KEY
from jobbergate_sync import ConfigError, load_config

EXAMPLE_INI = Path(__file__).resolve().parent.parent / "config.example.ini"

CLIENT_SECRET = "client-secret-from-file-42"


@pytest.fixture(autouse=True)
def _no_credentials_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # read_secret_file consults os.environ; keep the caller's environment out of these tests.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


@pytest.fixture
def minimal(tmp_path: Path) -> Dict[str, Optional[Any]]:
    """The smallest valid configuration: the required keys plus one secret of each kind."""
    return {
        "jobbergate.api_url": "https://jobbergate.example.com/jobbergate",
        "oidc.issuer": "https://keycloak.example.com/realms/jobbergate",
        "oidc.client_id": "my-cluster",
        "oidc.client_secret_file": write_secret(tmp_path / "client_secret", CLIENT_SECRET.encode() + b"\n"),
        "slurmrestd.jwt_key_file": write_secret(tmp_path / "jwt.key", JWT_KEY),
        "mapper.domains": "example.com",  # required by the default mapper
    }


@pytest.fixture
def load(tmp_path: Path, minimal: Dict[str, Optional[Any]]):
    """load(**overrides, environ=..., mode=...): write the minimal INI with overrides and load it."""

    def _load(environ: Optional[Dict[str, str]] = None, mode: int = 0o600, **overrides: Any) -> jobbergate_sync.Config:
        settings = dict(minimal)
        settings.update({key.replace("__", "."): value for key, value in overrides.items()})
        path = write_ini(tmp_path / "jobbergate-sync.ini", settings, mode)
        return load_config(path, environ or {})

    return _load


# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------

EXPECTED_DEFAULTS = {
    ("jobbergate", "timeout"): 15.0,
    ("jobbergate", "page_size"): 100,
    ("jobbergate", "max_pages"): 50,
    ("oidc", "client_secret"): "",
    ("oidc", "token_margin"): 60,
    ("oidc", "timeout"): 10.0,
    ("slurmrestd", "url"): "http://127.0.0.1:6820",
    ("slurmrestd", "api_version"): "auto",
    ("slurmrestd", "token_file"): "",
    ("slurmrestd", "token_lifespan"): 600,
    ("slurmrestd", "query_user"): "slurm",
    ("slurmrestd", "slurmdbd"): "auto",
    ("slurmrestd", "purge_horizon"): 300,
    ("slurmrestd", "query_url_bytes"): 65536,
    ("slurmrestd", "timeout"): 15.0,
    ("submit", "execution_directory"): "/home/{username}",
    ("submit", "write_files"): True,
    ("submit", "max_file_size"): 10 * 1024 * 1024,
    ("submit", "max_total_size"): 64 * 1024 * 1024,
    ("submit", "file_mode"): "0600",
    ("submit", "replace_files"): False,
    ("submit", "job_path"): "/usr/local/bin:/usr/bin:/bin",
    ("mapper", "type"): "email-local-part",
    ("mapper", "user"): "",
    ("mapper", "map_file"): "",
    ("mapper", "min_uid"): 1000,
    ("mapper", "ldap_url"): "",
    ("mapper", "ldap_starttls"): False,
    ("mapper", "ldap_ca_file"): "",
    ("mapper", "ldap_bind_dn"): "",
    ("mapper", "ldap_password_file"): "",
    ("mapper", "ldap_base_dn"): "",
    ("mapper", "ldap_filter"): "(mail={email})",
    ("mapper", "ldap_attribute"): "uid",
    ("mapper", "ldap_timeout"): 5.0,
    ("mapper", "ldap_cache_ttl"): 900,
    ("run", "state_dir"): "/var/lib/jobbergate-sync",
    ("run", "lock_file"): "/run/jobbergate-sync/lock",
    ("run", "interval"): 90,
    ("run", "deadline"): 50,
    ("run", "submit_share"): 0.6,
    ("run", "retries"): 3,
    ("run", "backoff"): 1.0,
    ("run", "resend_after"): 3600,
    ("run", "workers"): 4,
    ("run", "role"): "auto",
    ("run", "host_names"): "",
    ("slurm", "backend"): "slurmrestd",
    ("slurm", "sbatch"): "/usr/bin/sbatch",
    ("slurm", "squeue"): "/usr/bin/squeue",
    ("slurm", "sacct"): "/usr/bin/sacct",
    ("slurm", "scancel"): "/usr/bin/scancel",
    ("slurm", "sdiag"): "/usr/bin/sdiag",
    ("slurm", "scontrol"): "/usr/bin/scontrol",
    ("slurm", "slurmdbd"): True,
    ("slurm", "purge_horizon"): 300,
    ("slurm", "timeout"): 30.0,
    ("logging", "format"): "auto",
    ("logging", "level"): "info",
    ("logging", "file"): "",
    ("metrics", "textfile"): "",
    ("metrics", "ping_url"): "",
    ("metrics", "ping_timeout"): 5.0,
    ("influxdb", "url"): "",
    ("influxdb", "database"): "slurm",
    ("influxdb", "retention_policy"): "",
    ("influxdb", "user"): "",
    ("influxdb", "password_file"): "",
    ("influxdb", "ca_file"): "",
    ("influxdb", "verify"): True,
    ("influxdb", "timeout"): 10.0,
}


@pytest.mark.parametrize(("section", "key"), sorted(EXPECTED_DEFAULTS), ids=lambda v: str(v))
def test_default_value_of_every_optional_key(load, section: str, key: str) -> None:
    config = load()
    value = getattr(getattr(config, section), key)
    expected = EXPECTED_DEFAULTS[(section, key)]
    assert value == expected
    assert type(value) is type(expected)


def test_defaults_table_covers_every_key_of_the_schema(minimal) -> None:
    given = {tuple(dotted.split(".")) for dotted in minimal}
    schema = {(section, key) for section, keys in jobbergate_sync.CONFIG_SCHEMA.items() for key in keys}
    assert schema == set(EXPECTED_DEFAULTS) | given


def test_minimal_config_keeps_given_values_and_reads_secrets(load, minimal) -> None:
    config = load()
    assert config.jobbergate.api_url == minimal["jobbergate.api_url"]
    assert config.oidc.issuer == minimal["oidc.issuer"]
    assert config.oidc.client_id == "my-cluster"
    assert config.client_secret == CLIENT_SECRET  # trailing newline of the file stripped
    assert config.slurm_jwt_key == JWT_KEY
    assert config.slurm_static_token is None


def test_unknown_section_attribute_is_an_attribute_error(load) -> None:
    config = load()
    with pytest.raises(AttributeError):
        config.nosuchsection  # noqa: B018


# ---------------------------------------------------------------------------------------------
# Required keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dotted", ["jobbergate.api_url", "oidc.issuer", "oidc.client_id"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_required_key_missing_or_empty(load, dotted: str, how: str) -> None:
    section, key = dotted.split(".")
    value = None if how == "missing" else "   "
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key} is required"):
        load(**{dotted.replace(".", "__"): value})


def test_required_key_given_by_environment_only(load) -> None:
    config = load(jobbergate__api_url=None, environ={"JOBBERGATE_SYNC_JOBBERGATE_API_URL": "http://api.test/jobbergate"})
    assert config.jobbergate.api_url == "http://api.test/jobbergate"


def test_required_key_emptied_by_environment_is_refused(load) -> None:
    with pytest.raises(ConfigError, match=r"\[oidc\] client_id is required"):
        load(environ={"JOBBERGATE_SYNC_OIDC_CLIENT_ID": ""})


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError, match=re.escape(f"configuration file {path} does not exist")):
        load_config(str(path), {})


def test_syntax_error_in_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.ini"
    path.write_text("api_url = http://x\n")  # a key before any section header
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(str(path), {})


# ---------------------------------------------------------------------------------------------
# Environment overrides
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "section", "key", "expected"),
    [
        ("JOBBERGATE_SYNC_RUN_DEADLINE", "40", "run", "deadline", 40),
        ("JOBBERGATE_SYNC_RUN_LOCK_FILE", "/tmp/x.lock", "run", "lock_file", "/tmp/x.lock"),
        ("JOBBERGATE_SYNC_RUN_BACKOFF", "0.25", "run", "backoff", 0.25),
        ("JOBBERGATE_SYNC_RUN_RESEND_AFTER", "60", "run", "resend_after", 60),
        ("JOBBERGATE_SYNC_JOBBERGATE_PAGE_SIZE", "25", "jobbergate", "page_size", 25),
        ("JOBBERGATE_SYNC_OIDC_TOKEN_MARGIN", "30", "oidc", "token_margin", 30),
        ("JOBBERGATE_SYNC_SLURMRESTD_API_VERSION", "v0.0.41", "slurmrestd", "api_version", "v0.0.41"),
        ("JOBBERGATE_SYNC_SLURMRESTD_SLURMDBD", "yes", "slurmrestd", "slurmdbd", True),
        ("JOBBERGATE_SYNC_SLURMRESTD_QUERY_USER", "root", "slurmrestd", "query_user", "root"),
        ("JOBBERGATE_SYNC_SUBMIT_WRITE_FILES", "off", "submit", "write_files", False),
        ("JOBBERGATE_SYNC_SUBMIT_MAX_FILE_SIZE", "1024", "submit", "max_file_size", 1024),
        ("JOBBERGATE_SYNC_MAPPER_MIN_UID", "500", "mapper", "min_uid", 500),
        ("JOBBERGATE_SYNC_LOGGING_FORMAT", "text", "logging", "format", "text"),
        ("JOBBERGATE_SYNC_LOGGING_LEVEL", "debug", "logging", "level", "debug"),
    ],
)
def test_environment_overrides_a_default(load, variable, value, section, key, expected) -> None:
    config = load(environ={variable: value})
    assert getattr(getattr(config, section), key) == expected


def test_environment_values_are_stripped(load) -> None:
    config = load(environ={"JOBBERGATE_SYNC_SLURMRESTD_API_VERSION": " v0.0.40 ", "JOBBERGATE_SYNC_RUN_RETRIES": " 5\n"})
    assert config.slurmrestd.api_version == "v0.0.40"
    assert config.run.retries == 5


def test_environment_wins_over_the_file(load) -> None:
    config = load(run__deadline=30, jobbergate__api_url="http://from-file/jobbergate",
                  environ={"JOBBERGATE_SYNC_RUN_DEADLINE": "45",
                           "JOBBERGATE_SYNC_JOBBERGATE_API_URL": "http://from-env/jobbergate"})
    assert config.run.deadline == 45
    assert config.jobbergate.api_url == "http://from-env/jobbergate"


def test_file_value_kept_without_environment_override(load) -> None:
    config = load(run__deadline=30)
    assert config.run.deadline == 30


def test_non_setting_variables_are_ignored(load) -> None:
    config = load(environ={
        "JOBBERGATE_SYNC_CONFIG": "/somewhere/else.ini",  # the --config variable, not a setting
        "JOBBERGATE_SYNC_CRASH_AT": "",  # test-only fault injection
        "JOBBERGATE_AGENT_X": "1",
        "PATH": "/bin",
        "jobbergate_sync_run_deadline": "1",  # the prefix is case-sensitive
    })
    assert config.run.deadline == 50


@pytest.mark.parametrize(
    "variable",
    ["JOBBERGATE_SYNC_RUN_BOGUS", "JOBBERGATE_SYNC_NOSECTION_KEY", "JOBBERGATE_SYNC_RUN",
     "JOBBERGATE_SYNC_RUN_DEADLINES", "JOBBERGATE_SYNC_JOBBERGATE_URL"],
)
def test_unknown_environment_variable_is_named(load, variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"environment variable {variable} names no setting"):
        load(environ={variable: "1"})


# ---------------------------------------------------------------------------------------------
# Unknown sections and keys; bad values
# ---------------------------------------------------------------------------------------------


def test_unknown_section_is_named(load) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[monitoring\]"):
        load(**{"monitoring__url": "http://x"})


@pytest.mark.parametrize(("dotted", "key"), [("run.deadlne", "deadlne"), ("run.api_url", "api_url"),
                                             ("oidc.secret", "secret"), ("logging.levels", "levels")])
def test_unknown_key_is_named_with_its_section(load, dotted: str, key: str) -> None:
    section = dotted.split(".")[0]
    with pytest.raises(ConfigError, match=rf"unknown key '{key}' in \[{section}\]"):
        load(**{dotted.replace(".", "__"): "1"})


def test_unknown_key_error_names_the_file(load, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "jobbergate-sync.ini"))):
        load(run__bogus="1")


@pytest.mark.parametrize(
    ("dotted", "value", "kind"),
    [
        ("run.deadline", "fifty", "int"),
        ("run.deadline", "5.5", "int"),
        ("jobbergate.page_size", "", "int"),
        ("mapper.min_uid", "1k", "int"),
        ("jobbergate.timeout", "soon", "float"),
        ("run.backoff", "1,5", "float"),
        ("slurmrestd.slurmdbd", "maybe", "bool"),
        ("submit.write_files", "2", "bool"),
    ],
)
@pytest.mark.parametrize("source", ["file", "environment"])
def test_bad_typed_value_is_named(load, dotted: str, value: str, kind: str, source: str) -> None:
    section, key = dotted.split(".")
    expected = rf"\[{section}\] {key} = {re.escape(repr(value))}: not a valid {kind}"
    with pytest.raises(ConfigError, match=expected):
        if source == "file":
            load(**{dotted.replace(".", "__"): value})
        else:
            load(environ={f"JOBBERGATE_SYNC_{section.upper()}_{key.upper()}": value})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("ON", True), (" true ", True),
     ("0", False), ("false", False), ("no", False), ("Off", False)],
)
def test_bool_spellings(load, text: str, expected: bool) -> None:
    assert load(slurmrestd__slurmdbd=text).slurmrestd.slurmdbd is expected


@pytest.mark.parametrize("text", ["auto", "AUTO", " auto "])
def test_slurmdbd_and_api_version_may_be_auto(load, text: str) -> None:
    config = load(slurmrestd__slurmdbd=text, slurmrestd__api_version="auto")
    assert (config.slurmrestd.slurmdbd, config.slurmrestd.api_version) == ("auto", "auto")


# ---------------------------------------------------------------------------------------------
# Exactly one of ...
# ---------------------------------------------------------------------------------------------


def test_client_secret_and_client_secret_file_together_refused(load) -> None:
    with pytest.raises(ConfigError, match=r"\[oidc\] set exactly one of client_secret and client_secret_file"):
        load(oidc__client_secret="inline-secret")


def test_neither_client_secret_nor_file_refused(load) -> None:
    with pytest.raises(ConfigError, match=r"\[oidc\] set exactly one of client_secret and client_secret_file"):
        load(oidc__client_secret_file=None)


def test_inline_client_secret_in_private_file_accepted(load) -> None:
    config = load(oidc__client_secret_file=None, oidc__client_secret="inline-secret-99", mode=0o600)
    assert config.client_secret == "inline-secret-99"


def test_jwt_key_file_and_token_file_together_refused(load, tmp_path: Path) -> None:
    token = write_secret(tmp_path / "token", b"SLURM_JWT=abc")
    with pytest.raises(ConfigError, match=r"\[slurmrestd\] set exactly one of jwt_key_file and token_file"):
        load(slurmrestd__token_file=token)


def test_neither_jwt_key_file_nor_token_file_refused(load) -> None:
    with pytest.raises(ConfigError, match=r"\[slurmrestd\] set exactly one of jwt_key_file and token_file"):
        load(slurmrestd__jwt_key_file=None)


# ---------------------------------------------------------------------------------------------
# Secret files
# ---------------------------------------------------------------------------------------------

SECRET_KEYS = ["oidc.client_secret_file", "slurmrestd.jwt_key_file", "slurmrestd.token_file"]


def _secret_override(tmp_path: Path, dotted: str, mode: int, data: bytes = b"secret-content-123") -> Dict[str, Any]:
    path = write_secret(tmp_path / f"secret-{dotted.split('.')[1]}", data, mode)
    overrides: Dict[str, Any] = {dotted.replace(".", "__"): path}
    if dotted == "slurmrestd.token_file":
        overrides["slurmrestd__jwt_key_file"] = None
    return overrides


@pytest.mark.parametrize("dotted", SECRET_KEYS)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o620])
def test_secret_file_open_to_group_or_others_refused(load, tmp_path: Path, dotted: str, mode: int) -> None:
    overrides = _secret_override(tmp_path, dotted, mode)
    path = overrides[dotted.replace(".", "__")]
    section, key = dotted.split(".")
    with pytest.raises(ConfigError) as info:
        load(**overrides)
    message = str(info.value)
    assert f"[{section}] {key} {path}" in message
    assert f"mode {mode:04o}" in message
    assert "chmod 0600" in message


@pytest.mark.parametrize("dotted", SECRET_KEYS)
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_secret_file_accepted(load, tmp_path: Path, dotted: str, mode: int) -> None:
    config = load(**_secret_override(tmp_path, dotted, mode))
    if dotted == "oidc.client_secret_file":
        assert config.client_secret == "secret-content-123"
    elif dotted == "slurmrestd.jwt_key_file":
        assert config.slurm_jwt_key == b"secret-content-123"
    else:
        assert config.slurm_static_token == "secret-content-123"


@pytest.mark.parametrize("dotted", SECRET_KEYS)
def test_missing_secret_file_named(load, tmp_path: Path, dotted: str) -> None:
    overrides = _secret_override(tmp_path, dotted, 0o600)
    missing = str(tmp_path / "does-not-exist")
    overrides[dotted.replace(".", "__")] = missing
    section, key = dotted.split(".")
    with pytest.raises(ConfigError, match=re.escape(f"[{section}] {key} {missing}: cannot open")):
        load(**overrides)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_inline_client_secret_in_readable_ini_refused(load, tmp_path: Path, mode: int) -> None:
    ini = tmp_path / "jobbergate-sync.ini"
    with pytest.raises(ConfigError) as info:
        load(oidc__client_secret_file=None, oidc__client_secret="inline-secret-99", mode=mode)
    message = str(info.value)
    assert str(ini) in message
    assert "client_secret" in message
    assert f"mode {mode:04o}" in message


def test_readable_ini_without_inline_secret_accepted(load) -> None:
    config = load(mode=0o644)
    assert config.client_secret == CLIENT_SECRET


def test_empty_jwt_key_file_refused(load, tmp_path: Path) -> None:
    path = write_secret(tmp_path / "empty.key", b"")
    with pytest.raises(ConfigError, match=re.escape(f"[slurmrestd] jwt_key_file {path} is empty")):
        load(slurmrestd__jwt_key_file=path)


def test_jwt_key_bytes_are_used_verbatim(load, tmp_path: Path) -> None:
    raw = b"\x00\xffkey with trailing newline\n"
    path = write_secret(tmp_path / "raw.key", raw)
    assert load(slurmrestd__jwt_key_file=path).slurm_jwt_key == raw


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"SLURM_JWT=eyJhbGciOiJIUzI1NiJ9.e30.sig\n", "eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        (b"eyJhbGciOiJIUzI1NiJ9.e30.sig\n", "eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        (b"  SLURM_JWT=tok-en_123  \n", "tok-en_123"),
    ],
)
def test_token_file_strips_slurm_jwt_prefix(load, tmp_path: Path, content: bytes, expected: str) -> None:
    path = write_secret(tmp_path / "slurm.token", content)
    config = load(slurmrestd__jwt_key_file=None, slurmrestd__token_file=path)
    assert config.slurm_static_token == expected
    assert config.slurm_jwt_key is None


def test_bare_secret_names_are_looked_up_in_credentials_directory(
    load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_secret(credentials / "client_secret", b"from-credentials-dir\n")
    write_secret(credentials / "slurm_jwt", b"SLURM_JWT=cred-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load(oidc__client_secret_file="client_secret", slurmrestd__jwt_key_file=None,
                  slurmrestd__token_file="slurm_jwt")
    assert config.client_secret == "from-credentials-dir"
    assert config.slurm_static_token == "cred-token"


def test_paths_with_a_slash_ignore_credentials_directory(load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_secret(credentials / "client_secret", b"wrong-one")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load()  # client_secret_file is an absolute path in tmp_path
    assert config.client_secret == CLIENT_SECRET


def test_credentials_directory_secret_is_still_mode_checked(load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_secret(credentials / "jwt.key", JWT_KEY, 0o644)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(ConfigError, match=re.escape(f"{credentials / 'jwt.key'} is readable")):
        load(slurmrestd__jwt_key_file="jwt.key")


def test_missing_bare_name_in_credentials_directory_is_named(load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'absent'}: cannot open")):
        load(oidc__client_secret_file="absent")


# ---------------------------------------------------------------------------------------------
# validate_config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dotted", ["jobbergate.api_url", "oidc.issuer", "slurmrestd.url"])
@pytest.mark.parametrize("url", ["ftp://example.com", "example.com", "http:///path", "https:/x", "http//x"])
def test_urls_must_be_http(load, dotted: str, url: str) -> None:
    section, key = dotted.split(".")
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key}: must be an http\(s\) URL"):
        load(**{dotted.replace(".", "__"): url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:6820", "https://slurm.example.com/", "http://h"])
def test_good_urls_accepted(load, url: str) -> None:
    assert load(slurmrestd__url=url).slurmrestd.url == url


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.39", "v0.0.40", "v0.0.41", "v0.0.42", "v0.0.43", "v0.0.44"])
def test_supported_api_versions(load, version: str) -> None:
    assert load(slurmrestd__api_version=version).slurmrestd.api_version == version


@pytest.mark.parametrize("version", ["v0.0.37", "v0.0.36", "v0.0.45", "v0.0.100", "0.0.40", "v0.0.4a",
                                     "v0.1.40", "latest", "v0.0.40-beta"])
def test_unsupported_api_versions(load, version: str) -> None:
    with pytest.raises(ConfigError, match=r"\[slurmrestd\] api_version: must be one of auto, v0\.0\.38, v0\.0\.39, .*, v0\.0\.44$"):
        load(environ={"JOBBERGATE_SYNC_SLURMRESTD_API_VERSION": version})


@pytest.mark.parametrize("size", [1, 50, 100])
def test_page_size_in_range(load, size: int) -> None:
    assert load(jobbergate__page_size=size).jobbergate.page_size == size


@pytest.mark.parametrize("size", [0, -1, 101, 500])
def test_page_size_out_of_range(load, size: int) -> None:
    with pytest.raises(ConfigError, match=r"\[jobbergate\] page_size: must be 1 to 100"):
        load(jobbergate__page_size=size)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mapper__type": "ldapx"}, r"\[mapper\] type: must be one of single-user, email-local-part, map-file, ldap"),
        ({"mapper__type": "single-user"}, r"\[mapper\] user: required by the single-user mapper"),
        ({"mapper__type": "map-file"}, r"\[mapper\] map_file: required by the map-file mapper"),
        ({"mapper__min_uid": 0}, r"\[mapper\] min_uid: must be at least 1"),
        ({"mapper__min_uid": -5}, r"\[mapper\] min_uid: must be at least 1"),
        ({"submit__execution_directory": "home/{username}"}, r"\[submit\] execution_directory: must be an absolute"),
        ({"submit__execution_directory": "~/{username}"}, r"\[submit\] execution_directory: must be an absolute"),
        ({"submit__execution_directory": "/home/{user}"}, r"\[submit\] execution_directory: bad template"),
        ({"submit__execution_directory": "/home/{0}"}, r"\[submit\] execution_directory: bad template"),
        ({"submit__execution_directory": "/home/{username"}, r"\[submit\] execution_directory: bad template"),
        ({"slurmrestd__token_lifespan": 60}, r"\[slurmrestd\] token_lifespan: must be at least 61"),
        ({"run__deadline": 0}, r"\[run\] deadline: must be at least 1"),
        ({"run__retries": 0}, r"\[run\] retries: must be at least 1"),
        ({"run__interval": -1}, r"\[run\] interval: must be at least 1"),
        ({"jobbergate__max_pages": 0}, r"\[jobbergate\] max_pages: must be at least 1"),
        ({"submit__max_file_size": 0}, r"\[submit\] max_file_size: must be at least 1"),
        ({"jobbergate__timeout": 0}, r"\[jobbergate\] timeout: must be at least 0\.1"),
        ({"oidc__timeout": -1}, r"\[oidc\] timeout: must be at least 0\.1"),
        ({"slurmrestd__timeout": 0}, r"\[slurmrestd\] timeout: must be at least 0\.1"),
        ({"slurmrestd__purge_horizon": 0}, r"\[slurmrestd\] purge_horizon: must be at least 1"),
        ({"run__backoff": -0.5}, r"\[run\] backoff: must be at least 0$"),
        ({"submit__max_total_size": 0}, r"\[submit\] max_total_size: must be at least 1"),
        ({"submit__file_mode": "0400"}, r"\[submit\] file_mode: must be an octal mode .* lets the owner read and write"),
        ({"submit__file_mode": "rw-------"}, r"\[submit\] file_mode: must be an octal mode"),
        ({"submit__file_mode": "01600"}, r"\[submit\] file_mode: must be an octal mode"),
        ({"run__submit_share": 0.95}, r"\[run\] submit_share: must be 0\.1 to 0\.9"),
        ({"run__submit_share": 0}, r"\[run\] submit_share: must be 0\.1 to 0\.9"),
        ({"logging__format": "xml"}, r"\[logging\] format: must be one of auto, json, text"),
        ({"logging__level": "verbose"}, r"\[logging\] level: must be one of debug, info, warning, error"),
        ({"metrics__textfile": "jobbergate_sync.prom"}, r"\[metrics\] textfile: must be an absolute path ending in \.prom"),
        ({"metrics__textfile": "/var/lib/node-exporter/jobbergate_sync.txt"}, r"\[metrics\] textfile: .*\*\.prom"),
        ({"metrics__ping_url": "hc-ping.com/abc"}, r"\[metrics\] ping_url: must be an http\(s\) URL"),
        ({"metrics__ping_timeout": 0}, r"\[metrics\] ping_timeout: must be at least 0\.1"),
    ],
)
def test_validation_names_the_key(load, overrides: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**overrides)


@pytest.mark.parametrize(
    ("overrides", "section", "key", "expected"),
    [
        ({"mapper__type": "single-user", "mapper__user": "jobs"}, "mapper", "user", "jobs"),
        ({"mapper__type": "map-file", "mapper__map_file": "/etc/x.map"}, "mapper", "map_file", "/etc/x.map"),
        ({"mapper__min_uid": 1}, "mapper", "min_uid", 1),
        ({"submit__execution_directory": "/srv/{username}/jobs"}, "submit", "execution_directory",
         "/srv/{username}/jobs"),
        ({"submit__execution_directory": "/scratch/{username}/{home}"}, "submit", "execution_directory",
         "/scratch/{username}/{home}"),
        ({"submit__execution_directory": "/shared/jobs"}, "submit", "execution_directory", "/shared/jobs"),
        ({"slurmrestd__token_lifespan": 61}, "slurmrestd", "token_lifespan", 61),
        ({"run__backoff": 0}, "run", "backoff", 0.0),
        ({"logging__level": "WARNING"}, "logging", "level", "warning"),
    ],
)
def test_validation_accepts_edge_values(load, overrides, section, key, expected) -> None:
    assert getattr(getattr(load(**overrides), section), key) == expected


def test_execution_directory_template_may_start_with_home(load) -> None:
    assert load(submit__execution_directory="{home}/jobs").submit.execution_directory == "{home}/jobs"


def test_validate_config_directly_on_the_defaults_plus_required() -> None:
    sections = {s: {k: v.default for k, v in keys.items()} for s, keys in jobbergate_sync.CONFIG_SCHEMA.items()}
    sections["jobbergate"]["api_url"] = "http://api"
    sections["oidc"]["issuer"] = "http://issuer"
    sections["mapper"]["domains"] = "example.com"  # required by the default mapper
    jobbergate_sync.validate_config(sections)  # the defaults themselves are valid
    sections["mapper"]["min_uid"] = 0
    with pytest.raises(ConfigError, match=r"min_uid"):
        jobbergate_sync.validate_config(sections)


# ---------------------------------------------------------------------------------------------
# config.example.ini
# ---------------------------------------------------------------------------------------------


def _example_keys(include_commented: bool) -> set:
    keys, section = set(), None
    for line in EXAMPLE_INI.read_text().splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header.group(1)
            continue
        pattern = r"#?(\w+) =" if include_commented else r"(\w+) ="
        entry = re.match(pattern, line)
        if entry and section:
            keys.add((section, entry.group(1)))
    return keys


@pytest.fixture
def example_environ(tmp_path: Path) -> Dict[str, str]:
    return {
        "JOBBERGATE_SYNC_OIDC_CLIENT_SECRET_FILE": write_secret(tmp_path / "client_secret", b"example-secret\n"),
        "JOBBERGATE_SYNC_SLURMRESTD_JWT_KEY_FILE": write_secret(tmp_path / "jwt.key", JWT_KEY),
    }


def test_example_config_loads(example_environ: Dict[str, str]) -> None:
    config = load_config(str(EXAMPLE_INI), example_environ)
    assert config.jobbergate.api_url == "https://jobbergate.example.com/jobbergate"
    assert config.oidc.client_id == "my-cluster"
    assert config.client_secret == "example-secret"
    assert config.slurm_jwt_key == JWT_KEY
    assert config.mapper.type == "email-local-part"


def test_example_config_lists_every_key_including_commented_ones() -> None:
    schema = {(section, key) for section, keys in jobbergate_sync.CONFIG_SCHEMA.items() for key in keys}
    listed = _example_keys(include_commented=True)
    assert listed <= schema, f"example keys that are not settings: {sorted(listed - schema)}"
    assert listed == schema, f"settings missing from the example: {sorted(schema - listed)}"


def test_example_config_shows_the_defaults(example_environ: Dict[str, str]) -> None:
    """The example says 'a key set without # shows its default': check it for the keys that have one."""
    config = load_config(str(EXAMPLE_INI), example_environ)
    for section, key in sorted(_example_keys(include_commented=False)):
        setting = jobbergate_sync.CONFIG_SCHEMA[section][key]
        if setting.default is None or setting.example_set:  # an example to replace, not a default
            continue
        default = setting.default
        assert getattr(getattr(config, section), key) == default, f"[{section}] {key}"


@pytest.mark.parametrize(("overrides", "section", "key", "expected"), [
    ({"logging__level": "INFO"}, "logging", "level", "info"),
    ({"slurm__backend": "SBATCH", "slurmrestd__jwt_key_file": None}, "slurm", "backend", "sbatch"),
    ({"slurmrestd__api_version": "V0.0.40"}, "slurmrestd", "api_version", "v0.0.40"),
])
def test_words_are_taken_in_any_case_and_kept_in_lower_case(load, overrides, section, key, expected) -> None:
    assert getattr(getattr(load(**overrides), section), key) == expected


@pytest.mark.parametrize("domains", [None, "", " , "])
def test_email_local_part_without_domains_is_a_configuration_error_naming_the_setting(load, domains) -> None:
    with pytest.raises(ConfigError, match=r"\[mapper\] domains: required by the email-local-part mapper"):
        load(mapper__domains=domains)


def test_other_mappers_need_no_domains(load) -> None:
    assert load(mapper__domains=None, mapper__type="single-user", mapper__user="alice").mapper.type == "single-user"


@pytest.mark.parametrize("domains", ["example.com/x", "ex ample..com", "ex@mple.com"])
def test_domains_must_be_domain_names(load, domains) -> None:
    with pytest.raises(ConfigError, match=r"\[mapper\] domains: must list domain names"):
        load(mapper__domains=domains)
