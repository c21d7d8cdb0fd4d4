"""The ldap mapper: its settings, the filter escaping, every outcome of a search, the cache, the
check line and a pass with the directory down. The directory is ldap3's own MOCK_SYNC strategy
(a real ldap3 Connection that answers from entries held in memory); failures to reach it are
ldap3's own exceptions raised where the real client raises them."""

from __future__ import annotations

import json
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import certifi
import ldap3
import pytest
from ldap3.core.exceptions import LDAPSocketOpenError, LDAPSocketReceiveError

import jobbergate_sync
from config_files import write_ini, write_secret
from fakes import check_lines, run
from jobbergate_sync import (
    AuthError,
    Config,
    ConfigError,
    LocalUser,
    PeerDown,
    Rejection,
    Unavailable,
    UserMapper,
    ldap_filter_value,
    ldap_search_filter,
    load_config,
)

BASE = "dc=example,dc=test"
READER = f"cn=reader,ou=services,{BASE}"
PASSWORD = "reader pswd "  # a trailing space is part of it
URL = "ldaps://ldap.example.test"
ENTRIES: Dict[str, Dict[str, Any]] = {
    BASE: {"objectClass": ["dcObject", "organization"], "dc": "example", "o": "example"},
    READER: {"objectClass": ["organizationalRole", "simpleSecurityObject"], "cn": "reader", "userPassword": PASSWORD},
    f"uid=alice,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": "alice", "mail": "Alice@Example.com",
                                    "sn": "a", "cn": "a"},
    f"uid=ghost,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": "ghost", "mail": "ghost@example.com",
                                    "sn": "g", "cn": "g"},
    f"uid=admin-one,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": "admin-one",
                                        "mail": "admin@example.com", "sn": "a", "cn": "a"},
    f"uid=admin-two,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": "admin-two",
                                        "mail": "admin@example.com", "sn": "a", "cn": "a"},
    f"cn=two names,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": ["carol", "caroline"],
                                       "mail": "carol@example.com", "sn": "c", "cn": "two names"},
    f"cn=no uid,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "mail": "dave@example.com", "sn": "d",
                                    "cn": "no uid"},
    f"uid=root,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": "root", "mail": "root@example.com",
                                   "sn": "r", "cn": "r"},
    f"uid=star,ou=people,{BASE}": {"objectClass": ["inetOrgPerson"], "uid": "star", "mail": "a*b(c)@example.com",
                                   "sn": "s", "cn": "s"},
}
USERS = {"alice": LocalUser("alice", 1001, 1001, "/home/alice"), "star": LocalUser("star", 1005, 1005, "/home/star"),
         "root": LocalUser("root", 0, 0, "/root")}


class FakeDirectory:
    """Stands in for ldap3.Connection: each connection is a real MOCK_SYNC one holding ENTRIES;
    counts what is opened and searched, and raises what a broken network raises when told to."""

    def __init__(self) -> None:
        self.real = ldap3.Connection
        self.entries = dict(ENTRIES)
        self.opened = 0
        self.searches: List[str] = []
        self.open_error: Optional[Exception] = None
        self.search_error: Optional[Exception] = None
        self.search_result: Optional[Dict[str, Any]] = None
        self.servers: List[Any] = []
        self.options: List[Dict[str, Any]] = []

    def __call__(self, server: Any, **kwargs: Any) -> Any:
        connection = self.real(server, client_strategy=ldap3.MOCK_SYNC, **kwargs)
        for dn, attributes in self.entries.items():
            connection.strategy.add_entry(dn, attributes)
        self.servers.append(server)
        self.options.append(kwargs)
        real_open, real_search = connection.open, connection.search

        def open_(*args: Any, **kw: Any) -> Any:
            self.opened += 1
            if self.open_error:
                raise self.open_error
            return real_open(*args, **kw)

        def search(base: str, search_filter: str, *args: Any, **kw: Any) -> Any:
            self.searches.append(search_filter)
            if self.search_error:
                raise self.search_error
            answer = real_search(base, search_filter, *args, **kw)
            if self.search_result:
                connection.result = self.search_result
            return answer

        connection.open, connection.search = open_, search
        return connection


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> FakeDirectory:
    fake = FakeDirectory()
    monkeypatch.setattr(ldap3, "Connection", fake)
    return fake


def ldap_sections(**overrides: Any) -> Dict[str, Dict[str, Any]]:
    mapper = {key: setting.default for key, setting in jobbergate_sync.CONFIG_SCHEMA["mapper"].items()}
    mapper.update(type="ldap", ldap_url=URL, ldap_base_dn=BASE, ldap_bind_dn=READER, ldap_password_file="pw",
                  min_uid=1000)
    mapper.update(overrides)
    return {"mapper": mapper}


def make_mapper(tmp_path: Path, cache: bool = True, clock: Callable[[], float] = lambda: 1000.0,
                password: str = PASSWORD, **overrides: Any) -> UserMapper:
    config = Config(ldap_sections(**overrides), client_secret="", slurm_jwt_key=None, slurm_static_token=None,
                    ldap_password=password)
    mapper = UserMapper(config, lookup=USERS.get, ldap_cache=str(tmp_path / "ldap-cache.json") if cache else None)
    assert mapper.directory is not None
    mapper.directory.clock = clock
    return mapper


# ---------------------------------------------------------------------------------------------
# The filter: an email is a value, never filter syntax
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, escaped", [
    ("alice@example.com", "alice@example.com"),
    ("*", "\\2a"),
    ("a*)(uid=*", "a\\2a\\29\\28uid=\\2a"),
    ("back\\slash", "back\\5cslash"),
    ("nul\0byte", "nul\\00byte"),
    ("zoë@example.com", "zoë@example.com"),
])
def test_filter_values_are_escaped_as_rfc_4515_says(text: str, escaped: str) -> None:
    assert ldap_filter_value(text) == escaped


def test_the_email_fills_every_placeholder_of_the_filter() -> None:
    assert (ldap_search_filter("(|(mail={email})(mailAlternateAddress={email}))", "x*@y")
            == "(|(mail=x\\2a@y)(mailAlternateAddress=x\\2a@y))")


def test_an_email_with_filter_syntax_matches_only_itself(directory: FakeDirectory, tmp_path: Path) -> None:
    mapper = make_mapper(tmp_path)
    with pytest.raises(Rejection, match=r"owner email '\*@example.com' has no entry in this cluster's LDAP directory"):
        mapper.username_for("*@example.com")
    with pytest.raises(Rejection, match="no entry"):
        mapper.username_for("*)(uid=*@example.com")
    assert mapper.username_for("a*b(c)@example.com") == "star"
    assert directory.searches[-1] == "(mail=a\\2ab\\28c\\29@example.com)"


# ---------------------------------------------------------------------------------------------
# Outcomes of one search
# ---------------------------------------------------------------------------------------------


def test_one_entry_gives_its_uid_and_the_local_account(directory: FakeDirectory, tmp_path: Path) -> None:
    mapper = make_mapper(tmp_path)
    assert mapper.user_for("alice@example.com") == USERS["alice"]
    assert mapper.user_for("ALICE@example.COM") == USERS["alice"]  # mail matches case-insensitively
    server = directory.servers[0]
    assert (server.host, server.port, server.ssl) == ("ldap.example.test", 636, True)
    assert server.tls.validate == jobbergate_sync.ssl.CERT_REQUIRED
    # ldap3 packs the receive timeout into a socket option: it must be a whole number of seconds
    assert directory.options[0]["receive_timeout"] == 5 and type(directory.options[0]["receive_timeout"]) is int
    assert directory.options[0]["user"] == READER and directory.options[0]["read_only"] is True


def test_another_attribute_and_filter_can_name_the_account(directory: FakeDirectory, tmp_path: Path) -> None:
    mapper = make_mapper(tmp_path, ldap_filter="(&(objectClass=inetOrgPerson)(mail={email}))", ldap_attribute="sn")
    assert mapper.username_for("ghost@example.com") == "g"


@pytest.mark.parametrize("email, message", [
    ("nobody@example.com", r"owner email 'nobody@example.com' has no entry in this cluster's LDAP directory"),
    ("admin@example.com", r"owner email 'admin@example.com' matches 2 entries in this cluster's LDAP directory "
                          r"\(uid=admin-(one|two),ou=people,dc=example,dc=test; uid=admin-(one|two),ou=people,"
                          r"dc=example,dc=test\); it must match exactly one"),
    ("carol@example.com", r"LDAP entry cn=two names,ou=people,dc=example,dc=test has several uid values "
                          r"\(carol, caroline\)"),
    ("dave@example.com", r"LDAP entry cn=no uid,ou=people,dc=example,dc=test has no uid; one is needed"),
    ("ghost@example.com", r"owner email 'ghost@example.com' maps to user 'ghost', which does not exist"),
    ("root@example.com", r"maps to 'root' \(uid 0\), a system account"),
])
def test_what_cannot_be_mapped_is_rejected_naming_it(directory: FakeDirectory, tmp_path: Path, email: str,
                                                      message: str) -> None:
    with pytest.raises(Rejection, match=message):
        make_mapper(tmp_path).user_for(email)


def test_several_matches_beyond_those_asked_for_are_refused_too(directory: FakeDirectory, tmp_path: Path) -> None:
    for number in range(5):
        directory.entries[f"uid=many{number},ou=people,{BASE}"] = {
            "objectClass": ["inetOrgPerson"], "uid": f"many{number}", "mail": "many@example.com", "sn": "m", "cn": "m"}
    with pytest.raises(Rejection, match=r"matches 3 \(at least\) entries"):
        make_mapper(tmp_path).username_for("many@example.com")


def test_wrong_bind_credentials_are_an_authentication_failure(directory: FakeDirectory, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match=r"refused the credentials of \[mapper\] ldap_bind_dn cn=reader") as caught:
        make_mapper(tmp_path, password="wrong").username_for("alice@example.com")
    assert caught.value.exit_code == 77
    assert "wrong" not in str(caught.value)


def test_a_base_dn_that_does_not_exist_is_a_configuration_error(directory: FakeDirectory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[mapper\] ldap_base_dn ou=nowhere,dc=example,dc=test does not exist"):
        make_mapper(tmp_path, ldap_base_dn=f"ou=nowhere,{BASE}").username_for("alice@example.com")


@pytest.mark.parametrize("error", [
    LDAPSocketOpenError("unable to open socket [('socket connection error while opening: [Errno 111] Connection "
                        "refused', ('127.0.0.1', 6636))]"),
    LDAPSocketOpenError("socket ssl wrapping error: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF in violation of protocol"),
])
def test_an_unreachable_directory_is_an_outage_and_not_asked_again_in_the_pass(
        directory: FakeDirectory, tmp_path: Path, error: Exception) -> None:
    directory.open_error = error
    mapper = make_mapper(tmp_path)
    with pytest.raises(Unavailable, match=r"LDAP server ldaps://ldap.example.test: LDAPSocketOpenError") as caught:
        mapper.username_for("alice@example.com")
    assert caught.value.exit_code == 69
    with pytest.raises(PeerDown, match="unreachable in this pass"):
        mapper.username_for("bob@example.com")
    assert directory.opened == 1


def test_a_search_that_times_out_is_an_outage(directory: FakeDirectory, tmp_path: Path) -> None:
    directory.search_error = LDAPSocketReceiveError("error receiving data: timed out")
    with pytest.raises(Unavailable, match="timed out"):
        make_mapper(tmp_path).username_for("alice@example.com")


def test_a_busy_directory_is_an_outage(directory: FakeDirectory, tmp_path: Path) -> None:
    directory.search_result = {"result": 51, "description": "busy", "message": "try later"}
    with pytest.raises(Unavailable, match=r"LDAP search at ldaps://ldap.example.test: busy: try later"):
        make_mapper(tmp_path).username_for("alice@example.com")


def test_a_certificate_the_ca_file_does_not_vouch_for_is_configuration(directory: FakeDirectory,
                                                                        tmp_path: Path) -> None:
    directory.open_error = LDAPSocketOpenError(
        "socket ssl wrapping error: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
        "certificate in certificate chain (_ssl.c:1006)")
    ca_file = certifi.where()  # any CA file that loads
    with pytest.raises(ConfigError, match=rf"its TLS certificate is not trusted by \[mapper\] ldap_ca_file {ca_file}"):
        make_mapper(tmp_path, ldap_ca_file=ca_file).username_for("alice@example.com")


# ---------------------------------------------------------------------------------------------
# The cache: found usernames only, for ldap_cache_ttl seconds, 0600 in the state directory
# ---------------------------------------------------------------------------------------------


def test_a_found_username_is_cached_for_the_ttl(directory: FakeDirectory, tmp_path: Path) -> None:
    now = [1000.0]
    assert make_mapper(tmp_path, clock=lambda: now[0], ldap_cache_ttl=60).username_for("alice@example.com") == "alice"
    cache = tmp_path / "ldap-cache.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text()) == {"alice@example.com": {"username": "alice", "at": 1000.0,
                                                                   "matched": ["alice@example.com"]}}

    now[0] = 1059.0  # a later pass, within the TTL: no search
    assert make_mapper(tmp_path, clock=lambda: now[0], ldap_cache_ttl=60).username_for("Alice@Example.com") == "alice"
    assert len(directory.searches) == 1

    now[0] = 1060.0  # expired: asked again, and cached anew
    assert make_mapper(tmp_path, clock=lambda: now[0], ldap_cache_ttl=60).username_for("alice@example.com") == "alice"
    assert len(directory.searches) == 2
    assert json.loads(cache.read_text())["alice@example.com"]["at"] == 1060.0


def test_no_such_user_is_not_cached(directory: FakeDirectory, tmp_path: Path) -> None:
    for _ in range(2):
        with pytest.raises(Rejection):
            make_mapper(tmp_path).username_for("nobody@example.com")
    assert len(directory.searches) == 2
    assert not (tmp_path / "ldap-cache.json").exists()


@pytest.mark.parametrize("cache, ttl", [(False, 900), (True, 0)])
def test_no_cache_without_a_path_or_with_ttl_zero(directory: FakeDirectory, tmp_path: Path, cache: bool,
                                                  ttl: int) -> None:
    mapper = make_mapper(tmp_path, cache=cache, ldap_cache_ttl=ttl)
    assert [mapper.username_for("alice@example.com") for _ in range(2)] == ["alice", "alice"]
    assert len(directory.searches) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cache_is_started_afresh(directory: FakeDirectory, tmp_path: Path) -> None:
    (tmp_path / "ldap-cache.json").write_text("{not json")
    (tmp_path / "ldap-cache.json").chmod(0o600)
    assert make_mapper(tmp_path).username_for("alice@example.com") == "alice"
    assert json.loads((tmp_path / "ldap-cache.json").read_text())["alice@example.com"]["username"] == "alice"


def test_threads_share_one_connection_and_get_their_own_answers(directory: FakeDirectory, tmp_path: Path) -> None:
    mapper = make_mapper(tmp_path, cache=False)
    emails = ["alice@example.com", "a*b(c)@example.com"] * 10
    answers: Dict[int, str] = {}

    def ask(number: int) -> None:
        answers[number] = mapper.username_for(emails[number])

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(len(emails))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[number] for number in range(len(emails))] == ["alice", "star"] * 10
    assert directory.opened == 1 and len(directory.searches) == len(emails)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def ldap_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Config]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    def load(password: bytes = PASSWORD.encode() + b"\n", mode: int = 0o600, **overrides: Any) -> Config:
        settings = {
            "jobbergate.api_url": "http://api.test/jobbergate",
            "oidc.issuer": "http://issuer.test/realms/r",
            "oidc.client_id": "cluster",
            "oidc.client_secret": "s",
            "slurmrestd.jwt_key_file": write_secret(tmp_path / "jwt.key", b"k"),
            "mapper.type": "ldap",
            "mapper.ldap_url": URL,
            "mapper.ldap_base_dn": BASE,
            "mapper.ldap_bind_dn": READER,
            "mapper.ldap_password_file": write_secret(tmp_path / "ldap_password", password, mode),
        }
        settings.update({key.replace("__", "."): value for key, value in overrides.items()})
        return load_config(write_ini(tmp_path / "jobbergate-sync.ini", settings), {})

    return load


def test_a_complete_ldap_configuration_loads_with_its_password(ldap_config: Callable[..., Config]) -> None:
    config = ldap_config()
    assert config.ldap_password == PASSWORD  # the file's line break dropped, its trailing space kept
    assert config.mapper.ldap_filter == "(mail={email})" and config.mapper.ldap_attribute == "uid"
    assert ldap_config(mapper__ldap_url="ldap://ldap.example.test:1389", mapper__ldap_starttls="true",
                       mapper__ldap_bind_dn=None, mapper__ldap_password_file=None).ldap_password is None


@pytest.mark.parametrize("overrides, message", [
    ({"mapper__ldap_url": None}, r"\[mapper\] ldap_url: required by the ldap mapper"),
    ({"mapper__ldap_url": "https://ldap.example.test"}, r"\[mapper\] ldap_url: required by the ldap mapper"),
    ({"mapper__ldap_url": "ldaps://ldap.example.test/dc=x"}, r"\[mapper\] ldap_url: required"),
    ({"mapper__ldap_url": "ldaps://ldap.example.test:ldaps"}, r"\[mapper\] ldap_url: required"),
    ({"mapper__ldap_url": "ldap://ldap.example.test"}, r"\[mapper\] ldap_starttls: must be true with an ldap:// URL"),
    ({"mapper__ldap_starttls": "true"}, r"\[mapper\] ldap_starttls: must be false with an ldaps:// URL"),
    ({"mapper__ldap_base_dn": None}, r"\[mapper\] ldap_base_dn: required by the ldap mapper"),
    ({"mapper__ldap_filter": "mail={email}"}, r"\[mapper\] ldap_filter: must be a parenthesised LDAP filter"),
    ({"mapper__ldap_filter": "(mail=alice)"}, r"\[mapper\] ldap_filter: must be a parenthesised LDAP filter holding"),
    ({"mapper__ldap_attribute": "uid cn"}, r"\[mapper\] ldap_attribute: must name one attribute"),
    ({"mapper__ldap_password_file": None}, r"\[mapper\] ldap_bind_dn: set both ldap_bind_dn and ldap_password_file"),
    ({"mapper__ldap_timeout": "0"}, r"\[mapper\] ldap_timeout: must be at least 0\.1"),
    ({"mapper__ldap_cache_ttl": "-1"}, r"\[mapper\] ldap_cache_ttl: must be at least 0$"),
])
def test_bad_ldap_settings_are_refused_naming_the_key(ldap_config: Callable[..., Config], overrides: Dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ldap_config(**overrides)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_password_file_others_can_read_is_refused(ldap_config: Callable[..., Config], mode: int) -> None:
    with pytest.raises(ConfigError, match=rf"\[mapper\] ldap_password_file .* \(mode {mode:04o}\); refusing"):
        ldap_config(mode=mode)


def test_an_empty_password_file_is_refused(ldap_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"\[mapper\] ldap_password_file .* is empty"):
        ldap_config(password=b"\n")


def test_a_ca_file_that_is_missing_or_not_pem_is_refused(ldap_config: Callable[..., Config], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[mapper\] ldap_ca_file /no/such/ca.pem: not a readable PEM CA"):
        ldap_config(mapper__ldap_ca_file="/no/such/ca.pem")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ldap_ca_file .*garbage.pem: not a readable PEM CA"):
        ldap_config(mapper__ldap_ca_file=str(tmp_path / "garbage.pem"))


def test_without_the_ldap_extra_the_error_names_it(ldap_config: Callable[..., Config],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ldap3", None)  # what an environment without ldap3 imports
    with pytest.raises(ConfigError, match=r"\[mapper\] type = ldap needs the LDAP client library: "
                                          r"pip install 'jobbergate-sync\[ldap\]'"):
        ldap_config()
    monkeypatch.setitem(sys.modules, "ldap3", None)
    config = ldap_config(mapper__type="email-local-part", mapper__domains="example.com")  # only ldap needs it
    assert UserMapper(config).directory is None


# ---------------------------------------------------------------------------------------------
# The check command and a pass
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def ldap_config_file(config_file: Callable[..., str], tmp_path: Path) -> Callable[..., str]:
    def make(**overrides: Any) -> str:
        settings = {"mapper.type": "ldap", "mapper.ldap_url": URL, "mapper.ldap_base_dn": BASE,
                    "mapper.ldap_bind_dn": READER,
                    "mapper.ldap_password_file": write_secret(tmp_path / "ldap_password", PASSWORD.encode())}
        settings.update(overrides)
        return config_file(**settings)

    return make



def test_check_shows_the_directory_reached_and_the_account_found(stack: Any, directory: FakeDirectory, job_user: Any,
                                                                  ldap_config_file: Callable[..., str],
                                                                  capsys: pytest.CaptureFixture) -> None:
    directory.entries[f"uid={job_user.pw_name},ou=people,{BASE}"] = {
        "objectClass": ["inetOrgPerson"], "uid": job_user.pw_name, "mail": "job.user@example.com", "sn": "j", "cn": "j"}
    config = ldap_config_file()
    code, lines = check_lines(capsys, config, "--email", "job.user@example.com")
    assert lines["LDAP directory"] == ("ok", f"{URL} (LDAPS), bound as {READER}, base {BASE} readable")
    assert lines["secret files"][0] == "ok" and "[mapper] ldap_password_file" in lines["secret files"][1]
    assert lines["user mapping of job.user@example.com"][0] == "ok", lines["user mapping of job.user@example.com"]
    assert lines["user mapping of job.user@example.com"][1].startswith(f"user {job_user.pw_name} (uid {job_user.pw_uid})")
    assert code == 0, lines
    assert directory.searches == ["(objectClass=*)", "(mail=job.user@example.com)"]
    assert not (Path(config).parent / "state" / "ldap-cache.json").exists()


@pytest.mark.parametrize("password, error, code, status, fix", [
    ("wrong", None, 77, "FAIL", "check [mapper] ldap_bind_dn and the password in ldap_password_file"),
    (PASSWORD, LDAPSocketOpenError("socket connection error while opening: [Errno 111] Connection refused"), 69,
     "FAIL", "check [mapper] ldap_url and that the LDAP server is running"),
])
def test_check_says_why_the_directory_fails_and_skips_the_mapping(
        stack: Any, directory: FakeDirectory, ldap_config_file: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture, password: str, error: Optional[Exception], code: int, status: str,
        fix: str) -> None:
    directory.open_error = error
    config = ldap_config_file(**{"mapper.ldap_password_file": write_secret(tmp_path / "pw", password.encode())})
    got, lines = check_lines(capsys, config, "--email", "alice@example.com")
    assert lines["LDAP directory"][0] == status and lines["LDAP directory"][1].endswith(fix)
    assert lines["user mapping of alice@example.com"] == ("skip", "needs LDAP directory")
    assert got == code


def test_a_pass_with_the_directory_down_leaves_the_submission_and_exits_69(
        stack: Any, directory: FakeDirectory, ldap_config_file: Callable[..., str]) -> None:
    directory.open_error = LDAPSocketOpenError("socket connection error while opening: [Errno 111] Connection refused")
    stack.api.add_submission(1, email="alice@example.com")
    stack.api.add_submission(2, email="bob@example.com")
    assert run(ldap_config_file()) == 69
    assert stack.api.status(1) == stack.api.status(2) == "CREATED"
    assert directory.opened == 1  # the second submission did not wait for the directory again
    assert stack.slurm.submitted == []


# ---------------------------------------------------------------------------------------------
# One canonical email: the cache holds what the directory matched, uids compare as it compares them
# ---------------------------------------------------------------------------------------------


def test_a_lookalike_of_a_cached_email_is_refused_without_reaching_the_cache(directory: FakeDirectory,
                                                                               tmp_path: Path) -> None:
    assert make_mapper(tmp_path).username_for("alice@example.com") == "alice"  # alice's own submission, cached
    searches = len(directory.searches)
    for lookalike in ("a\u0301lice@example.com", "AL\u0130CE@example.com", " alice@example.com"):
        with pytest.raises(Rejection, match="is not a plain ASCII address"):
            make_mapper(tmp_path).username_for(lookalike)
    assert len(directory.searches) == searches


def test_the_kelvin_sign_never_becomes_a_k(directory: FakeDirectory, tmp_path: Path) -> None:
    directory.entries[f"uid=kate,ou=people,{BASE}"] = {"objectClass": ["inetOrgPerson"], "uid": "kate",
                                                        "mail": "kate@example.com", "sn": "k", "cn": "k"}
    assert make_mapper(tmp_path).username_for("kate@example.com") == "kate"
    with pytest.raises(Rejection, match="is not a plain ASCII address"):
        make_mapper(tmp_path).username_for("\u212aate@example.com")


@pytest.mark.parametrize("entry", [
    {"username": "alice", "at": 1000.0},  # written before the cache kept what the directory matched
    {"username": "alice", "at": 1000.0, "matched": ["alice@example.com"]},  # planted under another address
])
def test_a_cache_entry_not_matched_by_the_directory_for_that_address_is_not_used(directory: FakeDirectory,
                                                                                  tmp_path: Path, entry) -> None:
    cache = tmp_path / "ldap-cache.json"
    cache.write_text(json.dumps({"ghost@example.com": entry}))
    cache.chmod(0o600)
    assert make_mapper(tmp_path).username_for("ghost@example.com") == "ghost"
    assert directory.searches == ["(mail=ghost@example.com)"]


def test_a_uid_with_capitals_names_the_lowercase_account(directory: FakeDirectory, tmp_path: Path) -> None:
    directory.entries[f"uid=Alice2,ou=people,{BASE}"] = {"objectClass": ["inetOrgPerson"], "uid": "Alice2",
                                                          "mail": "alice2@example.com", "sn": "a", "cn": "a"}
    accounts = {**USERS, "alice2": LocalUser("alice2", 1002, 1002, "/home/alice2")}
    config = Config(ldap_sections(), client_secret="", slurm_jwt_key=None, slurm_static_token=None, ldap_password=PASSWORD)
    assert UserMapper(config, lookup=accounts.get).user_for("alice2@example.com") == accounts["alice2"]
    accounts["Alice2"] = LocalUser("Alice2", 1003, 1003, "/home/Alice2")  # two accounts the directory calls one
    with pytest.raises(Rejection, match="matches two accounts here, 'Alice2' and 'alice2'"):
        UserMapper(config, lookup=accounts.get).user_for("alice2@example.com")
