"""UserMapper (owner email -> local account) and resolve_execution_directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from fakes import check_lines
from jobbergate_sync import (
    Config,
    ConfigError,
    LocalUser,
    Rejection,
    UserMapper,
    resolve_execution_directory,
)

USERS = {
    "alice": LocalUser("alice", 1001, 1001, "/home/alice"),
    "bob": LocalUser("bob", 1002, 1002, "/home/bob"),
    "jobs": LocalUser("jobs", 2000, 2000, "/srv/jobs"),
    "a.b-c_d": LocalUser("a.b-c_d", 1003, 1003, "/home/a.b-c_d"),
    "root": LocalUser("root", 0, 0, "/root"),
    "daemon": LocalUser("daemon", 1, 1, "/usr/sbin"),
    "postgres": LocalUser("postgres", 999, 999, "/var/lib/postgresql"),
    "edge": LocalUser("edge", 1000, 1000, "/home/edge"),
}


class FakeLookup:
    def __init__(self, users: Dict[str, LocalUser]):
        self.users = users
        self.calls: List[str] = []

    def __call__(self, name: str) -> Optional[LocalUser]:
        self.calls.append(name)
        return self.users.get(name)


def mapper_config(kind: str = "email-local-part", user: str = "", map_file: str = "", min_uid: int = 1000,
                  domains: str = "example.com, jobbergate.local-mail") -> Config:
    sections = {"mapper": {"type": kind, "user": user, "map_file": map_file, "min_uid": min_uid, "domains": domains}}
    return Config(sections, client_secret="", slurm_jwt_key=None, slurm_static_token=None)


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup(USERS)


@pytest.fixture
def make(lookup: FakeLookup) -> Callable[..., UserMapper]:
    def _make(**kwargs: Any) -> UserMapper:
        return UserMapper(mapper_config(**kwargs), lookup=lookup)

    return _make


# ---------------------------------------------------------------------------------------------
# single-user
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["alice@example.com", "someone.else@other.org", "weird+tag@example.com"])
def test_single_user_maps_everyone_to_the_configured_user(make, lookup: FakeLookup, email: str) -> None:
    assert make(kind="single-user", user="jobs").user_for(email) == USERS["jobs"]
    assert lookup.calls == ["jobs"]


def test_single_user_that_is_root_is_refused(make) -> None:
    with pytest.raises(Rejection, match=r"owner email 'alice@example\.com' maps to 'root' \(uid 0\)"):
        make(kind="single-user", user="root", min_uid=1).user_for("alice@example.com")


# ---------------------------------------------------------------------------------------------
# email-local-part
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "username"),
    [
        ("alice@example.com", "alice"),
        ("Alice@Example.COM", "alice"),
        ("ALICE@example.com", "alice"),
        ("a.b-c_d@example.com", "a.b-c_d"),
        ("bob@jobbergate.local-mail", "bob"),
    ],
)
def test_email_local_part(make, lookup: FakeLookup, email: str, username: str) -> None:
    assert make().user_for(email) == USERS[username]
    assert lookup.calls == [username]


@pytest.mark.parametrize(
    ("email", "username"),
    [("_svc@example.com", "_svc"), ("x" * 32 + "@example.com", "x" * 32), ("machine$@example.com", "machine$"),
     ("a1@example.com", "a1")],
)
def test_email_local_part_accepts_valid_user_names(make, email: str, username: str) -> None:
    assert make().username_for(email) == username


@pytest.mark.parametrize(
    "email",
    [
        "no-at-sign",
        "@example.com",
        "alice+tag@example.com",
        "al ice@example.com",
        "1alice@example.com",
        "-alice@example.com",
        ".alice@example.com",
        "../etc@example.com",
        "x" * 33 + "@example.com",
        "al$ice@example.com",
        "alicé@example.com",
        "alice/x@example.com",
        "alice\x00@example.com",
    ],
)
def test_email_local_part_refuses_unusable_local_parts(make, lookup: FakeLookup, email: str) -> None:
    with pytest.raises(Rejection, match=rf"owner email {re.escape(ascii(email))} (has no local part usable as a user "
                                        "name|is not a plain ASCII address)"):
        make().user_for(email)
    assert lookup.calls == []  # refused before any account lookup


def test_email_local_part_refuses_a_trailing_newline(make) -> None:
    with pytest.raises(Rejection, match=r"is not a plain ASCII address"):
        make().username_for("alice\n@example.com")


# ---------------------------------------------------------------------------------------------
# map-file
# ---------------------------------------------------------------------------------------------

MAP_TEXT = """\
# email                 username
Alice@Example.com       alice     # the PI

bob@example.com bob
   carol@example.org\tjobs
boss@example.com        root
"""


@pytest.fixture
def map_file(tmp_path: Path) -> str:
    path = tmp_path / "users.map"
    path.write_text(MAP_TEXT)
    return str(path)


@pytest.mark.parametrize(
    ("email", "username"),
    [("alice@example.com", "alice"), ("ALICE@EXAMPLE.COM", "alice"), ("Alice@Example.com", "alice"),
     ("bob@example.com", "bob"), ("Carol@Example.org", "jobs")],
)
def test_map_file(make, lookup: FakeLookup, map_file: str, email: str, username: str) -> None:
    assert make(kind="map-file", map_file=map_file).user_for(email) == USERS[username]
    assert lookup.calls == [username]


@pytest.mark.parametrize("email", ["dave@example.com", "alice@example.org", "bob", "#@example.com"])
def test_map_file_unknown_email_refused(make, map_file: str, email: str) -> None:
    with pytest.raises(Rejection, match=rf"owner email {re.escape(ascii(email))} (is not in this cluster's user map|"
                                        "is not a plain ASCII address)"):
        make(kind="map-file", map_file=map_file).user_for(email)


def test_map_file_is_read_once_per_mapper(make, tmp_path: Path, map_file: str) -> None:
    mapper = make(kind="map-file", map_file=map_file)
    assert mapper.username_for("bob@example.com") == "bob"
    Path(map_file).write_text("bob@example.com alice\n")
    assert mapper.username_for("bob@example.com") == "bob"
    assert make(kind="map-file", map_file=map_file).username_for("bob@example.com") == "alice"


def test_map_file_entry_to_root_is_refused(make, map_file: str) -> None:
    with pytest.raises(Rejection, match=r"owner email 'boss@example\.com' maps to 'root' \(uid 0\), a system account"):
        make(kind="map-file", map_file=map_file, min_uid=1).user_for("boss@example.com")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("alice@example.com alice\ncarol@example.com\n", 2),
        ("# header\n\nalice@example.com alice extra\n", 3),
        ("alice alice\n", 1),  # the first word is not an email
        ("alice@example.com alice\n\n# c\n\t\nalice@example.com a b # x\n", 5),
    ],
)
def test_malformed_map_file_line_is_named(make, tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.map"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"\[mapper\] map_file {re.escape(str(path))} line {line}: expected 'email username'"):
        make(kind="map-file", map_file=str(path)).user_for("alice@example.com")


def test_missing_map_file_is_a_config_error(make, tmp_path: Path) -> None:
    path = tmp_path / "absent.map"
    with pytest.raises(ConfigError, match=rf"\[mapper\] map_file {re.escape(str(path))}: No such file"):
        make(kind="map-file", map_file=str(path)).user_for("alice@example.com")


# ---------------------------------------------------------------------------------------------
# Accounts that do not exist, root, system accounts
# ---------------------------------------------------------------------------------------------


def test_user_that_does_not_exist_is_refused(make) -> None:
    with pytest.raises(Rejection, match=r"owner email 'ghost@example\.com' maps to user 'ghost', which does not exist"):
        make().user_for("ghost@example.com")


@pytest.mark.parametrize("min_uid", [1, 500, 1000])
def test_root_is_always_refused(make, min_uid: int) -> None:
    with pytest.raises(Rejection, match=r"owner email 'root@example\.com' maps to 'root' \(uid 0\).*never run as root"):
        make(min_uid=min_uid).user_for("root@example.com")


@pytest.mark.parametrize(("email", "uid"), [("postgres@example.com", 999), ("daemon@example.com", 1)])
def test_system_account_below_min_uid_is_refused(make, email: str, uid: int) -> None:
    with pytest.raises(Rejection, match=rf"owner email {re.escape(repr(email))} maps to .*\(uid {uid}\), a system "
                                        r"account \(uid below 1000\)"):
        make(min_uid=1000).user_for(email)


def test_min_uid_is_inclusive(make) -> None:
    assert make(min_uid=1000).user_for("edge@example.com").uid == 1000
    assert make(min_uid=999).user_for("postgres@example.com").uid == 999


def test_real_lookup_refuses_root() -> None:
    """Without an injected lookup the mapper asks the password database; root is uid 0 everywhere."""
    with pytest.raises(Rejection, match=r"owner email 'root@example\.com' maps to 'root' \(uid 0\)"):
        UserMapper(mapper_config(min_uid=1)).user_for("root@example.com")


def test_real_lookup_unknown_account() -> None:
    with pytest.raises(Rejection, match=r"maps to user 'nosuchuserjgs', which does not exist"):
        UserMapper(mapper_config()).user_for("nosuchuserjgs@example.com")


# ---------------------------------------------------------------------------------------------
# resolve_execution_directory
# ---------------------------------------------------------------------------------------------

ALICE = LocalUser("alice", 1001, 1001, "/srv/home/alice")


@pytest.mark.parametrize(
    ("requested", "template", "expected"),
    [
        (None, "/home/{username}", "/home/alice"),
        (None, "/scratch/{username}/jobs", "/scratch/alice/jobs"),
        (None, "/scratch{home}/jobs", "/scratch/srv/home/alice/jobs"),
        (None, "/data/{username}/{username}", "/data/alice/alice"),
        (None, "/shared/jobs", "/shared/jobs"),
        ("", "/home/{username}", "/home/alice"),
        ("/data/alice/run1", "/home/{username}", "/data/alice/run1"),  # the submission's own directory wins
        ("/data//alice/./x/", "/home/{username}", "/data/alice/x"),
        ("/data/alice/../bob", "/home/{username}", "/data/bob"),
        ("/data/{username}", "/home/{username}", "/data/{username}"),  # no template expansion of a request
        ("/data/a b;$(id)", "/home/{username}", "/data/a b;$(id)"),
    ],
)
def test_resolve_execution_directory(requested: Optional[str], template: str, expected: str) -> None:
    assert resolve_execution_directory(requested, template, ALICE) == expected


@pytest.mark.parametrize("requested", ["jobs/run1", "./jobs", "~/jobs", "~alice/jobs", " /data"])
def test_relative_execution_directory_refused(requested: str) -> None:
    with pytest.raises(Rejection, match=rf"execution directory {re.escape(repr(requested))} is not an absolute path"):
        resolve_execution_directory(requested, "/home/{username}", ALICE)


@pytest.mark.parametrize("requested", ["/data/a\nb", "/data/a\x00b", "/data/a\tb", "/data/\x1b[31mred", "/data/a\rb"])
def test_control_characters_in_execution_directory_refused(requested: str) -> None:
    with pytest.raises(Rejection, match=rf"execution directory {re.escape(repr(requested))} contains a control character"):
        resolve_execution_directory(requested, "/home/{username}", ALICE)


def test_control_characters_from_the_home_directory_refused() -> None:
    user = LocalUser("alice", 1001, 1001, "/home/ali\nce")
    with pytest.raises(Rejection, match=r"contains a control character"):
        resolve_execution_directory(None, "/x/{home}", user)


def test_del_character_in_execution_directory_refused() -> None:
    with pytest.raises(Rejection, match=r"contains a control character"):
        resolve_execution_directory("/data/a\x7fb", "/home/{username}", ALICE)


# ---------------------------------------------------------------------------------------------
# One canonical email for every mapper: ASCII, compared ignoring case; email-local-part's domains
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["email-local-part", "map-file"])
@pytest.mark.parametrize("email", ["\u212aate@example.com", "bob\u0131@example.com", "bo\u0307b@example.com"])
def test_a_non_ascii_email_is_refused_by_every_mapper(make, lookup: FakeLookup, map_file: str, kind: str,
                                                      email: str) -> None:
    with pytest.raises(Rejection, match=rf"owner email {re.escape(ascii(email))} is not a plain ASCII address"):
        make(kind=kind, map_file=map_file).user_for(email)
    assert lookup.calls == []


@pytest.mark.parametrize("email", ["bob@attacker.example", "bob@example.com.attacker.example", "bob@sub.example.com"])
def test_email_local_part_maps_only_its_domains(make, lookup: FakeLookup, email: str) -> None:
    with pytest.raises(Rejection, match=r"is not in a domain this cluster maps to its accounts \(example.com, "
                                        r"jobbergate.local-mail\)"):
        make().user_for(email)
    assert lookup.calls == []


def test_a_map_file_line_with_a_non_ascii_email_is_a_configuration_error(make, tmp_path: Path) -> None:
    path = tmp_path / "users.map"
    path.write_text("\u212aate@example.com kate\n")
    with pytest.raises(ConfigError, match=r"line 1: '\u212aate@example.com' is not a plain ASCII email"):
        make(kind="map-file", map_file=str(path)).user_for("kate@example.com")


def test_check_names_the_domains_setting_for_an_address_of_another_domain(stack, config_file, capsys) -> None:
    code, lines = check_lines(capsys, config_file(), "--email", "someone@elsewhere.example")
    status, detail = lines["user mapping of someone@elsewhere.example"]
    assert status == "FAIL" and "is not in a domain this cluster maps" in detail and "[mapper] domains" in detail
