#!/usr/bin/env python3
"""jobbergate-sync: a one-pass Jobbergate cluster agent for cron or a systemd timer.

One run takes a lock, submits the cluster's CREATED job submissions to Slurm (through slurmrestd,
or through Slurm's own commands where a site has no slurmrestd), reports the state of the active
ones back to the Jobbergate API, pings the cluster health endpoint, logs one summary line and exits.
The work of several submissions runs side by side on a few threads ([run] workers); the code of
each stays synchronous.

Its promise is exactly once: the intent is in the journal before the submit, the Slurm job id right
after it, then the report (LiveChanges.submit_exactly_once); a pass killed anywhere in between is
resumed by the next from the journal (EarlierSubmit), never submitted twice.

Sections, in order: constants and errors; files and state directory (secrets, private state files,
the state directory and the lock); configuration; logging; then the domain: pending
submissions; #SBATCH parsing and translation; Slurm job states; user mapping (including the LDAP
directory); then the adapters: deadline and HTTP; OIDC token; Jobbergate API client; Slurm backends
(the interface the pass uses); slurmrestd client; Slurm commands client (the sbatch backend); files
as the user; state journal; two head nodes (which controller is in charge, this host's role); then
the pass: its phases, what they share and the worker threads; the
submit phase (with the per-pass download cache); changes (live or dry run); resuming an earlier
pass's submit; the update phase; job metrics (Slurm's InfluxDB profile to the API); then
monitoring; the check (every peer visited once, read-only, for the `check` command); CLI.
"""

from __future__ import annotations

import array
import configparser
import contextlib
import dataclasses
import enum
import errno
import fcntl
import json
import logging
import marshal
import os
import pwd
import re
import shlex
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unicodedata
import urllib.parse
from datetime import datetime, timezone
from typing import IO, Any, Callable, Collection, Iterable, Iterator, Mapping, Optional, Protocol, Sequence, TypeVar, Union

import click
import requests

# Imported where used, not here: a pass that does not need them (nothing to do, text logs, no log
# file, no retry) starts sooner without them. jwt (minting Slurm tokens, reading an OIDC token's
# expiry), pythonjsonlogger (JSON logs), logging.handlers (a log file), tenacity (a retry).

__version__ = "0.1.0"

log = logging.getLogger("jobbergate_sync")


# ---------------------------------------------------------------------------------------------
# Constants and errors
# ---------------------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

EX_NOUSER = 67  # only `check`: the --email address maps to no usable account


@dataclasses.dataclass(frozen=True)
class ExitCode:
    """One exit code: a short name, and what it means at the end of a pass and of `check` ("" where
    that command never ends with it). The one source of `--help`, `check --help`, the textfile's
    metric help and the docs' table."""

    code: int
    name: str
    after_pass: str
    after_check: str


EXIT_CODES = (
    ExitCode(EXIT_OK, "ok", "the pass completed and every item went well, or this host stood by (another head "
             "node's slurmctld is in charge: [run] role = auto)", "every check passed"),
    ExitCode(EXIT_ITEMS_FAILED, "some items failed", "the pass completed but some items failed (see the log)", ""),
    ExitCode(EX_USAGE, "usage", "bad command-line usage", "bad command-line usage"),
    ExitCode(EX_NOUSER, "no such user", "", "the --email address maps to no usable local account"),
    ExitCode(EX_UNAVAILABLE, "a peer unreachable",
             "the Jobbergate API, the OIDC issuer, slurmrestd, Slurm's commands, slurmdbd or the LDAP server was "
             "unreachable (timeouts, refused connections, 5xx, 429, garbage answers), or slurmdbd was behind while "
             "settling an interrupted submit, or no slurmctld answered the ping of [run] role = auto; the work waits "
             "for the next pass. Also: the pass ran far past [run] deadline and its watchdog ended it",
             "a peer is unreachable: the OIDC issuer, the API, slurmrestd or slurmctld behind it, slurmdbd or the LDAP "
             "server (before Slurm 25.11 a token refused for a wrong JWT key looks the same)"),
    ExitCode(EX_SOFTWARE, "internal error", "internal error (a bug: please report it with the log, which has the "
             "traceback)", "internal error (a bug)"),
    ExitCode(EX_TEMPFAIL, "lock held", "another run holds the lock; nothing was done", ""),
    ExitCode(EX_NOPERM, "authentication",
             "authentication or permission failure (OIDC, API 401 after a fresh token, 403, slurmrestd 401, the LDAP "
             "bind refused)", "a refused secret, key or token, or a missing permission"),
    ExitCode(EX_CONFIG, "configuration",
             "bad configuration (the message names the section and key, or the file); also a 404 from the API that "
             "names no missing record: [jobbergate] api_url lacks the API's /jobbergate mount; with [run] role = auto, "
             "this host is none of the controllers Slurm lists ([run] host_names)",
             "bad configuration (the line names the setting): also a secret file's mode or owner, a pinned "
             "api_version slurmrestd does not serve, slurmdbd = true without /slurmdb/ paths, the state directory "
             "or the lock file"),
)


def exit_codes_help(command: str) -> str:
    """The exit codes section of `--help` (command "pass") or of `check --help` ("check")."""
    meanings = [(entry.code, entry.after_check if command == "check" else entry.after_pass) for entry in EXIT_CODES]
    title = ("Exit codes (those of the first failing check; earlier checks come first because what they find "
             "usually explains the later failures):" if command == "check" else "Exit codes:")
    lines = ["\b", *textwrap.wrap(title, 76)]
    for code, meaning in meanings:
        if meaning:
            lines += textwrap.wrap(meaning, 76, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
    return "\n".join(lines)


DEFAULT_CONFIG_PATH = "/etc/jobbergate-sync/jobbergate-sync.ini"
ENV_PREFIX = "JOBBERGATE_SYNC_"
ENV_CONFIG = "JOBBERGATE_SYNC_CONFIG"
# Test-only fault injection: names a step boundary at which the process SIGKILLs itself.
# Read only when set; production never sets it. See docs/reliability.md.
ENV_CRASH_AT = "JOBBERGATE_SYNC_CRASH_AT"

# What the pass does with each exception; nothing else leaves a pass. Any other exception is a bug:
# inside one item's work, that item's failure (logged with its traceback, the pass goes on, and a
# submission failing so in FAILED_PASSES_TO_REJECT passes in a row is rejected); elsewhere the
# pass ends with 70 and a traceback. Whatever ends it, its last log line is the summary.


FAILED_PASSES_TO_REJECT = 3


class SyncError(Exception):
    """Base of the failures that carry an exit code (exit_code); never raised itself (70 if it were)."""

    exit_code = EX_SOFTWARE


class ConfigError(SyncError):
    """Bad configuration, or a peer proving it wrong (an API route or slurmrestd path that does not
    exist): the pass ends with 78; the message names the section and key."""

    exit_code = EX_CONFIG


class AuthError(SyncError):
    """The OIDC issuer, the API (401 after a fresh token, 403) or slurmrestd (401) refused us: the
    pass ends with 77."""

    exit_code = EX_NOPERM


class Forbidden(AuthError):
    """The API answered 403: the client lacks a permission the route needs (77)."""


class Unavailable(SyncError):
    """A peer did not answer usefully (connection failure, timeout, 5xx, 429, garbage body, slurmdbd
    down or behind): the item, or the phase that needed the peer, is left for the next pass, the
    peer is skipped for the rest of the pass, the other phases run, and the pass exits 69."""

    exit_code = EX_UNAVAILABLE


class PeerDown(Unavailable):
    """A call to a peer already found unavailable in this pass, not even attempted: as Unavailable (69)."""


class ApiConflict(Exception):
    """A 400/404/409 from a state-changing agent call: where the pass expects one it reads the
    submission to decide; anywhere else the item is logged and counted (exit 1) and retried next pass."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class LockHeld(SyncError):
    """Another run holds the lock: nothing is done, no pass runs, exit 75."""

    exit_code = EX_TEMPFAIL


class ItemError(SyncError):
    """One item (or one phase's list) failed for a reason that is neither its owner's fault nor an
    outage: logged and counted, retried next pass; the pass goes on and exits 1."""

    exit_code = EXIT_ITEMS_FAILED


class Rejection(Exception):
    """The submission can never be submitted as it is: it is rejected (REJECTED in the API) with this
    message, which is for its owner; the pass goes on."""


class TooLarge(Rejection):
    """A downloaded file went past the size it was allowed: the submission is rejected, naming the limit."""


class SubmitUnsettled(Rejection):
    """An interrupted submit that neither slurmctld nor slurmdbd can settle: rejected like any
    Rejection (never submitted again; the owner is told it may have run and since when), and logged
    at ERROR for the admin with the submission id and tag."""

    def __init__(self, entry: Any, reason: str):
        when = utc_text(entry.intent_at)
        super().__init__(
            f"jobbergate-sync cannot tell whether this job reached Slurm: submitting it was interrupted at {when} "
            f"and Slurm keeps no record that settles it ({reason}). It was not submitted again, so that it never "
            f"runs twice, but it may already have run since {when}: check for its output, and resubmit it if "
            "it did not run.")
        self.entry = entry
        self.reason = reason


class DroppedOptions(Rejection):
    """Slurm made the job but warned that it ignored options it was sent, so the job must not run as
    it is: the pass cancels it as its owner and the submission is rejected naming the options."""

    def __init__(self, message: str, job_id: int):
        super().__init__(message)
        self.job_id = job_id


def utc_text(epoch: Optional[float]) -> str:
    if epoch is None:
        return "an unknown time"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class DeadlineReached(Exception):
    """The pass (or the submit phase, its share of it) ran out of time: the remaining work waits for
    the next pass; the exit code is that of the work done (0 or 1)."""


class CrashPoint(str, enum.Enum):
    """The step boundaries JOBBERGATE_SYNC_CRASH_AT can name, in the order a pass meets them."""

    TOKEN_CACHE = "token-cache"  # the new token is on disk beside the cache, not yet renamed over it
    AFTER_FILES_WRITTEN = "after-files-written"
    AFTER_JOURNAL_INTENT = "after-journal-intent"  # the intent is on disk, the submit not sent
    AFTER_SLURM_SUBMIT = "after-slurm-submit"
    AFTER_JOURNAL_JOB = "after-journal-job"
    AFTER_AGENT_SUBMITTED = "after-agent-submitted"
    MID_UPDATE = "mid-update"


def crash_point(point: CrashPoint) -> None:
    """Kill this process dead at a named step boundary when a test asks for it."""
    wanted = os.environ.get(ENV_CRASH_AT)
    if wanted and wanted == point.value:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Files and state directory: secrets, private state files, the state directory and the lock
# ---------------------------------------------------------------------------------------------


def read_secret_file(path: str, what: str) -> bytes:
    """Read a secret file that only its owner may read; refuse a group/world-readable one."""
    path = secret_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{what} {path} is readable or writable by group or others (mode {stat.S_IMODE(mode):04o}); "
                "refusing to use it: chmod 0600 it"
            )
        return handle.read()


@contextlib.contextmanager
def private_replacement(path: str, data: bytes) -> Iterator[None]:
    """Write `data` durably to a file created 0600 from its first byte beside `path`; it replaces
    `path` atomically when the block ends, and is removed if the block fails."""
    directory = os.path.dirname(path) or "."
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        yield
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


def open_private_file(path: str, flags: int, what: str = "state file") -> int:
    """A descriptor of `path`, opened without following a symbolic link (created 0600 with O_CREAT),
    refused (ConfigError naming it) unless it is a regular file of this process's user that no one
    else may read or write: the state files and the lock decide what the tool does."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{what} {path} is a symbolic link; remove it (a pass creates the file)") from None
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"is owned by {account_name(info.st_uid)}, not by {account_name(os.geteuid())} who runs jobbergate-sync"
    elif info.st_mode & 0o077:
        problem = f"is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem:
        os.close(fd)
        raise ConfigError(f"{what} {path} {problem}; remove it (a pass creates the file) or chown/chmod 0600 it")
    return fd


def read_private_file(path: Optional[str]) -> Optional[str]:
    """The text of a state file (open_private_file), None when there is none."""
    if not path or not os.path.lexists(path):
        return None
    with os.fdopen(open_private_file(path, os.O_RDONLY), "rb") as handle:
        return handle.read().decode("utf-8", "replace")


def write_private_file(path: str, data: bytes) -> None:
    """Atomically replace `path` with a file created 0600 from its first byte."""
    with private_replacement(path, data):
        pass


def create_private_file(path: str) -> None:
    """Create an empty file 0600 if it does not exist; refuse an existing one that is not private
    (open_private_file)."""
    os.close(open_private_file(path, os.O_WRONLY | os.O_CREAT))


def read_text_or_empty(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(1 << 20)
    except OSError:
        return ""


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def path_and_parents(path: str) -> list[str]:
    """`path` (absolute), then each directory above it up to '/'."""
    chain = [os.path.abspath(path)]
    while chain[-1] != os.path.dirname(chain[-1]):
        chain.append(os.path.dirname(chain[-1]))
    return chain


def require_own_directory(path: str, setting: str, closed_mask: int, fix: str) -> None:
    """Refuse (ConfigError naming the path) a directory another account could change: it must be this
    process's user's with none of `closed_mask`'s mode bits, and every directory above it, as named and
    as its symbolic links resolve, root's or this user's and writable by no one else, unless it is
    sticky and root's (as /tmp is). What the state directory holds decides which account jobs run as."""
    euid = os.geteuid()
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{setting} {path} is not a directory")
    if info.st_uid != euid:
        raise ConfigError(f"{setting} {path} is owned by {account_name(info.st_uid)}, not by {account_name(euid)} "
                          "who runs jobbergate-sync: whoever owns it decides which account jobs run as; remove it "
                          "(a pass creates it)")
    if info.st_mode & closed_mask:
        raise ConfigError(f"{setting} {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); {fix}")
    parents = {parent for named in (path, os.path.realpath(path)) for parent in path_and_parents(named)[1:]}
    for parent in sorted(parents, key=len):
        info = os.stat(parent)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, euid):
            raise ConfigError(f"{setting} {path}: the directory {parent} above it is owned by "
                              f"{account_name(info.st_uid)}, who could replace it; use a directory whose parents "
                              "are root's")
        if mode & 0o022 and not (mode & stat.S_ISVTX and info.st_uid == 0):
            raise ConfigError(f"{setting} {path}: the directory {parent} above it is writable by group or others "
                              f"(mode {mode:04o}), who could replace it; use a directory whose parents only root "
                              "can write to")


def prepare_state_dir(path: str) -> None:
    """The state directory holds the token cache and the journal: created 0700; refused unless this
    user's, closed to others, and below directories no one else can write to."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"[run] state_dir {path}: cannot create: {exc.strerror}") from None
    require_own_directory(path, "[run] state_dir", 0o077, "chmod 0700 it")


class RunLock:
    """A non-blocking flock on the lock file; the kernel drops it if the process dies."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        """Whoever else could create or replace the lock file could hold it, and stop every pass: its
        directory must be this user's and writable by no one else, and the file itself this user's."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"[run] lock_file {self.path}: {exc.strerror}") from None
        require_own_directory(directory, f"[run] lock_file {self.path}: its directory", 0o022,
                            "anyone there could hold the lock: use a directory of root's own, such as the default "
                            "/run/jobbergate-sync")
        self.fd = open_private_file(self.path, os.O_RDWR | os.O_CREAT, "[run] lock_file")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise LockHeld(f"another jobbergate-sync run holds {self.path}; nothing done") from None
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


class AutoBool:
    """A setting that is true, false or auto (decided from what slurmrestd serves)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its default, type and the text that documents it (the one source for all three).

    `minimum`/`maximum` bound numbers (inclusive) and `choices` lists the accepted words; `validate_config`
    checks both, and `config.example.ini` and the docs' settings table are rendered from all of it.
    `example` is the value the example configuration suggests where there is no default to show: a
    required setting's, or an optional one whose default is empty (shown commented out)."""
    default: Any
    kind: type = str
    required: bool = False
    help: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: tuple[str, ...] = ()
    example: str = ""
    example_set: bool = False  # config.example.ini sets the example value: the default configuration needs it


MAPPER_TYPES = ("single-user", "email-local-part", "map-file", "ldap")
SLURM_BACKENDS = ("slurmrestd", "sbatch")
SLURM_TOOLS = ("sbatch", "squeue", "sacct", "scancel", "sdiag", "scontrol")
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
API_VERSION_RE = re.compile(r"^v0\.0\.(\d+)$")
OLDEST_API_MINOR, NEWEST_API_MINOR = 38, 44
# More workers than this only queue up at the API and slurmrestd, which serve a few requests at once.
MAX_WORKERS = 32

CONFIG_SCHEMA: dict[str, dict[str, Setting]] = {
    "jobbergate": {
        "api_url": Setting(None, required=True, example="https://jobbergate.example.com/jobbergate",
                           help="Base URL of the Jobbergate API, including its /jobbergate mount."),
        "timeout": Setting(15.0, float, minimum=0.1, help="Seconds to wait for one API answer."),
        "page_size": Setting(100, int, minimum=1, maximum=100,
                             help="Items per page when listing pending and active submissions (the API allows at most 100)."),
        "max_pages": Setting(50, int, minimum=1,
                             help="Pages read per list and pass; the rest waits for the next pass (a warning is logged)."),
    },
    "oidc": {
        "issuer": Setting(None, required=True, example="https://keycloak.example.com/realms/jobbergate",
                          help="The OIDC issuer (Keycloak realm URL); the token endpoint is "
                               "<issuer>/protocol/openid-connect/token."),
        "client_id": Setting(None, required=True, example="my-cluster",
                             help="The cluster's client id: it is the cluster name in Jobbergate (submissions' client_id)."),
        "client_secret": Setting("", help="The client secret, inline: this file must then be 0600. Set exactly one of "
                                          "client_secret and client_secret_file."),
        "client_secret_file": Setting("", example="/etc/jobbergate-sync/client_secret",
                                      help="A file (0600) holding the client secret; a bare file name is looked up in "
                                           "$CREDENTIALS_DIRECTORY (systemd LoadCredential=)."),
        "token_margin": Setting(60, int, minimum=0,
                                help="Seconds before the token's expiry at which the cached token is replaced."),
        "timeout": Setting(10.0, float, minimum=0.1, help="Seconds to wait for the token endpoint."),
    },
    "slurmrestd": {
        "url": Setting("http://127.0.0.1:6820", help="slurmrestd base URL (without /slurm/...)."),
        "api_version": Setting("auto", choices=("auto", *(f"v0.0.{minor}" for minor in range(OLDEST_API_MINOR, NEWEST_API_MINOR + 1))),
                               help="OpenAPI version of the job endpoints. auto uses the newest version slurmrestd "
                                    "serves that the tool supports, remembered in state_dir/slurmrestd.json."),
        "jwt_key_file": Setting("", example="/etc/slurm/jwt_hs256.key",
                                help="The cluster's HS256 key (AuthAltParameters=jwt_key=...), 0600: the tool mints a "
                                     "short-lived token for each user it acts as. Set exactly one of jwt_key_file and "
                                     "token_file (slurmrestd backend only)."),
        "token_file": Setting("", example="/etc/jobbergate-sync/slurm_token",
                              help="A SlurmUser or root token (scontrol token username=slurm lifespan=N), 0600: the tool "
                                   "acts for users through X-SLURM-USER-NAME. Renew it before it expires."),
        "token_lifespan": Setting(600, int, minimum=61, help="Lifetime in seconds of the tokens minted with jwt_key_file."),
        "query_user": Setting("slurm", help="The user the tool reads job states as (any user can read all jobs unless "
                                            "PrivateData is set)."),
        "slurmdbd": Setting("auto", AutoBool, help="Look jobs up in slurmdbd once slurmctld has purged them: true, false, "
                                                   "or auto (when slurmrestd serves /slurmdb/ paths)."),
        "purge_horizon": Setting(300, int, minimum=1,
                                 help="Seconds after which slurmctld may have purged a finished job: Slurm's MinJobAge "
                                      "or less, never more (see docs/how-it-works.md)."),
        "query_url_bytes": Setting(65536, int, minimum=1024,
                                   help="The most bytes of job ids one GET jobs/state URL carries. slurmrestd takes "
                                        "about 80 KiB; behind a proxy stay under its request-line limit (nginx's 8 KiB "
                                        "default: 7000)."),
        "timeout": Setting(15.0, float, minimum=0.1, help="Seconds to wait for one slurmrestd answer."),
    },
    "slurm": {
        "backend": Setting("slurmrestd", choices=SLURM_BACKENDS,
                           help="How the tool reaches Slurm: slurmrestd, or sbatch (Slurm's own commands on this host, "
                                "authenticated by munge; [slurmrestd] is then not read). See docs/sbatch-backend.md."),
        "sbatch": Setting("/usr/bin/sbatch", help="sbatch backend: absolute path of sbatch (never looked up in PATH)."),
        "squeue": Setting("/usr/bin/squeue", help="sbatch backend: absolute path of squeue."),
        "sacct": Setting("/usr/bin/sacct", help="sbatch backend: absolute path of sacct."),
        "scancel": Setting("/usr/bin/scancel", help="sbatch backend: absolute path of scancel."),
        "sdiag": Setting("/usr/bin/sdiag", help="sbatch backend: absolute path of sdiag."),
        "scontrol": Setting("/usr/bin/scontrol", help="Absolute path of scontrol: `scontrol ping` learns which "
                                                      "controller is in charge ([run] role = auto, on either backend); "
                                                      "on the sbatch backend without slurmdbd, the check compares "
                                                      "purge_horizon with `scontrol show config`'s MinJobAge."),
        "slurmdbd": Setting(True, bool, help="sbatch backend: read jobs slurmctld has purged from slurmdbd (sacct); "
                                             "false without slurmdbd."),
        "purge_horizon": Setting(300, int, minimum=1, help="sbatch backend: as [slurmrestd] purge_horizon."),
        "timeout": Setting(30.0, float, minimum=0.1,
                           help="sbatch backend: seconds one command may take before it is killed (the pass then ends "
                                "with 69)."),
    },
    "submit": {
        "execution_directory": Setting("/home/{username}",
                                       help="Execution directory of submissions that do not name one; {username} and "
                                            "{home} are replaced."),
        "write_files": Setting(True, bool, help="Write the entrypoint and supporting files into the execution directory "
                                                "(as the user); false sends only the script and rejects submissions "
                                                "with supporting files."),
        "max_file_size": Setting(10 * 1024 * 1024, int, minimum=1,
                                 help="Largest file accepted, in bytes (files are streamed, never held whole in memory)."),
        "max_total_size": Setting(64 * 1024 * 1024, int, minimum=1, help=(
            "Largest total, in bytes, of one submission's files: a submission over it is rejected. The pass holds at "
            "most [run] workers times this on the state directory's file system, plus its download cache.")),
        "file_mode": Setting("0600", help=(
            "Mode (octal) of the files written into execution directories; directories created get it plus the "
            "matching x bits (0600 gives 0700). The owner's login umask is not known to the tool.")),
        "replace_files": Setting(False, bool, help=(
            "Replace an existing file of the same name that jobbergate-sync did not write itself (or that was "
            "changed since). false: such a submission is rejected and the file left alone.")),
        "job_path": Setting("/usr/local/bin:/usr/bin:/bin",
                            help="PATH of the job's environment, which holds PATH, HOME, USER, LOGNAME and the job's "
                                 "--export=NAME=value variables, never the agent's environment."),
    },
    "mapper": {
        "type": Setting("email-local-part", choices=MAPPER_TYPES,
                        help="How a submission's owner email becomes a local user: email-local-part (alice@example.com "
                             "-> alice), single-user ([mapper] user), map-file (lines 'email username'), ldap."),
        "domains": Setting("", example="example.com", example_set=True,
                           help="The email domains whose addresses the email-local-part mapper maps (comma- or "
                                "space-separated): alice@example.com -> alice, while an address in any other domain "
                                "names no one here. Required by that mapper, the default type: the value set below is "
                                "an example to replace. Every mapper takes plain ASCII addresses only, compared "
                                "ignoring case."),
        "user": Setting("", example="jobs", help="The single-user mapper's account."),
        "map_file": Setting("", example="/etc/jobbergate-sync/users.map", help="The map-file mapper's file."),
        "min_uid": Setting(1000, int, minimum=1, help="Accounts with a smaller uid (root, system accounts) are refused."),
        "ldap_url": Setting("", example="ldaps://ldap.example.com",
                            help="ldap mapper: ldaps://host[:port], or ldap://host[:port] with ldap_starttls = true "
                                 "(clear text is refused). See docs/ldap.md."),
        "ldap_starttls": Setting(False, bool, help="ldap mapper: StartTLS on an ldap:// URL."),
        "ldap_ca_file": Setting("", example="/etc/ssl/certs/ldap-ca.pem",
                                help="ldap mapper: CA certificate(s) (PEM) that signed the server's certificate; empty: "
                                     "the system's CAs."),
        "ldap_bind_dn": Setting("", example="cn=jobbergate-sync,ou=services,dc=example,dc=com",
                                help="ldap mapper: a read-only account to search with; empty, with "
                                     "ldap_password_file empty too: an anonymous bind."),
        "ldap_password_file": Setting("", example="/etc/jobbergate-sync/ldap_password",
                                      help="ldap mapper: a file (0600, root's) holding ldap_bind_dn's password."),
        "ldap_base_dn": Setting("", example="ou=people,dc=example,dc=com", help="ldap mapper: where the search starts."),
        "ldap_filter": Setting("(mail={email})", help="ldap mapper: {email} is replaced by the owner's email, escaped as "
                                                      "RFC 4515 requires."),
        "ldap_attribute": Setting("uid", help="ldap mapper: the attribute of the entry found that holds the user name."),
        "ldap_timeout": Setting(5.0, float, minimum=0.1, help="ldap mapper: seconds to connect, and to wait for each answer."),
        "ldap_cache_ttl": Setting(900, int, minimum=0, help="ldap mapper: seconds a username found stays in "
                                                            "state_dir/ldap-cache.json; 0: no cache."),
    },
    "run": {
        "state_dir": Setting("/var/lib/jobbergate-sync",
                             help="Token cache and submission journal (created 0700; refused if others can enter it)."),
        "lock_file": Setting("/run/jobbergate-sync/lock", help="Lock that keeps two runs from overlapping."),
        "interval": Setting(90, int, minimum=1,
                            help="Seconds sent to the API's health endpoint: the timer or cron period plus slack "
                                 "(90 for a run every minute)."),
        "deadline": Setting(50, int, minimum=1,
                            help="Seconds after which a pass stops starting new work (keep it below the timer period)."),
        "submit_share": Setting(0.6, float, minimum=0.1, maximum=0.9,
                                help="The share of deadline the submit phase may use; the update phase and the health "
                                     "ping always get the rest, however large the backlog."),
        "role": Setting("auto", choices=("auto", "always"),
                        help="auto: a pass runs only on the host whose slurmctld is in charge (the first of "
                             "SlurmctldHost that answers); the others stand by. always: every pass runs here. See "
                             "docs/two-head-nodes.md."),
        "host_names": Setting("", example="head1-ib,head1.cluster",
                              help="This host's names as slurm.conf's SlurmctldHost may give them, comma-separated, "
                                   "besides its hostname and FQDN (for role = auto)."),
        "retries": Setting(3, int, minimum=1,
                           help="Attempts for idempotent requests (lists, downloads, state updates, health, token)."),
        "backoff": Setting(1.0, float, minimum=0,
                           help="Base of the exponential backoff between attempts, in seconds (with jitter)."),
        "resend_after": Setting(3600, int, minimum=0, help="Seconds after which an unchanged job state is sent again anyway."),
        "workers": Setting(4, int, minimum=1, maximum=MAX_WORKERS,
                           help="Submissions handled side by side, and job-metrics reads from InfluxDB run side by side "
                                "(each reading its share of the jobs); 1 handles one at a time."),
    },
    "influxdb": {
        "url": Setting("", example="http://influx.example.com:8086",
                       help="Base URL of the InfluxDB 1.x HTTP API that Slurm's acct_gather_profile/influxdb plugin "
                            "writes to; empty: no job metrics. See docs/job-metrics.md."),
        "database": Setting("slurm", help="The database of acct_gather.conf's ProfileInfluxDBDatabase."),
        "retention_policy": Setting("", example="autogen", help="The retention policy of ProfileInfluxDBRTPolicy; "
                                                                "empty: the database's default one."),
        "user": Setting("", example="jobbergate-sync",
                        help="InfluxDB user (HTTP basic authentication); empty: no authentication."),
        "password_file": Setting("", example="/etc/jobbergate-sync/influxdb_password",
                                 help="File holding that user's password, root-owned and mode 0600."),
        "ca_file": Setting("", example="/etc/ssl/certs/influxdb-ca.pem",
                           help="CA bundle for an https url; empty: the system's CAs."),
        "verify": Setting(True, bool, help="Verify the https certificate (false only for a test set-up)."),
        "timeout": Setting(10.0, float, minimum=0.1,
                           help="Seconds to wait for an InfluxDB answer; a timeout delays the job metrics to the next "
                                "pass and nothing else."),
    },
    "logging": {
        "format": Setting("auto", choices=LOG_FORMATS,
                          help="auto: text when stderr is a terminal, JSON lines otherwise and always in the log file; "
                               "json or text force one format everywhere."),
        "level": Setting("info", choices=LOG_LEVELS, help="The least severe messages logged; -v (debug) and -q (warning) override it."),
        "file": Setting("", example="/var/log/jobbergate-sync/jobbergate-sync.log",
                        help="Log file; empty: stderr only. With a file, stderr gets warnings only; the file is reopened "
                             "when logrotate has moved it away."),
    },
    "metrics": {
        "textfile": Setting("", example="/var/lib/prometheus/node-exporter/jobbergate_sync.prom",
                            help="Prometheus textfile written after every pass, for node_exporter's textfile "
                                 "collector (the name must end in .prom); empty: none."),
        "ping_url": Setting("", example="https://hc-ping.com/00000000-0000-0000-0000-000000000000",
                            help="healthchecks.io-style ping URL: <url>/start when a pass starts, then <url> or "
                                 "<url>/<exit code>; empty: no pings."),
        "ping_timeout": Setting(5.0, float, minimum=0.1,
                                help="Seconds to wait for the ping's answer (a ping is never retried, and a failed one "
                                     "never changes the exit code)."),
    },
}


def parse_setting(section: str, key: str, raw: str, kind: type) -> Any:
    """Convert one raw INI/environment value to its type, naming the key on error."""
    raw = raw.strip()
    if kind is AutoBool:
        if raw.lower() == "auto":
            return "auto"
        kind = bool
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"[{section}] {key} = {raw!r}: not a valid {kind.__name__} ({exc})") from None


def secret_path(path: str) -> str:
    """Where a secret file setting points: a bare name is a systemd LoadCredential= name."""
    credentials_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    return os.path.join(credentials_dir, path) if credentials_dir and "/" not in path else path


@dataclasses.dataclass(frozen=True)
class Config:
    """Validated settings: config.<section>.<key>, plus the secrets read from their files."""

    sections: dict[str, dict[str, Any]]
    client_secret: str
    slurm_jwt_key: Optional[bytes]
    slurm_static_token: Optional[str]
    ldap_password: Optional[str] = None
    influxdb_password: Optional[str] = None
    secret_files: tuple[tuple[str, str], ...] = ()  # (section, key) of each secret file read

    def __getattr__(self, section: str) -> Any:
        try:
            return _Section(self.sections[section])
        except KeyError:
            raise AttributeError(section) from None


class _Section:
    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)


def load_config(path: str, environ: Mapping[str, str]) -> Config:
    """Read the INI file, apply JOBBERGATE_SYNC_<SECTION>_<KEY> overrides, validate, read secrets."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with open(path, encoding="utf-8") as handle:
            file_mode = os.fstat(handle.fileno()).st_mode
            parser.read_file(handle, source=path)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path}: not UTF-8 text (byte {exc.start})") from None
    except configparser.Error as exc:
        raise config_syntax_error(path, exc) from None

    raw: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        if section not in CONFIG_SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(CONFIG_SCHEMA)})")
        for key, value in parser.items(section):
            if key not in CONFIG_SCHEMA[section]:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            raw.setdefault(section, {})[key] = value
    if raw.get("oidc", {}).get("client_secret", "").strip() and file_mode & 0o077:
        raise ConfigError(
            f"{path} holds [oidc] client_secret but is readable by group or others "
            f"(mode {stat.S_IMODE(file_mode):04o}): chmod 0600 it or use client_secret_file"
        )

    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (ENV_CONFIG, ENV_CRASH_AT):
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in CONFIG_SCHEMA or key not in CONFIG_SCHEMA[section]:
            raise ConfigError(f"environment variable {name} names no setting")
        raw.setdefault(section, {})[key] = value

    sections: dict[str, dict[str, Any]] = {}
    for section, settings in CONFIG_SCHEMA.items():
        values = sections[section] = {}
        for key, setting in settings.items():
            text = raw.get(section, {}).get(key)
            if text is None or (text.strip() == "" and setting.required):
                if setting.required:
                    raise ConfigError(f"{path}: [{section}] {key} is required")
                values[key] = setting.default
            else:
                values[key] = parse_setting(section, key, text, setting.kind)
    validate_config(sections)

    oidc, slurm = sections["oidc"], sections["slurmrestd"]
    if bool(oidc["client_secret"]) == bool(oidc["client_secret_file"]):
        raise ConfigError("[oidc] set exactly one of client_secret and client_secret_file")
    client_secret = oidc["client_secret"] or read_secret_file(
        oidc["client_secret_file"], "[oidc] client_secret_file"
    ).decode("utf-8").strip()
    secret_files = [("oidc", "client_secret_file")] if oidc["client_secret_file"] else []
    jwt_key = static_token = None
    if sections["slurm"]["backend"] == "slurmrestd":  # the sbatch backend goes through munge: no secret of its own
        jwt_key, static_token = read_slurmrestd_secret(slurm)
        secret_files.append(("slurmrestd", "jwt_key_file" if slurm["jwt_key_file"] else "token_file"))
    ldap_password = None
    mapper = sections["mapper"]
    if mapper["ldap_password_file"]:
        secret_files.append(("mapper", "ldap_password_file"))
        # Only the line break an editor adds is dropped: a password may end in spaces.
        ldap_password = read_secret_file(mapper["ldap_password_file"], "[mapper] ldap_password_file").decode(
            "utf-8").rstrip("\r\n")
        if not ldap_password:
            raise ConfigError(f"[mapper] ldap_password_file {mapper['ldap_password_file']} is empty")
    if mapper["type"] == "ldap":
        import_ldap3()
        validate_ldap_ca_file(mapper["ldap_ca_file"])
    influxdb = sections["influxdb"]
    if influxdb["url"] and influxdb["password_file"]:
        secret_files.append(("influxdb", "password_file"))
    return Config(sections, client_secret, jwt_key, static_token, ldap_password, influxdb_password(influxdb),
                  tuple(secret_files))


def config_syntax_error(path: str, exc: configparser.Error) -> ConfigError:
    """The file and line numbers of a syntax error, never the lines: one may be a secret pasted on its
    own line, and the error is logged before any secret is known to the redactor."""
    numbers = [number for number, _ in getattr(exc, "errors", None) or []] or [getattr(exc, "lineno", None)]
    where = ", ".join(f"line {number}" for number in numbers if number) or "an unknown line"
    what = ("a section or key given twice" if isinstance(exc, (configparser.DuplicateSectionError,
                                                              configparser.DuplicateOptionError))
            else "not a [section] header, a 'key = value' line or a comment")
    return ConfigError(f"configuration file {path}: {where}: {what}")


def read_slurmrestd_secret(slurm: Mapping[str, Any]) -> tuple[Optional[bytes], Optional[str]]:
    """The JWT key or the static token, from whichever of the two files is set (exactly one must be)."""
    if bool(slurm["jwt_key_file"]) == bool(slurm["token_file"]):
        raise ConfigError("[slurmrestd] set exactly one of jwt_key_file and token_file")
    if slurm["jwt_key_file"]:
        jwt_key = read_secret_file(slurm["jwt_key_file"], "[slurmrestd] jwt_key_file")
        if not jwt_key:
            raise ConfigError(f"[slurmrestd] jwt_key_file {slurm['jwt_key_file']} is empty")
        return jwt_key, None
    static_token = read_secret_file(slurm["token_file"], "[slurmrestd] token_file").decode().strip()
    return None, static_token.removeprefix("SLURM_JWT=")  # as printed by scontrol token


def setting_bounds_text(setting: Setting) -> str:
    """The range or the words a setting accepts, as its error message and its documentation say it."""
    if setting.choices:
        return f"one of {', '.join(setting.choices)}"
    low, high = (None if bound is None else setting_value_text(setting.kind(bound)) for bound in (setting.minimum, setting.maximum))
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}" if high is not None else ""


def validate_config(sections: dict[str, dict[str, Any]]) -> None:
    """Check values that parse but make no sense, naming the key: first each setting's range or words
    from CONFIG_SCHEMA (words are normalised to lower case), then the rules that span several keys."""

    def need(condition: bool, where: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"[{where.split('.')[0]}] {where.split('.')[1]}: {message}")

    for section, settings in CONFIG_SCHEMA.items():
        for key, setting in settings.items():
            value = sections[section][key]
            if setting.choices:
                if isinstance(value, str):
                    value = sections[section][key] = value.lower()
                need(value in setting.choices, f"{section}.{key}", f"must be {setting_bounds_text(setting)}")
            elif setting.minimum is not None or setting.maximum is not None:
                in_range = ((setting.minimum is None or value >= setting.minimum)
                            and (setting.maximum is None or value <= setting.maximum))
                need(in_range, f"{section}.{key}", f"must be {setting_bounds_text(setting)}")
    for where in ("jobbergate.api_url", "oidc.issuer", "slurmrestd.url"):
        section, key = where.split(".")
        need(re.match(r"^https?://[^/]", sections[section][key]) is not None, where, "must be an http(s) URL")
    for tool in SLURM_TOOLS:
        need(sections["slurm"][tool].startswith("/"), f"slurm.{tool}", "must be an absolute path")
    template = sections["submit"]["execution_directory"]
    try:
        example = template.format(username="u", home="/h")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"[submit] execution_directory: bad template ({exc}); use {{username}} or {{home}}") from None
    need(example.startswith("/"), "submit.execution_directory", "must be an absolute path template")
    need(re.fullmatch(r"0?[0-7]{3}", sections["submit"]["file_mode"]) is not None
         and int(sections["submit"]["file_mode"], 8) & 0o600 == 0o600, "submit.file_mode",
         "must be an octal mode such as 0600 or 0640 that lets the owner read and write")
    mapper = sections["mapper"]
    need(mapper["type"] != "single-user" or bool(mapper["user"]), "mapper.user", "required by the single-user mapper")
    need(mapper["type"] != "map-file" or bool(mapper["map_file"]), "mapper.map_file", "required by the map-file mapper")
    need(mapper["type"] != "email-local-part" or bool(mapper_domains(mapper["domains"])), "mapper.domains",
         "required by the email-local-part mapper: the email domains whose local part names the account "
         "(e.g. domains = example.com); an address in any other domain is refused")
    need(all(DOMAIN_RE.fullmatch(domain) for domain in mapper_domains(mapper["domains"])), "mapper.domains",
         "must list domain names (letters, digits, '-' and '.'), separated by commas or spaces")
    for where, message in ldap_settings_problems(mapper) if mapper["type"] == "ldap" else []:
        need(False, where, message)
    for where, message in metrics_problems(sections["metrics"]) + influxdb_problems(sections["influxdb"]):
        need(False, where, message)


def setting_value_text(value: Any) -> str:
    """A value as it is written in the INI file."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_example_config() -> str:
    """config.example.ini, rendered from CONFIG_SCHEMA: each key with its help, its range or words, and
    its default; a required key with an example value to replace; an optional key without a default
    commented out, with an example value."""
    lines = [
        f"# jobbergate-sync configuration: {DEFAULT_CONFIG_PATH} (root:root, 0600).",
        "# Rendered from the module's CONFIG_SCHEMA (docs/development.md says how); do not edit by hand.",
        "# A key set below without '#' shows its default, unless it is marked Required: then the value is an",
        "# example to replace. A key commented out is off, or unset, by default; its value is an example.",
        f"# Any key can be overridden by the environment variable {ENV_PREFIX}<SECTION>_<KEY>,",
        f"# e.g. {ENV_PREFIX}RUN_DEADLINE=40. An unknown section or key is an error (exit {EX_CONFIG}).",
    ]
    for section, settings in CONFIG_SCHEMA.items():
        lines += ["", f"[{section}]"]
        for key, setting in settings.items():
            bounds = setting_bounds_text(setting)
            text = " ".join(part for part in (
                setting.help, "Required." if setting.required else "", f"{bounds[0].upper()}{bounds[1:]}." if bounds else "",
            ) if part)
            lines += [f"# {line}" for line in textwrap.wrap(text, 98, break_on_hyphens=False)]
            if setting.required or setting.example_set:
                lines.append(f"{key} = {setting.example}")
            elif setting.default in ("", None):
                lines.append(f"#{key} = {setting.example}".rstrip())
            else:
                lines.append(f"{key} = {setting_value_text(setting.default)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

CONTEXT_FIELDS = ("submission_id", "slurm_job_id", "user")


class SecretRedactor(logging.Filter):
    """Replace every registered secret in a record's text by '***' before any handler sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.lock = threading.Lock()  # workers mint tokens side by side: none may be lost

    def add(self, secret: Optional[str]) -> None:
        with self.lock:
            if secret and len(secret) >= 6 and secret not in self.secrets:
                # Longest first, so a secret that contains another is hidden whole.
                self.secrets = sorted([*self.secrets, secret], key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = ()
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


REDACTOR = SecretRedactor()


def printable(text: str) -> str:
    """`text` with each refused character (REFUSED_CHARACTER_CATEGORIES: controls, bidi overrides,
    surrogates, line separators) written as its escape (\\x1b, \\u202e): what a user wrote never moves
    an admin's terminal or forges a log line."""
    return "".join(ascii(char)[1:-1] if unicodedata.category(char) in REFUSED_CHARACTER_CATEGORIES else char
                   for char in text)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line, escaped (printable); a traceback after it keeps its line breaks. JSON escapes by itself."""
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{field}={getattr(record, field)}" for field in CONTEXT_FIELDS if hasattr(record, field))
        return f"{line} [{context}]" if context else line


def resolve_log_format(log_format: str, stream: Optional[IO[str]]) -> str:
    """'auto' is text for a person at a terminal and JSON lines everywhere else (cron mail,
    journald, files); 'json' and 'text' are taken as they are."""
    if log_format != "auto":
        return log_format
    try:
        return "text" if stream is not None and stream.isatty() else "json"
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return "json"


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        try:  # python-json-logger >= 3.1
            from pythonjsonlogger.json import JsonFormatter
        except ImportError:  # pragma: no cover - older python-json-logger
            from pythonjsonlogger.jsonlogger import JsonFormatter
        return JsonFormatter("%(asctime)s %(levelname)s %(message)s",
                             rename_fields={"asctime": "time", "levelname": "level"})
    return TextFormatter("%(asctime)s %(levelname)s %(message)s")


def setup_logging(log_format: str, level: str, log_file: str = "", stream: Optional[IO[str]] = None) -> None:
    """Configure the tool's logger; every handler gets the secret redactor. With 'auto', each
    destination gets its own format: text on a terminal, JSON lines on anything else."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    stream = stream or sys.stderr
    handlers: list[tuple[logging.Handler, Optional[IO[str]]]] = [(logging.StreamHandler(stream), stream)]
    if log_file:
        # The file gets everything; stderr (what cron mails) only warnings and errors. A
        # WatchedFileHandler reopens the file when logrotate has moved it away ("create" rotation).
        handlers[0][0].setLevel(logging.WARNING)
        from logging.handlers import WatchedFileHandler
        handlers.append((WatchedFileHandler(log_file), None))
    for handler, destination in handlers:
        handler.setFormatter(make_formatter(resolve_log_format(log_format, destination)))
        handler.addFilter(REDACTOR)
        log.addHandler(handler)
    log.setLevel(getattr(logging, level.upper()))
    log.propagate = False


class LogTail(logging.Handler):
    """Once attached: the last `size` lines the tool logged, as text (the body of the monitoring
    ping, which is redacted whole when it is built)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.lines: list[str] = []
        self.setFormatter(make_formatter("text"))

    @classmethod
    def attach(cls, size: int) -> "LogTail":
        tail = cls(size)
        log.addHandler(tail)
        return tail

    def detach(self) -> None:
        log.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a tail line is never worth failing a pass
            self.lines = (self.lines + self.format(record).splitlines())[-self.size:]


def log_fields(**fields: Any) -> dict[str, Any]:
    """Build the `extra` of a log call from the non-empty context fields."""
    return {"extra": {key: value for key, value in fields.items() if value is not None}}


# The submission the current thread works on (set by PassContext.for_each_item): workers handle
# several side by side, so every line logged meanwhile names its own, even where the call does not.
CURRENT_ITEM = threading.local()


def add_item_context(record: logging.LogRecord) -> bool:
    submission_id = getattr(CURRENT_ITEM, "submission_id", None)
    if submission_id is not None and not hasattr(record, "submission_id"):
        record.submission_id = submission_id
    return True


log.addFilter(add_item_context)


# ---------------------------------------------------------------------------------------------
# Pending submissions: validating what the API sent
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScriptFile:
    parent_id: int
    filename: str
    is_entrypoint: bool


@dataclasses.dataclass(frozen=True)
class PendingSubmission:
    id: int
    name: str
    owner_email: str
    execution_directory: Optional[str]
    sbatch_arguments: tuple[str, ...]
    files: tuple[ScriptFile, ...]
    script_created_at: Optional[str]  # part of the job's tag

    @property
    def entrypoint(self) -> ScriptFile:
        return next(f for f in self.files if f.is_entrypoint)


MAX_FILENAME_BYTES = 255
# Refused in every text that becomes a job field, a file name or a directory: C0 and C1 controls (Cc),
# invisible format characters such as U+202E (Cf), lone surrogates (Cs), and the line and paragraph
# separators (Zl, Zp), on which the squeue/sacct text fallbacks (str.splitlines) would split a record.
REFUSED_CHARACTER_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def control_character(text: str) -> Optional[str]:
    """The first refused character of `text`, as U+XXXX, or None."""
    for character in text:
        if unicodedata.category(character) in REFUSED_CHARACTER_CATEGORIES:
            return f"U+{ord(character):04X}"
    return None


def validated_filename(name: Any) -> str:
    """A file name must be a plain base name; anything else is refused, never 'cleaned'."""
    if not isinstance(name, str) or name == "":
        raise Rejection(f"job script file name {name!r} is empty or not a string")
    if "\x00" in name:
        raise Rejection(f"job script file name {name!r} contains a NUL byte")
    if "/" in name or name in (".", ".."):
        raise Rejection(f"job script file name {name!r} is not a plain file name (no '/', '.' or '..' allowed)")
    refused = control_character(name)
    if refused:
        raise Rejection(f"job script file name {name!r} contains a control character ({refused})")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_FILENAME_BYTES:
        raise Rejection(f"job script file name {name[:40]!r}... is longer than {MAX_FILENAME_BYTES} bytes")
    return name


def parse_pending(item: Mapping[str, Any]) -> PendingSubmission:
    """Validate one item of agent/pending; a malformed one is refused with the field named."""
    submission_id = item["id"]

    def field(name: str, kind: type, required: bool = True) -> Any:
        value = item.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Rejection(f"submission {submission_id}: field {name!r} is missing or not a {kind.__name__}")
        return value

    name = field("name", str)
    refused = control_character(name)
    if refused:  # it becomes the job's name, which squeue and sacct print raw
        raise Rejection(f"submission {submission_id}: field 'name' contains a control character ({refused})")
    owner_email = field("owner_email", str)
    execution_directory = field("execution_directory", str, required=False)
    arguments = field("sbatch_arguments", list, required=False) or []
    if not all(isinstance(arg, str) for arg in arguments):
        raise Rejection(f"submission {submission_id}: sbatch_arguments must be a list of strings")
    script = field("job_script", dict)
    raw_files = script.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise Rejection(f"submission {submission_id}: its job script lists no files")
    files = []
    for raw in raw_files:
        if not isinstance(raw, dict) or not isinstance(raw.get("parent_id"), int) or raw.get("file_type") not in ("ENTRYPOINT", "SUPPORT"):
            raise Rejection(f"submission {submission_id}: malformed job script file entry {raw!r:.200}")
        files.append(ScriptFile(raw["parent_id"], validated_filename(raw.get("filename")), raw["file_type"] == "ENTRYPOINT"))
    names = [f.filename for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise Rejection(f"job script file name {duplicates[0]!r} appears more than once")
    entrypoints = sum(f.is_entrypoint for f in files)
    if entrypoints != 1:
        raise Rejection(f"the job script has {entrypoints} ENTRYPOINT files; exactly one is required")
    return PendingSubmission(submission_id, name, owner_email, execution_directory, tuple(arguments), tuple(files),
                             script_created_at(item))


def script_created_at(item: Mapping[str, Any]) -> Optional[str]:
    """When Jobbergate created the job script of a pending item (the item has no time of its own)."""
    script = item.get("job_script")
    created = script.get("created_at") if isinstance(script, dict) else None
    return created if isinstance(created, str) else None


# ---------------------------------------------------------------------------------------------
# #SBATCH parsing and translation to slurmrestd job JSON
# ---------------------------------------------------------------------------------------------


C_WHITESPACE = " \t\n\v\f\r"  # isspace() in sbatch's C locale: no other character separates words
HETJOB_WORD_RE = re.compile(r"(?:hetjob|packjob)(?=[ \t\n\v\f\r]|\Z)", re.IGNORECASE | re.ASCII)


def _sbatch_word(text: str, position: int) -> tuple[Optional[str], int]:
    """One word from `position`, exactly as sbatch's get_argument (src/sbatch/opt.c) reads it, and
    where it ends: None when it holds no character (an empty "" or '', or a '#' comment)."""
    characters: list[str] = []
    has_word = escaped = False
    quote = ""
    while position < len(text) and (quote or text[position] not in C_WHITESPACE):
        character = text[position]
        if escaped:
            escaped = False
        elif character == "\\":
            position += 1
            if text.startswith(" ", position):  # an escaped space is kept; any other escaped character is read as itself
                characters.append(" ")
                has_word, position = True, position + 1
            else:
                escaped = True
            continue
        elif quote:
            if character == quote:
                quote, position = "", position + 1
                continue
        elif character in "\"'":
            quote, position = character, position + 1
            continue
        elif character == "#":
            break
        characters.append(character)
        has_word, position = True, position + 1
    if quote:
        raise Rejection(f"unterminated {quote} quote in {text.strip()!r}")
    return ("".join(characters) if has_word else None), position


def split_sbatch_words(text: str) -> list[str]:
    """Split the text after '#SBATCH' exactly as sbatch does: ASCII whitespace separates, quotes
    group, a backslash takes the next character as it is, an unquoted '#' starts a comment, and a
    word with no character in it ("" or '') ends the line: sbatch reads nothing after it."""
    words: list[str] = []
    position = 0
    while True:
        while position < len(text) and text[position] in C_WHITESPACE:
            position += 1
        if HETJOB_WORD_RE.match(text, position):  # sbatch ends the job's options at such a word
            raise Rejection("heterogeneous jobs (#SBATCH hetjob) are not supported")
        if text.startswith(":", position):
            raise Rejection(f"a word starting with ':' in {text.strip()!r}: sbatch refuses it")
        word, position = _sbatch_word(text, position)
        if word is None:
            return words
        words.append(word)


SBATCH_PREFIXES = ("#SBATCH", "#SLURM")


def sbatch_block_arguments(script: str) -> list[str]:
    """The arguments of the script's #SBATCH block, read as sbatch reads them (_opt_batch_script):
    every line starting '#SBATCH' or '#SLURM', with or without a space after it, up to the first
    line that is neither blank nor a comment. sbatch gathers the words of all these lines into one
    argument list."""
    arguments: list[str] = []
    # sbatch reads lines ending in "\n" only; str.splitlines() would also split on \r, \v, \x1c...
    for line in script.split("\n"):
        prefix = next((prefix for prefix in SBATCH_PREFIXES if line.startswith(prefix)), None)
        if prefix:
            arguments.extend(split_sbatch_words(line[len(prefix):]))
        elif line.lstrip(C_WHITESPACE)[:1] not in ("", "#"):
            break
    return arguments


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    name: str
    short: Optional[str]
    arg: str  # "required", "none" or "optional"
    translate: Callable[[Optional[str], int], dict[str, Any]]


# Every translator gets the option's value and the API minor version (38 for v0.0.38 ... 44).


def _renamed_key(minor: int, old: str, new: str) -> str:
    return old if minor <= 38 else new


# A number in an option: ASCII digits, at most 18 of them (any such number fits 64 bits, and int() never
# meets Python's limit on digits, whose ValueError would not be a Rejection).
DIGITS = "[0-9]{1,18}"


def _positive_int(option: str, value: str) -> int:
    if not re.fullmatch(DIGITS, value or "") or int(value) <= 0:
        raise Rejection(f"--{option} expects a positive whole number, got {value!r}")
    return int(value)


def parse_time_minutes(option: str, value: str) -> Optional[int]:
    """sbatch time formats to minutes (None = unlimited): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    text = (value or "").strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    match = re.fullmatch(rf"(?:({DIGITS})-)?({DIGITS})(?::({DIGITS}))?(?::({DIGITS}))?", text)
    if not match:
        raise Rejection(f"--{option}: {value!r} is not a Slurm time (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]])")
    days, first, second, third = match.groups()
    if days is not None:  # D-H[:M[:S]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # H:M:S
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # M:S
        seconds = int(first) * 60 + int(second)
    else:  # M
        seconds = int(first) * 60
    if seconds == 0:
        return None  # sbatch: a zero time limit means no limit
    return (seconds + 59) // 60  # Slurm rounds partial minutes up


MEMORY_UNITS_KB = {"K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}


def parse_memory_mb(option: str, value: str) -> int:
    match = re.fullmatch(rf"({DIGITS})([KMGT]?)B?", (value or "").strip().upper())
    if not match:
        raise Rejection(f"--{option}: {value!r} is not a memory size (e.g. 4000, 500M, 4G)")
    # 0 keeps its sbatch meaning (all of a node's memory); kilobytes round up as Slurm does.
    kilobytes = int(match.group(1)) * MEMORY_UNITS_KB[match.group(2) or "M"]
    return (kilobytes + 1023) // 1024


def _number(minor: int, value: Optional[int]) -> Any:
    """Plain ints on v0.0.38; {set, infinite, number} from v0.0.39 on."""
    if minor <= 38:
        return 0 if value is None else value
    if value is None:
        return {"set": True, "infinite": True, "number": 0}
    return {"set": True, "infinite": False, "number": value}


def as_string(key: str) -> Callable[[Optional[str], int], dict[str, Any]]:
    return lambda value, minor: {key: value}


def as_string_renamed(old: str, new: str) -> Callable[[Optional[str], int], dict[str, Any]]:
    return lambda value, minor: {_renamed_key(minor, old, new): value}


def as_int(key: str, option: str) -> Callable[[Optional[str], int], dict[str, Any]]:
    return lambda value, minor: {key: _positive_int(option, value or "")}


def as_time(key: str, option: str) -> Callable[[Optional[str], int], dict[str, Any]]:
    return lambda value, minor: {key: _number(minor, parse_time_minutes(option, value or ""))}


def as_memory(key: str, option: str, object_from_v40: bool = True) -> Callable[[Optional[str], int], dict[str, Any]]:
    """Megabytes; --mem and --mem-per-cpu as {set, number} from v0.0.40, whose memory fields are
    objects (a plain integer is accepted there only with a type warning)."""
    def translate(value: Optional[str], minor: int) -> dict[str, Any]:
        megabytes = parse_memory_mb(option, value or "")
        return {key: _number(minor, megabytes) if object_from_v40 and minor >= 40 else megabytes}

    return translate


def as_flag(key: str, flag_value: Any = True) -> Callable[[Optional[str], int], dict[str, Any]]:
    return lambda value, minor: {key: flag_value}


def not_on(option: str, minors: Iterable[int], why: str,
           translate: Callable[[Optional[str], int], dict[str, Any]]) -> Callable[[Optional[str], int], dict[str, Any]]:
    """Refuse the option by name on the API versions that cannot carry it, before anything reaches Slurm."""
    refused = frozenset(minors)

    def checked(value: Optional[str], minor: int) -> dict[str, Any]:
        if minor in refused:
            raise Rejection(f"--{option} cannot be used with this cluster's slurmrestd API v0.0.{minor}: {why}")
        return translate(value, minor)

    return checked


def translate_no_requeue(value: Optional[str], minor: int) -> dict[str, Any]:
    """v0.0.38 feeds each key to sbatch's option parser, where "requeue" sets requeue whatever its
    value (arg_set_data_requeue): only its own "no_requeue" key clears it there."""
    return {"no_requeue": True} if minor <= 38 else {"requeue": False}


def translate_nodes(value: Optional[str], minor: int) -> dict[str, Any]:
    match = re.fullmatch(rf"({DIGITS})(?:-({DIGITS}))?", (value or "").strip())
    if not match:
        raise Rejection(f"--nodes expects N or MIN-MAX, got {value!r}")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if minor <= 38:
        return {"nodes": value}
    return {"minimum_nodes": low, "maximum_nodes": high}


# sbatch's mail type names (parse_mail_type in proc_args.c) to the API's flag names.
MAIL_TYPE_FLAGS = {
    "BEGIN": ["BEGIN"], "END": ["END"], "FAIL": ["FAIL"], "REQUEUE": ["REQUEUE"], "STAGE_OUT": ["STAGE_OUT"],
    "ARRAY_TASKS": ["ARRAY_TASKS"], "INVALID_DEPEND": ["INVALID_DEPENDENCY"],
    "TIME_LIMIT": ["TIME=100%"], "TIME_LIMIT_90": ["TIME=90%"], "TIME_LIMIT_80": ["TIME=80%"],
    "TIME_LIMIT_50": ["TIME=50%"],
    "ALL": ["BEGIN", "END", "FAIL", "REQUEUE", "STAGE_OUT", "INVALID_DEPENDENCY"],
    "NONE": [],
}


def translate_nice(value: Optional[str], minor: int) -> dict[str, Any]:
    if value is not None and not re.fullmatch(rf"[+-]?{DIGITS}", value):
        raise Rejection(f"--nice expects a whole number, got {value!r}")
    return {"nice": int(value) if value is not None else 100}


def translate_mail_type(value: Optional[str], minor: int) -> dict[str, Any]:
    """sbatch names to the flag list of v0.0.39+; NONE clears them all, as in sbatch."""
    names = [name.strip().upper() for name in (value or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in MAIL_TYPE_FLAGS]
    if unknown or not names:
        raise Rejection(f"--mail-type: {', '.join(unknown) or repr(value)} is not a mail type "
                        f"(one or more of {', '.join(MAIL_TYPE_FLAGS)})")
    if minor <= 38:
        return {"mail_type": value}
    flags: list[str] = []
    for name in names[:names.index("NONE")] if "NONE" in names else names:
        flags += [flag for flag in MAIL_TYPE_FLAGS[name] if flag not in flags]
    return {"mail_type": [] if "NONE" in names else flags}


def translate_exclusive(value: Optional[str], minor: int) -> dict[str, Any]:
    mode = (value or "").strip().lower()
    if mode not in ("", "user", "mcs", "topo"):
        raise Rejection(f"--exclusive accepts no value or user, mcs, topo; got {value!r}")
    if mode == "topo" and minor <= 40:
        raise Rejection(f"--exclusive=topo cannot be used with this cluster's slurmrestd API v0.0.{minor}: "
                        "it knows only user and mcs (topo needs v0.0.41 or later)")
    if minor >= 42:
        return {"shared": mode or "none"}
    return {"exclusive": mode or True} if minor <= 38 else {"exclusive": mode or "true"}


def _gres_to_tres(spec: str) -> str:
    """sbatch's 'gpu:2' to the TRES form 'gres/gpu:2' (build_job_request applies 23.02's 'gres:')."""
    return ",".join("gres/" + part.strip() for part in spec.split(",") if part.strip())


def as_gres(old_key: str, new_key: str, gpu: bool) -> Callable[[Optional[str], int], dict[str, Any]]:
    def translate(value: Optional[str], minor: int) -> dict[str, Any]:
        spec = value or ""
        if minor <= 38:
            return {old_key: spec}
        if gpu:  # --gpus=volta:3 means gpu:volta:3
            parts = [part.strip() for part in spec.split(",") if part.strip()]
            spec = ",".join(part if part.startswith("gpu") else f"gpu:{part}" for part in parts)
        return {new_key: _gres_to_tres(spec)}

    return translate


def merge_tres(earlier: str, later: str) -> str:
    """Two TRES lists for one key (--gres and --gpus-per-node both fill tres_per_node), merged as
    sbatch does: one entry per GRES name, the later option winning for a name both give."""
    merged: dict[str, str] = {}
    for part in earlier.split(",") + later.split(","):
        if part:
            merged[part.split(":")[0]] = part
    return ",".join(merged.values())


def gres_prefix_for(minor: int, release: Optional[str]) -> str:
    """v0.0.39 is served by Slurm 23.02 (TRES type prefix 'gres:') and by 23.11/24.05 ('gres/',
    gres.c at 23.11): the release decides. An unknown release on v0.0.39 means 23.02, its own."""
    if minor == 39 and (release is None or release.startswith("23.02")):
        return "gres:"
    return "gres/"


# Slurm's parse_time() (src/common/parse_time.c), which sbatch --begin and slurmrestd v0.0.40+ use.
TIME_UNITS = (("seconds", 1), ("second", 1), ("minutes", 60), ("minute", 60), ("hours", 3600), ("hour", 3600),
              ("days", 86400), ("day", 86400), ("weeks", 604800), ("week", 604800))
TIME_WORDS = {"midnight": 0, "noon": 12, "fika": 15, "teatime": 16}
CLOCK_RE = re.compile(r"(\d{1,2}):(\d\d)(?::(\d\d))?[ \t]*(am|pm)?", re.IGNORECASE)
DATE_RE = re.compile(r"(\d{4})-(\d\d)-(\d{1,2})|(\d{1,2})[./]?(\d{1,2})[./]?(\d\d)?")


def _delta_seconds(text: str) -> tuple[int, int]:
    """'+N[units]' after 'now': (seconds, characters used); blanks may separate digits."""
    count, digits, index = 0, 0, 1
    while index < len(text):
        if text[index] in " \t":
            index += 1
            continue
        unit = next(((name, factor) for name, factor in TIME_UNITS if text[index:].lower().startswith(name)), None)
        if unit:
            count, index = count * unit[1], index + len(unit[0])
            break
        if text[index] not in "0123456789" or digits == 18:
            raise ValueError(text)
        count, digits, index = count * 10 + int(text[index]), digits + 1, index + 1
    if not digits:
        raise ValueError(text)
    return (-count if text[0] == "-" else count), index


def parse_slurm_time(text: str, now: float) -> int:
    """The epoch seconds Slurm's parse_time(text, past=0) gives, in local time: now[+N[units]],
    today, tomorrow, midnight, noon, fika, teatime, HH:MM[:SS] [AM|PM], MMDD[YY], MM/DD[/YY],
    MM.DD[.YY], YYYY-MM-DD[THH:MM[:SS]], uts<epoch>. ValueError when Slurm would refuse it."""
    if text[:3].lower() == "uts":
        if not re.fullmatch(DIGITS, text[3:]) or int(text[3:]) < 1000000:
            raise ValueError(text)
        return int(text[3:])
    today = time.localtime(now)
    hour = minute = month = mday = year = None
    second = 0
    pos = 0
    while pos < len(text) and text[pos] != "\n":
        rest = text[pos:]
        word = next((w for w in ("today", "tomorrow", *TIME_WORDS, "now") if rest.lower().startswith(w)), None)
        if rest[0] in " \t-T":
            pos += 1
        elif word in ("today", "tomorrow", "now"):
            pos += len(word)
            delta = 0
            if word == "now":
                blanks = len(text[pos:]) - len(text[pos:].lstrip(" \t"))
                if text[pos + blanks:pos + blanks + 1] in ("+", "-"):
                    delta, used = _delta_seconds(text[pos + blanks:])
                    pos += blanks + used
                elif text[pos + blanks:].strip("\n"):
                    raise ValueError(text)
            moment = time.localtime(now + (86400 if word == "tomorrow" else delta))
            month, mday, year = moment.tm_mon - 1, moment.tm_mday, moment.tm_year
            if word == "now":
                hour, minute, second = moment.tm_hour, moment.tm_min, moment.tm_sec
        elif word:
            hour, minute, second = TIME_WORDS[word], 0, 0
            pos += len(word)
        elif not rest[0].isdigit():
            raise ValueError(text)
        elif rest[1:2] == ":" or rest[2:3] == ":":
            clock = CLOCK_RE.match(rest)
            if not clock:
                raise ValueError(text)
            hour, minute, second = int(clock.group(1)), int(clock.group(2)), int(clock.group(3) or 0)
            meridian = (clock.group(4) or "").lower()
            if hour > 23 or minute > 59 or second > 59 or (meridian == "am" and hour > 12) or (
                    meridian == "pm" and hour + 12 > 24):
                raise ValueError(text)
            hour = {"am": 0 if hour == 12 else hour, "pm": 12 if hour == 12 else hour + 12}.get(meridian, hour)
            pos += clock.end()
        else:
            date = DATE_RE.match(rest)
            if not date:
                raise ValueError(text)
            full_year, month_text, day_text = (date.group(1), date.group(2), date.group(3)) if date.group(1) else (
                None, date.group(4), date.group(5))
            month, mday = int(month_text) - 1, int(day_text)
            if not 0 <= month <= 11 or not 1 <= mday <= 31:
                raise ValueError(text)
            if full_year:
                year = int(full_year)
            elif date.group(6):
                year = 2000 + int(date.group(6))
            pos += date.end()
    if hour is None and month is None:
        raise ValueError(text)
    if hour is None:  # a date alone means its midnight
        hour, minute = 0, 0
    elif month is None:  # a time alone means its next occurrence
        moment = today if (hour, minute) > (today.tm_hour, today.tm_min) else time.localtime(now + 86400)
        month, mday, year = moment.tm_mon - 1, moment.tm_mday, moment.tm_year
    if year is None:  # a date without a year means its next occurrence
        ahead = (month, mday, hour, minute) > (today.tm_mon - 1, today.tm_mday, today.tm_hour, today.tm_min)
        year = today.tm_year if ahead else today.tm_year + 1
    return int(time.mktime((year, month + 1, mday, hour, minute or 0, second, 0, 0, -1)))


def translate_begin(value: Optional[str], minor: int) -> dict[str, Any]:
    """Every form sbatch accepts. v0.0.38 reads the sbatch string and v0.0.40+ run Slurm's own
    parse_time() on it, so they get the string; v0.0.39 reads begin_time as a bare integer only
    (an object is dropped without an error, and no job is made), so it gets the epoch."""
    text = (value or "").strip()
    try:
        moment = parse_slurm_time(text, time.time())
    except (ValueError, OverflowError, OSError):  # OSError: a time localtime() cannot represent
        raise Rejection(f"--begin: {value!r} is not a Slurm time (now[+N[seconds|minutes|hours|days|weeks]], today, "
                        "tomorrow, midnight, noon, teatime, HH:MM[:SS], MM/DD[/YY], YYYY-MM-DD[THH:MM[:SS]])") from None
    return {"begin_time": moment if minor == 39 else text}


def translate_signal(value: Optional[str], minor: int) -> dict[str, Any]:
    if minor <= 38:
        return {"signal": value}
    match = re.fullmatch(rf"(?:([RB]{{1,2}}):)?([A-Za-z0-9]+)(?:@({DIGITS}))?", (value or "").strip())
    if not match:
        raise Rejection(f"--signal: {value!r} is not [{{R|B}}:]SIGNAL[@SECONDS]")
    where = match.group(1) or ""
    flags = (["BATCH_JOB"] if "B" in where else []) + (["RESERVATION_JOB"] if "R" in where else [])
    return {"kill_warning_signal": match.group(2), "kill_warning_delay": _number(minor, int(match.group(3) or 60)),
            "kill_warning_flags": flags}


def refuse(reason: str) -> Callable[[Optional[str], int], dict[str, Any]]:
    def translate(value: Optional[str], minor: int) -> dict[str, Any]:
        raise Rejection(reason)

    return translate


def translate_export(value: Optional[str], minor: int) -> dict[str, Any]:
    """--export may only add explicit NAME=value pairs: the job never inherits the agent's environment."""
    exported: dict[str, str] = {}
    for part in (value or "").split(","):
        part = part.strip()
        if part.upper() in ("NONE", "NIL", ""):
            continue
        if part.upper() == "ALL":
            raise Rejection("--export=ALL is not allowed: the job would inherit the agent's environment; "
                            "list the variables as NAME=value")
        name, equals, content = part.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise Rejection(f"--export entry {part!r} must be NAME=value (variables are never copied from the agent)")
        exported[name] = content
    return {"__export__": exported}


# sbatch --profile names (acct_gather_profile_from_string) to the API's ACCT_GATHER_PROFILE flags.
PROFILE_FLAGS = {"ENERGY": ["ENERGY"], "TASK": ["TASK"], "LUSTRE": ["LUSTRE"], "NETWORK": ["NETWORK"],
                 "ALL": ["ENERGY", "LUSTRE", "NETWORK", "TASK"], "NONE": ["NONE"]}


def translate_profile(value: Optional[str], minor: int) -> dict[str, Any]:
    """v0.0.38 feeds sbatch's own parser the text; v0.0.39+ take the flag list ("profile")."""
    names = [name.strip().upper() for name in (value or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in PROFILE_FLAGS]
    if unknown or not names or (len(names) > 1 and ({"ALL", "NONE"} & set(names))):
        raise Rejection(f"--profile: {value!r} is not all, none, or a list of energy, task, lustre, network")
    if minor <= 38:
        return {"profile": ",".join(name.lower() for name in names)}
    return {"profile": [flag for name in names for flag in PROFILE_FLAGS[name]]}


ACCTG_FREQ_RE = re.compile(r"\d+|(?:(?:task|energy|network|filesystem)=\d+)(?:,(?:task|energy|network|filesystem)=\d+)*")


def translate_acctg_freq(value: Optional[str], minor: int) -> dict[str, Any]:
    """The sampling intervals, as sbatch's text in every version ("account_gather_frequency")."""
    text = (value or "").strip().lower()
    if not ACCTG_FREQ_RE.fullmatch(text):
        raise Rejection(f"--acctg-freq: {value!r} is not SECONDS or task=S[,energy=S][,network=S][,filesystem=S]")
    return {"account_gather_frequency": text}


OPTION_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("job-name", "J", "required", as_string("name")),
    OptionSpec("time", "t", "required", as_time("time_limit", "time")),
    OptionSpec("time-min", None, "required", as_time("time_minimum", "time-min")),
    OptionSpec("partition", "p", "required", as_string("partition")),
    OptionSpec("nodes", "N", "required", translate_nodes),
    OptionSpec("ntasks", "n", "required", as_int("tasks", "ntasks")),
    OptionSpec("cpus-per-task", "c", "required", as_int("cpus_per_task", "cpus-per-task")),
    OptionSpec("ntasks-per-node", None, "required", as_int("tasks_per_node", "ntasks-per-node")),
    OptionSpec("mincpus", None, "required", as_int("minimum_cpus_per_node", "mincpus")),
    OptionSpec("mem", None, "required", as_memory("memory_per_node", "mem")),
    OptionSpec("mem-per-cpu", None, "required", as_memory("memory_per_cpu", "mem-per-cpu")),
    OptionSpec("tmp", None, "required", as_memory("temporary_disk_per_node", "tmp", object_from_v40=False)),
    OptionSpec("output", "o", "required", as_string("standard_output")),
    OptionSpec("error", "e", "required", as_string("standard_error")),
    OptionSpec("input", "i", "required", as_string("standard_input")),
    OptionSpec("chdir", "D", "required", as_string("current_working_directory")),
    OptionSpec("account", "A", "required", as_string("account")),
    OptionSpec("qos", "q", "required", as_string("qos")),
    OptionSpec("array", "a", "required", as_string("array")),
    OptionSpec("dependency", "d", "required", as_string("dependency")),
    OptionSpec("comment", None, "required", as_string("comment")),
    OptionSpec("constraint", "C", "required", as_string("constraints")),
    OptionSpec("reservation", None, "required", as_string("reservation")),
    OptionSpec("wckey", None, "required", as_string("wckey")),
    OptionSpec("licenses", "L", "required", as_string("licenses")),
    OptionSpec("nodelist", "w", "required", as_string_renamed("nodelist", "required_nodes")),
    OptionSpec("exclude", "x", "required", as_string_renamed("exclude_nodes", "excluded_nodes")),
    # v0.0.39's parsers for these two are disabled and abort slurmrestd (PARSE_DISABLED -> fatal_abort);
    # v0.0.40 answers a distribution with "does not support parser" and drops it.
    OptionSpec("distribution", "m", "required", not_on(
        "distribution", (39, 40), "slurmrestd cannot parse the task distribution there", as_string("distribution"))),
    OptionSpec("nice", None, "optional", not_on(
        "nice", (39,), "slurmrestd aborts on the nice field there", translate_nice)),
    OptionSpec("mail-type", None, "required", translate_mail_type),
    OptionSpec("mail-user", None, "required", as_string("mail_user")),
    OptionSpec("exclusive", None, "optional", translate_exclusive),
    OptionSpec("requeue", None, "none", as_flag("requeue", True)),
    OptionSpec("no-requeue", None, "none", translate_no_requeue),
    OptionSpec("hold", "H", "none", as_flag("hold", True)),
    # v0.0.38 lists both among its disabled keys (openapi/v0.0.38/jobs.c: "Disabled key").
    OptionSpec("overcommit", "O", "none", not_on(
        "overcommit", (38,), "slurmrestd disables that key there", as_flag("overcommit", True))),
    OptionSpec("contiguous", None, "none", not_on(
        "contiguous", (38,), "slurmrestd disables that key there", as_flag("contiguous", True))),
    OptionSpec("threads-per-core", None, "required", as_int("threads_per_core", "threads-per-core")),
    # Only v0.0.38 (sbatch's own option) and v0.0.40 have a job field for it; the others ignore it.
    OptionSpec("cores-per-socket", None, "required", not_on(
        "cores-per-socket", (39, 41, 42, 43, 44), "that API version has no cores_per_socket job field",
        as_int("cores_per_socket", "cores-per-socket"))),
    OptionSpec("sockets-per-node", None, "required", as_int("sockets_per_node", "sockets-per-node")),
    OptionSpec("gres", None, "required", as_gres("gres", "tres_per_node", gpu=False)),
    OptionSpec("gpus", "G", "required", as_gres("gpus", "tres_per_job", gpu=True)),
    OptionSpec("gpus-per-node", None, "required", as_gres("gpus_per_node", "tres_per_node", gpu=True)),
    OptionSpec("gpus-per-task", None, "required", as_gres("gpus_per_task", "tres_per_task", gpu=True)),
    OptionSpec("begin", "b", "required", translate_begin),
    OptionSpec("signal", None, "required", translate_signal),
    OptionSpec("export", None, "required", translate_export),
    OptionSpec("profile", None, "required", translate_profile),
    OptionSpec("acctg-freq", None, "required", translate_acctg_freq),
    OptionSpec("uid", None, "required", refuse("--uid is not allowed: the job always runs as the submission's owner")),
    OptionSpec("gid", None, "required", refuse("--gid is not allowed: the job always runs with the owner's group")),
    OptionSpec("export-file", None, "required", refuse("--export-file is not allowed: it would read a file as the agent")),
    OptionSpec("get-user-env", None, "optional", refuse("--get-user-env is not supported: use --export=NAME=value")),
    OptionSpec("wrap", None, "required", refuse("--wrap is not allowed: the job script is the submission's entrypoint")),
)
OPTIONS_BY_LONG = {spec.name: spec for spec in OPTION_SPECS}
OPTIONS_BY_SHORT = {spec.short: spec for spec in OPTION_SPECS if spec.short}

# What the sbatch backend checks itself; sbatch judges every other option. The refusals above hold
# there too, and these change what the sbatch command does rather than what the job is.
SBATCH_COMMAND_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("wait", "W", "none", refuse("--wait is not allowed: sbatch would hold the agent until the job ends")),
    OptionSpec("test-only", None, "none", refuse("--test-only is not allowed: it submits nothing")),
    OptionSpec("clusters", "M", "required", refuse(
        "--clusters is not allowed: the job runs on this cluster, where the agent follows it")),
    OptionSpec("cluster", None, "required", refuse(
        "--cluster is not allowed: the job runs on this cluster, where the agent follows it")),
    OptionSpec("external", None, "none", refuse("--external is not allowed: it runs no job script")),
    OptionSpec("help", "h", "none", refuse("--help is not allowed: it submits nothing")),
    OptionSpec("usage", None, "none", refuse("--usage is not allowed: it submits nothing")),
    OptionSpec("version", "V", "none", refuse("--version is not allowed: it submits nothing")),
    OptionSpec("autocomplete", None, "required", refuse("--autocomplete is not allowed: it submits nothing")),
)
SBATCH_CHECKED_OPTIONS = ("uid", "gid", "export-file", "get-user-env", "wrap", "export",
                          *(spec.name for spec in SBATCH_COMMAND_SPECS))
SBATCH_CHECKED_BY_LONG = {**OPTIONS_BY_LONG, **{spec.name: spec for spec in SBATCH_COMMAND_SPECS}}

# sbatch's getopt_long table (src/common/slurm_opt.c): every long option of sbatch 22.05 ... 25.11
# and Slurm's development head, by what it takes. --requeue (25.11 on) and --get-user-env (up to
# 24.11) may carry a value on some releases and take none on others: either way getopt never
# gives them the next word. Checked against each release's own sbatch (tests/test_sbatch_getopt.py).
SBATCH_LONG_OPTIONS: dict[str, str] = {name: kind for kind, names in (
    ("required", "account acctg-freq array autocomplete batch bb bbf begin chdir cluster cluster-constraint clusters comment "
                 "constraint container container-id context core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task "
                 "deadline delay-boot dependency distribution error exclude export export-file extra extra-node-info gid "
                 "gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint input job-name "
                 "kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mem-update "
                 "mincpus network nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node "
                 "ntasks-per-socket ntasks-per-tres open-mode output partition power prefer priority profile qos reservation "
                 "resources runtime segment signal sockets-per-node switches tasks-per-node thread-spec threads-per-core time "
                 "time-min tmp tres-bind tres-per-task uid wait-all-nodes wckey wrap"),
    ("none", "consolidate-segments contiguous external help hold ignore-pbs no-requeue overcommit oversubscribe parsable "
             "quiet reboot spread-job spread-segments stepmgr test-only usage use-min-nodes verbose version wait"),
    ("optional", "exclusive get-user-env nice no-kill oom-kill-step propagate requeue resv-ports"),
) for name in names.split()}
# sbatch's short options (its getopt string "+A:B:C:D:F:G:HJ:L:M:N:OQS:VWa:b:c:d:e:hi:k::m:n:o:p:q:st:vw:x:"),
# each the same as its long option.
SBATCH_SHORT_OPTIONS: dict[str, str] = {
    "A": "account", "B": "extra-node-info", "C": "constraint", "D": "chdir", "F": "nodefile", "G": "gpus", "H": "hold",
    "J": "job-name", "L": "licenses", "M": "clusters", "N": "nodes", "O": "overcommit", "Q": "quiet", "S": "core-spec",
    "V": "version", "W": "wait", "a": "array", "b": "begin", "c": "cpus-per-task", "d": "dependency", "e": "error",
    "h": "help", "i": "input", "k": "no-kill", "m": "distribution", "n": "ntasks", "o": "output", "p": "partition",
    "q": "qos", "s": "oversubscribe", "t": "time", "v": "verbose", "w": "nodelist", "x": "exclude",
}


def _sbatch_long_option(name: str, source: str) -> str:
    """The option getopt_long takes `name` for: itself, else the one option it begins (sbatch's
    table gives every option its own value, so two or more is ambiguous)."""
    if name in SBATCH_LONG_OPTIONS:
        return name
    candidates = [option for option in SBATCH_LONG_OPTIONS if option.startswith(name)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        shown = ", --".join(sorted(candidates)[:4]) + (", ..." if len(candidates) > 4 else "")
        raise Rejection(f"option {'--' + name!r} in {source} is ambiguous (--{shown}): sbatch refuses it")
    raise Rejection(f"unknown option {'--' + name!r} in {source}: sbatch refuses it")


def sbatch_getopt(words: list[str], source: str) -> tuple[list[tuple[str, Optional[str]]], list[str]]:
    """What sbatch's glibc getopt_long makes of `words`: the options in order, as (long name, value)
    pairs, and the words after them (options end at the first word that is not one, and after
    "--"). Short options cluster (-vW is --verbose --wait; -vMother is --verbose --clusters=other);
    a required value is the rest of the word, else the next word whatever it is; an optional one
    only the rest of the word or what follows '='. What getopt reports as an error is a Rejection."""
    options: list[tuple[str, Optional[str]]] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            index -= 1
            break
        if word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            option = _sbatch_long_option(name, source)
            kind = SBATCH_LONG_OPTIONS[option]
            if kind == "none" and equals:
                raise Rejection(f"option --{option} in {source} takes no value: sbatch refuses it")
            if kind == "required" and not equals:
                if index == len(words):
                    raise Rejection(f"option --{option} in {source} needs a value")
                value, index = words[index], index + 1
            options.append((option, value if equals or kind == "required" else None))
            continue
        position = 1
        while position < len(word):
            letter = word[position]
            position += 1
            if letter not in SBATCH_SHORT_OPTIONS:
                raise Rejection(f"unknown option {'-' + letter!r} in {source} (in {word!r}): sbatch refuses it")
            option = SBATCH_SHORT_OPTIONS[letter]
            kind = SBATCH_LONG_OPTIONS[option]
            if kind == "none":
                options.append((option, None))
                continue
            value: Optional[str] = word[position:] or None
            if value is None and kind == "required":
                if index == len(words):
                    raise Rejection(f"option -{letter} (--{option}) in {source} needs a value")
                value, index = words[index], index + 1
            options.append((option, value))
            break
    return options, words[index:]


@dataclasses.dataclass(frozen=True)
class ParsedOption:
    spec: OptionSpec
    value: Optional[str]
    source: str  # "#SBATCH" or "sbatch_arguments"


def _find_long_option(name: str, source: str) -> OptionSpec:
    """Exact long name, else a unique prefix (sbatch uses getopt_long, which accepts one)."""
    if name in OPTIONS_BY_LONG:
        return OPTIONS_BY_LONG[name]
    candidates = [spec for long_name, spec in OPTIONS_BY_LONG.items() if long_name.startswith(name)]
    if len(candidates) == 1 and name:
        return candidates[0]
    raise Rejection(f"unsupported option --{name} in {source}: this cluster cannot translate it for slurmrestd")


def _passed_to_sbatch(name: str) -> OptionSpec:
    """An option this tool does not know, left for sbatch to judge (never translated)."""
    return OptionSpec(name, None, "optional", refuse(f"--{name} cannot be translated for slurmrestd"))


def parse_options(words: list[str], source: str) -> list[ParsedOption]:
    """getopt_long-style parsing of the options this tool translates for slurmrestd: --opt=value,
    --opt value, -o value, -ovalue."""
    parsed: list[ParsedOption] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            spec = _find_long_option(name, source)
            if spec.arg == "none" and equals:
                raise Rejection(f"option --{spec.name} takes no value (in {source})")
            if spec.arg == "required" and not equals:
                if index >= len(words):
                    raise Rejection(f"option --{spec.name} needs a value (in {source})")
                value, index = words[index], index + 1
            parsed.append(ParsedOption(spec, value if (equals or spec.arg == "required") else None, source))
        elif word.startswith("-") and len(word) > 1:
            spec = OPTIONS_BY_SHORT.get(word[1])
            if spec is None:
                raise Rejection(f"unsupported option {word[:2]} in {source}: this cluster cannot translate it for slurmrestd")
            value = word[2:] or None
            if spec.arg == "required" and value is None:
                if index >= len(words):
                    raise Rejection(f"option -{spec.short} needs a value (in {source})")
                value, index = words[index], index + 1
            elif spec.arg == "none" and value is not None:
                raise Rejection(f"option -{spec.short} takes no value (in {source})")
            parsed.append(ParsedOption(spec, value, source))
        else:
            raise Rejection(f"unexpected argument {word!r} in {source}: only options are allowed")
    return parsed


def validate_option_value(option: ParsedOption) -> None:
    refused = control_character(option.value or "")
    if refused:
        raise Rejection(f"the value of --{option.spec.name} in {option.source} contains a newline, NUL or other "
                        f"control character ({refused})")


def sbatch_options(words: list[str], source: str) -> list[ParsedOption]:
    """The options sbatch reads from `words`; a word left after them is refused, as sbatch refuses
    it in #SBATCH lines and would run it as the script on its command line."""
    options, rest = sbatch_getopt(words, source)
    if rest:
        why = ("sbatch refuses the script (it reads every line starting with '#SBATCH', with or without a space after it)"
               if source == "#SBATCH" else "only options are allowed (sbatch would take it for the script)")
        raise Rejection(f"unexpected argument {rest[0]!r} in {source}: {why}")
    return [ParsedOption(SBATCH_CHECKED_BY_LONG.get(name) or _passed_to_sbatch(name), value, source) for name, value in options]


def canonical_sbatch_word(option: ParsedOption) -> str:
    """One --option or --option=value word, which sbatch reads back as exactly that option and value."""
    return f"--{option.spec.name}" if option.value is None else f"--{option.spec.name}={option.value}"


def api_minor(api_version: str) -> int:
    """38 for v0.0.38 ... 44 for v0.0.44."""
    return int(API_VERSION_RE.match(api_version).group(1))  # type: ignore[union-attr]


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """A job for slurmrestd: the job JSON of one API version."""

    payload: dict[str, Any]
    working_directory: str
    # Which option produced each job field, to name it when Slurm says it dropped the field.
    options_by_field: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.payload["job"]["name"]

    def shown(self) -> str:
        """What a dry run prints (the script left out)."""
        return json.dumps({key: value for key, value in self.payload["job"].items() if key != "script"},
                          sort_keys=True)[:2000]


@dataclasses.dataclass(frozen=True)
class SbatchRequest:
    """A job for sbatch: `sbatch --parsable ARGUMENTS` run as the user in `directory`, with the
    script on its standard input and `environment` as its whole environment (which sbatch gives the
    job). sbatch reads the script's #SBATCH block itself."""

    name: str
    directory: str
    working_directory: str  # the job's, after any --chdir
    arguments: list[str]
    environment: dict[str, str]
    script: str

    def shown(self) -> str:
        return f"sbatch --parsable {shlex.join(self.arguments)} (the script on its standard input)"


MAX_TAG_TIME_CHARACTERS = 32  # an ISO 8601 time with microseconds and an offset fits in 28


def id_only_tag(cluster: str, submission_id: int) -> str:
    """The tag as versions before submission_tag had the job script's time wrote it: journals may still hold it."""
    return f"jobbergate-sync:{cluster}:{submission_id}"


def submission_tag(cluster: str, submission_id: int, script_created_at: Optional[str]) -> str:
    """The mark put in the Slurm job's comment so a later pass can find the job after a crash: the
    submission's id and when its job script was created (letters and digits only: 2026-11-26T16:08:48.9Z
    gives 20261126T160848.9Z). The id alone is not enough: a recreated or restored Jobbergate database
    hands out ids from 1 again while slurmdbd keeps the jobs tagged with the old ones."""
    created = re.sub(r"[^0-9A-Za-z.]", "", script_created_at or "")[:MAX_TAG_TIME_CHARACTERS]
    return f"{id_only_tag(cluster, submission_id)}:{created}"


def comment_has_tag(comment: Any, tag: str) -> bool:
    return isinstance(comment, str) and (comment == tag or comment.startswith(tag + " "))


def tagged_comment(tag: str, user_comment: Optional[str]) -> str:
    """The job's comment: the tag first, then the user's own --comment, if any."""
    return f"{tag} {user_comment}" if user_comment else tag


# Fields that sbatch treats as one setting: giving one discards the other, the later one winning
# (_validate_memory_options in slurm_opt.c). slurmrestd would parse both and keep the node value.
# v0.0.38's requeue and no_requeue are two such fields too (see translate_no_requeue).
RIVAL_FIELDS = {"memory_per_node": "memory_per_cpu", "memory_per_cpu": "memory_per_node",
                "requeue": "no_requeue", "no_requeue": "requeue"}
TRES_FIELDS = ("tres_per_node", "tres_per_job", "tres_per_task")
# slurmrestd v0.0.40 of Slurm 23.11.0 and 23.11.1 aborts on the nice field (fixed in 23.11.2).
NICE_ABORTS_RELEASES = ("23.11.0", "23.11.1")


def translate_options(options: list[ParsedOption], minor: int) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The job fields of the options in order (a later option wins), the --export additions, and
    which option gave each field."""
    fields: dict[str, Any] = {}
    exported: dict[str, str] = {}
    sources: dict[str, str] = {}
    for option in options:
        validate_option_value(option)
        translated = option.spec.translate(option.value, minor)
        exported.update(translated.pop("__export__", {}))
        for key, value in translated.items():
            if key in TRES_FIELDS and key in fields and sources.get(key) != f"--{option.spec.name}":
                value = merge_tres(fields[key], value)  # --gres and --gpus-per-node: one tres_per_node
            fields.pop(RIVAL_FIELDS.get(key, ""), None)
            fields[key] = value
            sources[key] = f"--{option.spec.name}"
    return fields, exported, sources


def build_job_request(
    script: str,
    sbatch_arguments: Iterable[str],
    default_name: str,
    working_directory: str,
    environment: dict[str, str],
    tag: str,
    minor: int,
    release: Optional[str] = None,
) -> JobRequest:
    """Merge the script's #SBATCH block with the submission's sbatch_arguments (they win, as on the
    sbatch command line) and translate them to the slurmrestd job JSON of API v0.0.`minor`.
    `release` is the Slurm release serving it, when known (GRES prefix on v0.0.39, nice on v0.0.40)."""
    options = parse_options(sbatch_block_arguments(script), "#SBATCH")
    options += parse_options(sbatch_argument_words(sbatch_arguments), "sbatch_arguments")
    fields, exported, sources = translate_options(options, minor)
    if minor == 40 and "nice" in fields and release in NICE_ABORTS_RELEASES:
        raise Rejection(f"--nice cannot be used with this cluster's slurmrestd (Slurm {release}, API v0.0.40): "
                        "it aborts on the nice field; Slurm 23.11.2 fixed that")
    prefix = gres_prefix_for(minor, release)
    for key in TRES_FIELDS:
        if key in fields and prefix != "gres/":
            fields[key] = fields[key].replace("gres/", prefix)
    cwd = fields.pop("current_working_directory", None) or working_directory
    cwd = os.path.normpath(os.path.join(working_directory, cwd))
    for key in ("standard_output", "standard_error", "standard_input"):
        if key in fields and not fields[key].startswith("/"):
            fields[key] = os.path.join(cwd, fields[key])  # sbatch resolves these against the job's cwd
    comment = tagged_comment(tag, fields.pop("comment", None))
    job: dict[str, Any] = {"name": default_name, **fields, "current_working_directory": cwd, "comment": comment}
    env = {**environment, **exported}
    if minor <= 38:
        job["environment"] = env
        return JobRequest({"script": script, "job": job}, cwd, sources)
    job["environment"] = [f"{name}={value}" for name, value in env.items()]
    if minor == 39:
        return JobRequest({"script": script, "job": job}, cwd, sources)
    job["script"] = script
    return JobRequest({"job": job}, cwd, sources)


def sbatch_argument_words(sbatch_arguments: Iterable[str]) -> list[str]:
    """One word list, as on a command line: ["--nodes", "2"] and ["--nodes 2"] mean the same."""
    words: list[str] = []
    for argument in sbatch_arguments:
        refused = control_character(argument)
        if refused:
            raise Rejection(f"sbatch_arguments entry {argument!r} contains a newline, NUL or other control character ({refused})")
        words += split_sbatch_words(argument)
    return words


def build_sbatch_request(script: str, sbatch_arguments: Iterable[str], default_name: str, directory: str,
                         environment: dict[str, str], tag: str) -> SbatchRequest:
    """The sbatch command of a submission. sbatch reads the script's #SBATCH block itself, the way
    sbatch_block_arguments reads it here; sbatch_arguments are parsed as sbatch's getopt_long parses
    them and handed to sbatch re-written from that parse, one --option[=value] word each, never as
    the user wrote them. --ignore-pbs keeps sbatch from reading #PBS and #BSUB lines. This tool
    refuses, by name, the options a job may not carry (as on the slurmrestd path, and those that
    change what sbatch itself does), and sets the job name and the comment led by the tag, last, as
    the options give them; the job's name and directory in the journal come from the same parse."""
    block = sbatch_options(sbatch_block_arguments(script), "#SBATCH")
    given = sbatch_options(sbatch_argument_words(sbatch_arguments), "sbatch_arguments")
    last: dict[str, Optional[str]] = {}
    for option in block + given:
        validate_option_value(option)
        if option.spec.name in SBATCH_CHECKED_OPTIONS:
            option.spec.translate(option.value, NEWEST_API_MINOR)  # a refusal, or --export's checks
        last[option.spec.name] = option.value
    name = last.get("job-name") or default_name
    refused = control_character(name)
    if refused:
        raise Rejection(f"the job name {name!r} contains a control character ({refused})")
    comment = tagged_comment(tag, last.get("comment"))
    working_directory = os.path.normpath(os.path.join(directory, last.get("chdir") or directory))
    arguments = ["--ignore-pbs", *map(canonical_sbatch_word, given), f"--job-name={name}", f"--comment={comment}"]
    return SbatchRequest(name, directory, working_directory, arguments, environment, script)


def script_text(script_bytes: bytes, filename: str) -> str:
    try:
        script = script_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(f"entrypoint {filename!r} is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in script:
        raise Rejection(f"entrypoint {filename!r} contains a NUL byte")
    if not script.startswith("#!"):
        raise Rejection(f"entrypoint {filename!r} does not start with '#!' (e.g. #!/bin/bash); Slurm cannot run it")
    return script


# ---------------------------------------------------------------------------------------------
# Slurm job states: normalisation and reports
# ---------------------------------------------------------------------------------------------

# The 25 slurm_job_state names jobbergate-api accepts (anything else is a 422).
JOBBERGATE_JOB_STATES = frozenset(
    """BOOT_FAIL CANCELLED COMPLETED COMPLETING CONFIGURING DEADLINE FAILED NODE_FAIL
    OUT_OF_MEMORY PENDING PREEMPTED RUNNING RESV_DEL_HOLD REQUEUE_FED REQUEUE_HOLD REQUEUED
    RESIZING REVOKED SIGNALING SPECIAL_EXIT STAGE_OUT STOPPED SUSPENDED TIMEOUT UNKNOWN""".split()
)
# Slurm base states; a list-valued job_state mixes one of these with flags.
SLURM_BASE_STATES = (
    "PENDING RUNNING SUSPENDED COMPLETED CANCELLED FAILED TIMEOUT NODE_FAIL PREEMPTED "
    "BOOT_FAIL DEADLINE OUT_OF_MEMORY".split()
)
# States after which a Slurm job will not run again.
SLURM_FINAL_STATES = frozenset(
    "COMPLETED CANCELLED FAILED TIMEOUT NODE_FAIL PREEMPTED BOOT_FAIL DEADLINE OUT_OF_MEMORY "
    "SPECIAL_EXIT UNKNOWN".split()
)

@dataclasses.dataclass(frozen=True)
class StateReport:
    """What the tool tells Jobbergate about one Slurm job."""

    job_id: Optional[int]
    state: str
    reason: Optional[str]
    info: str


def normalise_state_name(raw: Any) -> Optional[str]:
    """One of Jobbergate's 25 names, from a decorated or truncated Slurm name, else None."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    word = raw.strip().split()[0].upper()  # "CANCELLED by 0" -> "CANCELLED"
    if word in JOBBERGATE_JOB_STATES:
        return word
    if word.endswith("+"):  # squeue/sacct truncation: "OUT_OF_ME+"
        matches = [name for name in JOBBERGATE_JOB_STATES if name.startswith(word[:-1])]
        if len(matches) == 1:
            return matches[0]
    return None


def normalise_job_state(raw: Any) -> Optional[str]:
    """A string, or a list of base state plus flags (v0.0.40+): prefer the base state."""
    names = [normalise_state_name(item) for item in (raw if isinstance(raw, list) else [raw])]
    names = [name for name in names if name]
    for name in names:
        if name in SLURM_BASE_STATES:
            return name
    return names[0] if names else None


def unwrap_number(value: Any) -> Optional[int]:
    """Plain int, or {set, infinite, number}: set false or infinite -> None."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def exit_code_text(value: Any) -> Optional[str]:
    """Human text for a job's exit code in any of its shapes (raw wait status or structured)."""
    if isinstance(value, dict) and ("return_code" in value or "signal" in value):
        signal_info = value.get("signal") or {}
        signal_id = unwrap_number(signal_info.get("id")) if isinstance(signal_info, dict) else None
        if signal_id:
            return f"signal {signal_info.get('name') or signal_id}"
        code = unwrap_number(value.get("return_code"))
        return f"exit code {code}" if code else None
    status = unwrap_number(value)
    if not status:
        return None
    if status & 0x7F:
        return f"signal {status & 0x7F}"
    return f"exit code {status >> 8}"


def state_report(job_id: int, state_raw: Any, reason_raw: Any, exit_code: Any, record: Any) -> Optional[StateReport]:
    """Translate one Slurm record to a report; None when the state is not one Jobbergate knows.
    OUT_OF_MEMORY is not terminal in Jobbergate, so it is reported as FAILED (reason OutOfMemory)."""
    state = normalise_job_state(state_raw)
    if state is None:
        return None
    reason = reason_raw if isinstance(reason_raw, str) and reason_raw not in ("", "None") else None
    if state == "OUT_OF_MEMORY":
        state, reason = "FAILED", "OutOfMemory"
    if state == "FAILED":
        detail = exit_code_text(exit_code)
        if detail:
            reason = f"{reason or 'Failed'} ({detail})"
    return StateReport(job_id, state, reason, json.dumps(record, sort_keys=True, default=str))


def report_from_slurmctld(job: Mapping[str, Any]) -> Optional[StateReport]:
    return state_report(job["job_id"], job.get("job_state"), job.get("state_reason"), job.get("exit_code"), job)


# What a failed job's report says when slurmdbd's API cannot give its exit code.
UNKNOWN_EXIT_CODE_REASON = "Failed (exit code unknown: Slurm's accounting API before v0.0.40 does not give it; sacct does)"


def report_from_slurmdbd(job: Mapping[str, Any]) -> Optional[StateReport]:
    """slurmdbd records: trust state.current; exit_code only in its structured form. dbv0.0.38 and
    v0.0.39 (whose exit_code status is a string) say SUCCESS, return code 0, for every job that
    exited, failed ones too: a failed job read there is reported with its exit code unknown."""
    state = job.get("state") if isinstance(job.get("state"), dict) else {}
    exit_code = job.get("exit_code") if isinstance(job.get("exit_code"), dict) and "return_code" in job["exit_code"] else None
    reason = state.get("reason")
    if exit_code is not None and isinstance(exit_code.get("status"), str):
        exit_code = None
        if normalise_job_state(state.get("current")) == "FAILED" and reason in (None, "", "None"):
            reason = UNKNOWN_EXIT_CODE_REASON
    return state_report(job["job_id"], state.get("current"), reason, exit_code, job)


def array_job_id_of(job: Mapping[str, Any]) -> Optional[int]:
    """The array a slurmctld (array_job_id) or slurmdbd (array.job_id) record belongs to; None if none."""
    array = job.get("array")
    value = unwrap_number(array.get("job_id") if isinstance(array, dict) else job.get("array_job_id"))
    return value or None


def array_task_label(job: Mapping[str, Any]) -> str:
    """The task id, or the still unsplit pending tasks ("2-5") of an array record."""
    array = job.get("array") if isinstance(job.get("array"), dict) else {}
    task = unwrap_number(array.get("task_id") if array else job.get("array_task_id"))
    if task is not None:
        return str(task)
    return str((array.get("task") if array else job.get("array_task_string")) or "?")


def is_full_record(job: Mapping[str, Any]) -> bool:
    """A slurmctld record with the job's details (GET job, GET jobs), not only its state (GET jobs/state)."""
    return "state_reason" in job


def job_records_of(records: Iterable[Any], job_id: int) -> list[dict[str, Any]]:
    """The records of Slurm job `job_id`: the job itself, or every task of the array it started.
    After the split the array's own id belongs to its last task; all tasks share array_job_id."""
    return [job for job in records if isinstance(job, dict)
            and (array_job_id_of(job) == job_id or (job.get("job_id") == job_id and not array_job_id_of(job)))]


ARRAY_OUTCOME_WORDS = {"FAILED": "failed", "CANCELLED": "cancelled", "TIMEOUT": "timed out",
                       "NODE_FAIL": "lost their node", "PREEMPTED": "preempted", "BOOT_FAIL": "failed to boot",
                       "DEADLINE": "missed their deadline"}


def array_report(job_id: int, tasks: list[tuple[str, dict[str, Any], StateReport]]) -> StateReport:
    """One state for a whole array: PENDING while every task pends, RUNNING while any task is not
    finished, COMPLETED when all completed, else the failure (FAILED first) naming the tasks."""
    summary = [{"task": label, "job_id": record.get("job_id"), "state": report.state, "reason": report.reason}
               for label, record, report in sorted(tasks, key=lambda task: (len(task[0]), task[0]))]
    info = json.dumps({"array_job_id": job_id, "tasks": summary}, sort_keys=True)
    states = [report.state for _, _, report in tasks]
    if all(state == "PENDING" for state in states):
        return StateReport(job_id, "PENDING", tasks[0][2].reason, info)
    unfinished = [state for state in states if state not in SLURM_FINAL_STATES]
    if unfinished:
        done = len(states) - len(unfinished)
        return StateReport(job_id, "RUNNING", f"array: {done} of {len(states)} task records finished", info)
    failures: dict[tuple[str, str], list[str]] = {}
    for task in summary:
        if task["state"] != "COMPLETED":
            detail = re.search(r"\((.*)\)$", task["reason"] or "")
            failures.setdefault((task["state"], f" ({detail.group(1)})" if detail else ""), []).append(task["task"])
    if not failures:
        return StateReport(job_id, "COMPLETED", None, info)
    state = "FAILED" if any(key[0] == "FAILED" for key in failures) else next(iter(failures))[0]
    reason = "; ".join(f"array task{'s' if len(labels) > 1 else ''} {', '.join(labels)} "
                       f"{ARRAY_OUTCOME_WORDS.get(failed, failed.lower())}{detail}"
                       for (failed, detail), labels in failures.items())
    return StateReport(job_id, state, reason, info)


def report_from_records(job_id: int, records: list[dict[str, Any]],
                        report_of: Callable[[Mapping[str, Any]], Optional[StateReport]]) -> Optional[StateReport]:
    """The report of a job from its slurmctld or slurmdbd records: one job, or all tasks of an array."""
    if len(records) == 1 and not array_job_id_of(records[0]):
        return report_of(records[0])
    tasks = []
    for record in records:
        report = report_of(record)
        if report is None:
            return None
        tasks.append((array_task_label(record), record, report))
    return array_report(job_id, tasks) if tasks else None


# ---------------------------------------------------------------------------------------------
# User mapping
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: str


USERNAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
# An owner email as every mapper takes it: printable ASCII without blanks, one '@' between two parts.
EMAIL_RE = re.compile(r"[!-?A-~]+@[!-?A-~]+")
DOMAIN_RE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


def canonical_email(email: str) -> str:
    """The one form of an owner email that every mapper and the LDAP cache use: ASCII, lowercased.
    Anything else is refused, never normalised: Unicode case folding maps distinct characters onto
    ASCII letters (the Kelvin sign onto k), which would make two identities one account."""
    if not EMAIL_RE.fullmatch(email):
        raise Rejection(f"owner email {ascii(email)} is not a plain ASCII address (local-part@domain, without blanks "
                        "or other characters); this cluster maps only such addresses to accounts")
    return email.lower()


def mapper_domains(text: str) -> tuple[str, ...]:
    """[mapper] domains: the names, lowercased, in a comma- or space-separated list."""
    return tuple(domain.lower() for domain in re.split(r"[\s,]+", text or "") if domain)


def lookup_user(name: str) -> Optional[LocalUser]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def read_map_file(path: str) -> dict[str, str]:
    """Lines 'email username'; '#' starts a comment; emails compare in their canonical form
    (canonical_email: ASCII, case-insensitively)."""
    mapping: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"[mapper] map_file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or "@" not in words[0]:
            raise ConfigError(f"[mapper] map_file {path} line {number}: expected 'email username'")
        try:
            mapping[canonical_email(words[0])] = words[1]
        except Rejection:
            raise ConfigError(f"[mapper] map_file {path} line {number}: {words[0]!r} is not a plain ASCII email "
                              "address; non-ASCII addresses are never mapped") from None
    return mapping


# LDAP: owner email -> the username in one directory entry, over TLS only (an answer forged on the
# wire would run jobs as someone else). The client library is an optional extra, imported here only.

LDAP_EXTRA_HINT = "pip install 'jobbergate-sync[ldap]' (the ldap3 library)"
LDAP_CACHE_FILE = "ldap-cache.json"
LDAP_DEFAULT_PORTS = {"ldaps": 636, "ldap": 389}
# Result codes (RFC 4511 4.1.9) that say the directory is busy or cut short, not that we are wrong.
LDAP_TRANSIENT_RESULTS = {3: "timeLimitExceeded", 11: "adminLimitExceeded", 51: "busy", 52: "unavailable"}
LDAP_INVALID_CREDENTIALS = 49
LDAP_NO_SUCH_OBJECT = 32
LDAP_SIZE_LIMIT_EXCEEDED = 4  # the entries sent are kept: two of them are enough to refuse
LDAP_MATCHES_ASKED = 3  # enough to tell one entry from several, and to name a few of them


def import_ldap3() -> Any:
    try:
        import ldap3  # an optional extra: only the ldap mapper needs it
    except ImportError:
        raise ConfigError(f"[mapper] type = ldap needs the LDAP client library: {LDAP_EXTRA_HINT}") from None
    return ldap3


def validate_ldap_ca_file(path: str) -> None:
    """Refuse a CA file Python cannot load (missing, unreadable, not PEM) before any connection."""
    if not path:
        return
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[mapper] ldap_ca_file {path}: not a readable PEM CA certificate file "
                          f"({getattr(exc, 'strerror', None) or exc})") from None


def ldap_settings_problems(mapper: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with the [mapper] ldap_* settings of type = ldap, as (section.key, message)."""
    problems = []
    url = urllib.parse.urlsplit(mapper["ldap_url"])
    try:
        port_ok = url.port is None or url.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if url.scheme not in LDAP_DEFAULT_PORTS or not url.hostname or not port_ok or url.path not in ("", "/"):
        problems.append(("mapper.ldap_url", "required by the ldap mapper: ldaps://host[:port], or ldap://host[:port] "
                                            "with ldap_starttls = true"))
    elif url.scheme == "ldap" and not mapper["ldap_starttls"]:
        problems.append(("mapper.ldap_starttls", "must be true with an ldap:// URL: the directory decides which "
                                                 "account jobs run as, so it is never asked in clear text"))
    elif url.scheme == "ldaps" and mapper["ldap_starttls"]:
        problems.append(("mapper.ldap_starttls", "must be false with an ldaps:// URL (already TLS)"))
    if not mapper["ldap_base_dn"]:
        problems.append(("mapper.ldap_base_dn", "required by the ldap mapper"))
    search = mapper["ldap_filter"]
    if "{email}" not in search or not (search.startswith("(") and search.endswith(")")):
        problems.append(("mapper.ldap_filter", "must be a parenthesised LDAP filter holding {email}, "
                                               "e.g. (mail={email})"))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", mapper["ldap_attribute"]):
        problems.append(("mapper.ldap_attribute", "must name one attribute, e.g. uid"))
    if bool(mapper["ldap_bind_dn"]) != bool(mapper["ldap_password_file"]):
        problems.append(("mapper.ldap_bind_dn", "set both ldap_bind_dn and ldap_password_file, "
                                                "or neither (an anonymous bind)"))
    return problems


def whole_seconds(seconds: float) -> int:
    """ldap3's receive timeout and LDAP's search time limit are whole seconds: rounded up, at least 1."""
    return max(1, int(-(-seconds // 1)))


def ldap_filter_value(text: str) -> str:
    """`text` escaped for an LDAP filter value (RFC 4515): an email cannot widen or break the filter."""
    return "".join(f"\\{ord(char):02x}" if char in "*()\\\0" else char for char in text)


def ldap_search_filter(template: str, email: str) -> str:
    return template.replace("{email}", ldap_filter_value(email))


def ldap_matched_attributes(template: str) -> list[str]:
    """The attributes the filter compares the email with, as in (mail={email}): an entry found must
    hold the email in one of them, and they are what the cache keeps."""
    return sorted({name.lower() for name in re.findall(r"\(([A-Za-z][A-Za-z0-9-]*)=\{email\}\)", template)})


def ldap_matched_values(attributes: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """The ASCII values, lowercased, of the matched attributes of an entry (canonical emails)."""
    return sorted({value.lower() for name in names for value in ldap_attribute_values(attributes, name)
                   if value.isascii()})


def ldap_attribute_values(attributes: Mapping[str, Any], name: str) -> list[str]:
    """The values of attribute `name` (names compare case-insensitively), one or many, as text."""
    for key, value in attributes.items():
        if key.lower() == name.lower():
            values = value if isinstance(value, (list, tuple)) else [value]
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values if v not in ("", b"")]
    return []


def username_from_entries(email: str, entries: list[tuple[str, Mapping[str, Any]]], attribute: str) -> str:
    """The username of the one entry found for `email`; none, several, or one without the attribute
    is permanent: a Rejection naming what was found."""
    if not entries:
        raise Rejection(f"owner email {email!r} has no entry in this cluster's LDAP directory")
    if len(entries) > 1:
        shown = "; ".join(dn for dn, _ in entries)
        more = " (at least)" if len(entries) >= LDAP_MATCHES_ASKED else ""
        raise Rejection(f"owner email {email!r} matches {len(entries)}{more} entries in this cluster's LDAP "
                        f"directory ({shown}); it must match exactly one")
    dn, attributes = entries[0]
    values = sorted(set(ldap_attribute_values(attributes, attribute)))
    if len(values) != 1:
        has = f"several {attribute} values ({', '.join(values)})" if values else f"no {attribute}"
        raise Rejection(f"owner email {email!r}: LDAP entry {dn} has {has}; one is needed to name the account")
    return values[0]


def ldap_result_error(operation: str, result: Mapping[str, Any], mapper: Mapping[str, Any]) -> Optional[SyncError]:
    """The failure an LDAP result code means, or None when it is a success."""
    code = result.get("result")
    if code in (0, LDAP_SIZE_LIMIT_EXCEEDED):
        return None
    said = f"{result.get('description') or code}{': ' + result['message'] if result.get('message') else ''}"
    where = f"LDAP {operation} at {mapper['ldap_url']}"
    if code in LDAP_TRANSIENT_RESULTS:
        return Unavailable(f"{where}: {said}")
    if code == LDAP_INVALID_CREDENTIALS:
        return AuthError(f"{where} refused the credentials of [mapper] ldap_bind_dn {mapper['ldap_bind_dn']} "
                         f"({said}): check it and ldap_password_file")
    if code == LDAP_NO_SUCH_OBJECT and operation == "search":
        return ConfigError(f"{where}: [mapper] ldap_base_dn {mapper['ldap_base_dn']} does not exist ({said})")
    return ConfigError(f"{where} failed ({said}); check the [mapper] ldap_* settings")


def ldap_connection_error(exc: Exception, mapper: Mapping[str, Any]) -> SyncError:
    """What a failure to reach or talk to the directory means: a certificate the CA file does not
    vouch for is configuration (no retry will fix it); anything else is an outage."""
    text = str(exc)
    if isinstance(exc, import_ldap3().core.exceptions.LDAPConfigurationError):
        return ConfigError(f"LDAP server {mapper['ldap_url']}: the client refused the [mapper] ldap_* settings "
                           f"({type(exc).__name__}: {text[:300]})")
    if "CERTIFICATE_VERIFY_FAILED" in text or "doesn't match any name" in text:
        trusted_by = f"[mapper] ldap_ca_file {mapper['ldap_ca_file']}" if mapper["ldap_ca_file"] else "the system's CAs"
        return ConfigError(f"LDAP server {mapper['ldap_url']}: its TLS certificate is not trusted by {trusted_by} "
                           f"or does not name the host ({type(exc).__name__}: {text[:300]})")
    return Unavailable(f"LDAP server {mapper['ldap_url']}: {type(exc).__name__}: {text[:300]}")


class LdapDirectory:
    """Email -> username searches in the directory of [mapper] ldap_*, through one connection (opened,
    TLS, bound on first use) and a small cache of found usernames in the state directory. Several
    threads may ask at once: the connection and the cache are used under one lock. Once the
    directory is found unreachable, the rest of the pass does not wait for it again (PeerDown)."""

    def __init__(self, config: Config, cache_path: Optional[str], clock: Callable[[], float] = time.time):
        self.ldap3 = import_ldap3()
        self.settings = dict(config.sections["mapper"])
        self.password = config.ldap_password
        REDACTOR.add(self.password)
        self.cache_path = cache_path if self.settings["ldap_cache_ttl"] > 0 else None
        self.clock = clock
        self.lock = threading.Lock()
        self.connection: Any = None
        self.down: Optional[str] = None
        self.cache: Optional[dict[str, Any]] = None

    def username_for(self, email: str) -> str:
        """The username of the one entry holding `email` (canonical_email) in an attribute the filter
        compares it with; cached only then, with those values, so that a cached answer is one the
        directory gave for this very address (ASCII, compared ignoring case)."""
        key = canonical_email(email)
        matched = ldap_matched_attributes(self.settings["ldap_filter"])
        with self.lock:
            username = self._cached(key)
            if username is None:
                found = self._search(ldap_search_filter(self.settings["ldap_filter"], key), base_only=False,
                                     extra_attributes=matched)
                username = username_from_entries(email, found, self.settings["ldap_attribute"])
                values = ldap_matched_values(found[0][1], matched)
                if matched and key not in values:
                    raise Rejection(f"owner email {email!r}: LDAP entry {found[0][0]} matched it, but none of its "
                                    f"{', '.join(matched)} values is that address")
                if matched:
                    self._remember(key, username, values)
            return username

    def probe(self) -> str:
        """Connect, bind and read the base entry, as `check` does; what was reached."""
        with self.lock:
            self._search("(objectClass=*)", base_only=True)
        how = "StartTLS" if self.settings["ldap_starttls"] else "LDAPS"
        who = self.settings["ldap_bind_dn"] or "anonymous"
        return f"{self.settings['ldap_url']} ({how}), bound as {who}, base {self.settings['ldap_base_dn']} readable"

    def _search(self, search_filter: str, base_only: bool,
                extra_attributes: Iterable[str] = ()) -> list[tuple[str, Mapping[str, Any]]]:
        if self.down:
            raise PeerDown(f"the LDAP server is unreachable in this pass ({self.down}); not asked again")
        ldap3, settings = self.ldap3, self.settings
        try:
            connection = self.connection or self._connect()
            connection.search(settings["ldap_base_dn"], search_filter,
                              search_scope=ldap3.BASE if base_only else ldap3.SUBTREE,
                              attributes=[settings["ldap_attribute"], *extra_attributes], size_limit=LDAP_MATCHES_ASKED,
                              time_limit=whole_seconds(settings["ldap_timeout"]))
        except ldap3.core.exceptions.LDAPException as exc:
            self._drop_connection()
            error = ldap_connection_error(exc, settings)
            if isinstance(error, Unavailable):
                self.down = str(error)
            raise error from None
        failure = ldap_result_error("search", connection.result, settings)
        if failure:
            if isinstance(failure, Unavailable):
                self.down = str(failure)
            raise failure
        log.debug("LDAP search %s under %s: %s", search_filter, settings["ldap_base_dn"], connection.result)
        return [(item["dn"], item.get("attributes") or {}) for item in connection.response or []
                if item.get("type") == "searchResEntry"]

    def _connect(self) -> Any:
        """A bound connection over TLS (LDAPS, or StartTLS before the bind)."""
        ldap3, settings = self.ldap3, self.settings
        url = urllib.parse.urlsplit(settings["ldap_url"])
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings["ldap_ca_file"] or None)
        server = ldap3.Server(url.hostname, port=url.port or LDAP_DEFAULT_PORTS[url.scheme], use_ssl=url.scheme == "ldaps",
                              tls=tls, get_info=ldap3.NONE, connect_timeout=settings["ldap_timeout"])
        connection = ldap3.Connection(server, user=settings["ldap_bind_dn"] or None, password=self.password,
                                      read_only=True, raise_exceptions=False, auto_referrals=False,
                                      receive_timeout=whole_seconds(settings["ldap_timeout"]))
        connection.open()
        if settings["ldap_starttls"]:
            connection.start_tls()
        if not connection.bind():
            failure = ldap_result_error("bind", connection.result, settings)
            connection.unbind()
            raise failure or Unavailable(f"LDAP bind at {settings['ldap_url']} failed: {connection.last_error}")
        self.connection = connection
        return connection

    def _drop_connection(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):  # the socket is already broken
                self.connection.unbind()
        self.connection = None

    def _cached(self, key: str) -> Optional[str]:
        if self.cache_path is None:
            return None
        if self.cache is None:
            try:
                loaded = json.loads(read_private_file(self.cache_path) or "{}")
            except ValueError:
                log.warning("LDAP cache %s is not JSON; starting it afresh", self.cache_path)
                loaded = {}
            self.cache = loaded if isinstance(loaded, dict) else {}
        entry = self.cache.get(key)
        if not (isinstance(entry, dict) and isinstance(entry.get("username"), str)
                and isinstance(entry.get("at"), (int, float)) and key in (entry.get("matched") or [])):
            return None
        age = self.clock() - entry["at"]
        return entry["username"] if 0 <= age < self.settings["ldap_cache_ttl"] else None

    def _remember(self, key: str, username: str, matched: list[str]) -> None:
        """Only found usernames are kept: a 'no such user' rejects its submission for good anyway,
        and the next submission of that owner should see the directory as it is then."""
        if self.cache_path is None or self.cache is None:
            return
        now = self.clock()
        ttl = self.settings["ldap_cache_ttl"]
        self.cache = {k: v for k, v in self.cache.items()
                      if isinstance(v, dict) and isinstance(v.get("at"), (int, float)) and 0 <= now - v["at"] < ttl}
        self.cache[key] = {"username": username, "at": now, "matched": matched}
        try:
            write_private_file(self.cache_path, json.dumps(self.cache, sort_keys=True).encode())
        except OSError as exc:  # a cache: the mapping stands without it
            log.warning("cannot write the LDAP cache %s: %s", self.cache_path, exc.strerror)


class UserMapper:
    """Owner email -> local account, by [mapper] type. `ldap_cache` is where the ldap mapper keeps
    the usernames it found (None: no cache, as in a dry run or a check)."""

    def __init__(self, config: Config, lookup: Callable[[str], Optional[LocalUser]] = lookup_user,
                 ldap_cache: Optional[str] = None):
        self.kind = config.mapper.type
        self.domains = mapper_domains(config.mapper.domains)
        self.single_user = config.mapper.user
        self.map_file = config.mapper.map_file
        self.min_uid = config.mapper.min_uid
        self.lookup = lookup
        self._map: Optional[dict[str, str]] = None
        self.directory = LdapDirectory(config, ldap_cache) if self.kind == "ldap" else None

    def username_for(self, email: str) -> str:
        if self.kind == "single-user":
            return self.single_user
        if self.directory is not None:
            return self.directory.username_for(email)
        canonical = canonical_email(email)
        if self.kind == "email-local-part":
            local_part, _, domain = canonical.partition("@")
            if domain not in self.domains:
                raise Rejection(f"owner email {email!r} is not in a domain this cluster maps to its accounts "
                                f"({', '.join(self.domains)})")
            if not USERNAME_RE.fullmatch(local_part):
                raise Rejection(f"owner email {email!r} has no local part usable as a user name on this cluster")
            return local_part
        if self._map is None:
            self._map = read_map_file(self.map_file)
        username = self._map.get(canonical)
        if username is None:
            raise Rejection(f"owner email {email!r} is not in this cluster's user map")
        return username

    def local_account(self, username: str) -> Optional[LocalUser]:
        """The account a username names. The directory compares uids ignoring case, so a uid it gives
        with capitals names the account of that name or of its lowercase form (Linux names are
        lowercase): one of them, never two accounts it cannot tell apart."""
        user = self.lookup(username)
        if self.kind != "ldap" or username == username.lower():
            return user
        lowered = self.lookup(username.lower())
        if user is not None and lowered is not None and user.name != lowered.name:
            raise Rejection(f"the LDAP directory names user {username!r}, which matches two accounts here, "
                            f"{user.name!r} and {lowered.name!r}; the directory cannot tell them apart")
        return user or lowered

    def user_for(self, email: str) -> LocalUser:
        """The local account jobs of `email` run as; root and system accounts are refused."""
        username = self.username_for(email)
        user = self.local_account(username)
        if user is None:
            raise Rejection(f"owner email {email!r} maps to user {username!r}, which does not exist on this cluster")
        if user.uid < self.min_uid:
            raise Rejection(
                f"owner email {email!r} maps to {username!r} (uid {user.uid}), a system account "
                f"(uid below {self.min_uid}); jobs are never run as root or system accounts"
            )
        return user


# ---------------------------------------------------------------------------------------------
# Deadline and HTTP
# ---------------------------------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float):
        self.ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends_at - time.monotonic()

    def share(self, fraction: float) -> "Deadline":
        """A deadline `fraction` of the time that remains from now."""
        return Deadline(max(self.remaining(), 0) * fraction)

DEADLINE_GRACE_TIMEOUT = 5.0
# How long past [run] deadline a pass may still run (finishing the items under way, which are bounded by
# their own time limits) before the watchdog ends the process and so releases the lock.
WATCHDOG_GRACE_SECONDS = 60.0


# The peers a pass talks to (the API, the OIDC issuer, slurmrestd, the monitoring ping, InfluxDB):
# one keep-alive connection pool each.
PEERS = 5


class Http:
    """requests with a timeout bounded by the pass deadline, retries for idempotent calls,
    and a per-peer circuit breaker: once a peer is down, later calls fail fast. One session is
    shared by the pass's workers: each peer's pool keeps a keep-alive connection per worker."""

    def __init__(self, deadline: Deadline, retries: int, backoff: float, workers: int = 1):
        self.deadline = deadline
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"jobbergate-sync/{__version__}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=PEERS, pool_maxsize=workers)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.down: dict[str, str] = {}

    def send(self, peer: str, method: str, url: str, timeout: float, **kwargs: Any) -> requests.Response:
        """One attempt; network failures become Unavailable."""
        if peer in self.down:
            raise PeerDown(f"{peer} is unreachable in this pass ({self.down[peer]}); skipped {method} {url}")
        # Past the deadline an item already under way may still finish, with short timeouts:
        # a job Slurm accepted is better reported now than recovered by the next pass.
        timeout = min(timeout, max(self.deadline.remaining(), DEADLINE_GRACE_TIMEOUT))
        began = time.monotonic()
        try:
            response = self.session.request(method, url, timeout=timeout, **kwargs)
            log.debug("%s %s -> HTTP %d in %.3f s", method, response.url, response.status_code, time.monotonic() - began)
            return response
        except requests.Timeout:
            raise Unavailable(f"{method} {url}: no answer within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise Unavailable(f"{method} {url}: connection failed ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise Unavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None

    def call(self, peer: str, attempt: Callable[[], Any], idempotent: bool) -> Any:
        """Run `attempt`; retry it on Unavailable when the call is idempotent. Marks the peer down
        when it stays unavailable."""
        try:
            if not idempotent:
                return attempt()
            try:  # most calls are answered at once: tenacity is imported only when one is not
                return attempt()
            except PeerDown:
                raise
            except Unavailable as exc:
                if self.retries <= 1:
                    raise
                earlier = [exc]
            import tenacity

            def again() -> Any:  # the attempt made above is the first of those counted
                if earlier:
                    raise earlier.pop()
                return attempt()

            retrying = tenacity.Retrying(
                retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, Unavailable) and not isinstance(exc, PeerDown)),
                stop=tenacity.stop_after_attempt(self.retries) | tenacity.stop_after_delay(max(self.deadline.remaining(), 0)),
                wait=tenacity.wait_random_exponential(multiplier=self.backoff, max=max(self.backoff * 8, 0.001)),
                before_sleep=lambda state: log.warning(
                    "retrying after: %s", state.outcome.exception() if state.outcome else "?"
                ),
                reraise=True,
            )
            return retrying(again)
        except PeerDown:
            raise
        except Unavailable as exc:
            self.down[peer] = str(exc)
            raise


def json_body(response: requests.Response) -> Any:
    """The parsed JSON body, or None when the body is empty or not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def short_body(response: requests.Response, limit: int = 300) -> str:
    body = json_body(response)
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:limit]
    return response.text[:limit].strip() or "(empty body)"


# ---------------------------------------------------------------------------------------------
# OIDC token (client credentials), cached on disk
# ---------------------------------------------------------------------------------------------


def token_expiry(token: str, expires_in: Any, now: float) -> float:
    """The token's `exp` claim (what the API checks), else now + expires_in."""
    import jwt
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        if isinstance(claims.get("exp"), (int, float)):
            return float(claims["exp"])
    except jwt.PyJWTError:
        pass
    if isinstance(expires_in, (int, float)) and expires_in > 0:
        return now + float(expires_in)
    raise AuthError("the OIDC token has neither an exp claim nor expires_in")


class OidcToken:
    """The API access token: reused from the cache until `margin` seconds before it expires."""

    def __init__(self, config: Config, http: Http, cache_path: str, write_cache: bool = True):
        self.token_url = config.oidc.issuer.rstrip("/") + "/protocol/openid-connect/token"
        self.client_id = config.oidc.client_id
        self.client_secret = config.client_secret
        self.timeout = config.oidc.timeout
        self.margin = config.oidc.token_margin
        self.http = http
        self.cache_path = cache_path
        self.write_cache = write_cache
        self.current: Optional[str] = None
        self.lock = threading.Lock()  # workers share the token: one fetch, whoever asks first
        REDACTOR.add(self.client_secret)

    def get(self) -> str:
        with self.lock:
            if self.current is None:
                self.current = self._cached() or self._fetch()
            return self.current

    def refresh(self, rejected: Optional[str] = None) -> str:
        """A new token, in place of `rejected` (the one the API refused): when another worker has
        replaced that one already, its replacement."""
        with self.lock:
            if rejected is None or self.current in (None, rejected):
                self.current = self._fetch()
            return self.current

    def _cached(self) -> Optional[str]:
        try:
            cached = json.loads(read_private_file(self.cache_path) or "{}")
            if cached.get("token_url") != self.token_url or cached.get("client_id") != self.client_id:
                return None
            if float(cached["expires_at"]) - self.margin <= time.time():
                log.debug("cached API token expired or about to; fetching a new one")
                return None
            token = str(cached["access_token"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        REDACTOR.add(token)
        log.debug("reusing the cached API token")
        return token

    def _fetch(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret}

        def attempt() -> requests.Response:
            response = self.http.send("oidc", "POST", self.token_url, self.timeout, data=form)
            if response.status_code >= 500 or response.status_code == 429:
                raise Unavailable(f"POST {self.token_url}: HTTP {response.status_code}")
            return response

        response = self.http.call("oidc", attempt, idempotent=True)
        body = json_body(response)
        if response.status_code != 200:
            reason = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise AuthError(
                f"OIDC issuer refused client {self.client_id!r} at {self.token_url}: "
                f"HTTP {response.status_code} {reason or short_body(response)}"
            )
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise Unavailable(f"POST {self.token_url}: the answer has no access_token")
        token = body["access_token"]
        REDACTOR.add(token)
        now = time.time()
        expires_at = token_expiry(token, body.get("expires_in"), now)
        log.info("fetched a new API token for client %s, valid for %d s", self.client_id, expires_at - now)
        if self.write_cache:
            record = {"token_url": self.token_url, "client_id": self.client_id,
                      "access_token": token, "expires_at": expires_at}
            with private_replacement(self.cache_path, json.dumps(record).encode()):
                crash_point(CrashPoint.TOKEN_CACHE)
        return token


# ---------------------------------------------------------------------------------------------
# Jobbergate API client
# ---------------------------------------------------------------------------------------------


class JobbergateApi:
    def __init__(self, config: Config, http: Http, token: OidcToken):
        self.base = config.jobbergate.api_url.rstrip("/")
        self.timeout = config.jobbergate.timeout
        self.page_size = config.jobbergate.page_size
        self.max_pages = config.jobbergate.max_pages
        self.malformed_items = 0  # list items without an integer id: skipped, counted as errors
        self.http = http
        self.token = token

    def _request(self, method: str, path: str, idempotent: bool, **kwargs: Any) -> requests.Response:
        """One API call with the bearer token: a 401 refreshes the token once; 5xx/429 are outages;
        other 4xx are returned to the caller."""
        url = self.base + path

        def attempt() -> requests.Response:
            token = self.token.get()
            response = self._send(method, url, token, **kwargs)
            if response.status_code == 401:
                log.info("API answered 401 to %s %s; fetching a new token and trying once more", method, url)
                response = self._send(method, url, self.token.refresh(token), **kwargs)
                if response.status_code == 401:
                    raise AuthError(f"{method} {url}: the API rejects a fresh token for client {self.token.client_id} (401)")
            if response.status_code == 403:
                raise Forbidden(
                    f"{method} {url}: forbidden (403: {short_body(response)}); check the client's permissions"
                )
            if response.status_code >= 500 or response.status_code == 429:
                raise Unavailable(f"{method} {url}: HTTP {response.status_code} {short_body(response)}")
            if response.status_code == 404 and short_body(response) in ("Not Found", "(empty body)"):
                raise self._no_such_route(method, url, response)
            return response

        return self.http.call("api", attempt, idempotent)

    def _no_such_route(self, method: str, url: str, response: requests.Response) -> ConfigError:
        """A 404 that names no missing record: the URL is not the API's, so the setting is wrong."""
        return ConfigError(f"{method} {url}: HTTP 404 {short_body(response)[:80]}: the Jobbergate API has no such "
                           f"route; check [jobbergate] api_url = {self.base}: it must end with /jobbergate, the "
                           "API's mount (e.g. https://jobbergate.example.com/jobbergate)")

    def _send(self, method: str, url: str, token: str, headers: Optional[Mapping[str, str]] = None,
              **kwargs: Any) -> requests.Response:
        return self.http.send("api", method, url, self.timeout, headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                              **kwargs)

    def _expect(self, response: requests.Response, *statuses: int) -> requests.Response:
        if response.status_code not in statuses:
            raise ApiConflict(response.status_code, short_body(response))
        return response

    def list_all(self, path: str) -> tuple[list[dict[str, Any]], bool]:
        """Every item of a paginated agent list, read before anything acts on it, deduplicated by
        id. Returns (items, complete); complete is False when max_pages cut the list."""
        items: dict[int, dict[str, Any]] = {}
        page, pages = 1, 1
        while page <= pages:
            if page > self.max_pages:
                log.warning("%s has %d pages; reading only %d in this pass (jobbergate.max_pages)", path, pages, self.max_pages)
                return list(items.values()), False
            body = self.page(path, page, self.page_size)
            pages = body["pages"]
            if not body["items"]:
                break
            for item in body["items"]:
                if isinstance(item, dict) and isinstance(item.get("id"), int) and not isinstance(item.get("id"), bool):
                    items.setdefault(item["id"], item)
                else:
                    self.malformed_items += 1
                    log.error("ignoring a malformed item without an integer id in %s: %.200r", path, item)
            page += 1
        return list(items.values()), True

    def page(self, path: str, page: int, size: int) -> dict[str, Any]:
        """One page of an agent list: {"items": [...], "pages": n, "total": n, ...}."""
        response = self._request("GET", path, True, params={"page": page, "size": size})
        body = json_body(self._expect_list(response, path))
        if not isinstance(body, dict) or not isinstance(body.get("items"), list) or not isinstance(body.get("pages"), int):
            raise Unavailable(f"GET {self.base}{path} page {page}: not a page of items ({response.text[:200]!r})")
        return body

    def _expect_list(self, response: requests.Response, path: str) -> requests.Response:
        if response.status_code == 404:  # a list has no record to miss
            raise self._no_such_route("GET", self.base + path, response)
        if response.status_code != 200:
            raise ItemError(f"GET {self.base}{path}: HTTP {response.status_code} {short_body(response)}")
        return response

    def list_pending(self) -> tuple[list[dict[str, Any]], bool]:
        return self.list_all("/job-submissions/agent/pending")

    def list_active(self) -> tuple[list[dict[str, Any]], bool]:
        return self.list_all("/job-submissions/agent/active")

    def download(self, parent_id: int, filename: str, destination: IO[bytes], max_bytes: int) -> int:
        """Stream one job-script file into `destination`; never holds it whole in memory."""
        path = f"/job-scripts/{parent_id}/upload/{requests.utils.quote(filename, safe='')}"

        response = self._request("GET", path, True, stream=True)
        with response:
            if response.status_code == 404:
                raise Rejection(f"file {filename!r} of job script {parent_id} does not exist in Jobbergate")
            self._expect(response, 200)
            size = 0
            try:
                for chunk in response.iter_content(chunk_size=65536):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(
                            f"file {filename!r} of job script {parent_id} is larger than the "
                            f"{max_bytes}-byte limit of this cluster"
                        )
                    destination.write(chunk)
            except requests.RequestException as exc:
                raise Unavailable(f"GET {self.base}{path}: download interrupted ({type(exc).__name__})") from None
        destination.flush()
        return size

    def report_submitted(self, submission_id: int, report: "StateReport") -> None:
        payload = {"id": submission_id, "slurm_job_id": report.job_id, "slurm_job_state": report.state,
                   "slurm_job_info": report.info}
        if report.reason:
            payload["slurm_job_state_reason"] = report.reason
        response = self._request("POST", "/job-submissions/agent/submitted", False, json=payload)
        self._expect(response, 200, 201, 202)

    def report_rejected(self, submission_id: int, message: str) -> None:
        response = self._request("POST", "/job-submissions/agent/rejected", False,
                                 json={"id": submission_id, "report_message": message})
        self._expect(response, 200, 201, 202)

    def update(self, submission_id: int, report: "StateReport") -> None:
        payload: dict[str, Any] = {"slurm_job_state": report.state, "slurm_job_info": report.info}
        if report.job_id is not None:
            payload["slurm_job_id"] = report.job_id
        if report.reason:
            payload["slurm_job_state_reason"] = report.reason
        response = self._request("PUT", f"/job-submissions/agent/{submission_id}", True, json=payload)
        self._expect(response, 200, 202)

    def get_submission(self, submission_id: int) -> dict[str, Any]:
        response = self._expect(self._request("GET", f"/job-submissions/{submission_id}", True), 200)
        body = json_body(response)
        if not isinstance(body, dict) or "status" not in body:
            raise Unavailable(f"GET {self.base}/job-submissions/{submission_id}: not a submission")
        return body

    def ping_health(self, interval: int) -> None:
        response = self._request("PUT", "/clusters/status", True, params={"interval": interval})
        self._expect(response, 200, 202, 204)


# ---------------------------------------------------------------------------------------------
# Slurm backends: what the pass asks of Slurm (slurmrestd or Slurm's own commands)
# ---------------------------------------------------------------------------------------------

SlurmRecords = dict[int, list[dict[str, Any]]]  # job id -> its records (every task of an array)


class SlurmBackend(Protocol):
    """What the pass needs from Slurm, whichever way it reaches it ([slurm] backend). Records are
    slurmctld's (report_from_slurmctld) and slurmdbd's (report_from_slurmdbd) job records, in the
    JSON of slurmrestd, which `squeue --json` and `sacct --json` print too."""

    timeout: float  # seconds one exchange may take (it bounds when an interrupted submit can have landed)
    purge_horizon: int  # seconds after which slurmctld may have forgotten a finished job

    @property
    def use_slurmdbd(self) -> bool: ...

    def job_request(self, script: str, sbatch_arguments: Iterable[str], name: str, directory: str,
                    environment: dict[str, str], tag: str) -> Union[JobRequest, SbatchRequest]:
        """The job of a submission, or Rejection naming what cannot be submitted."""

    def submit(self, request: Any, user: str) -> int:
        """Submit as `user`; the Slurm job id. Never retried: an unanswered submit is settled by its tag."""

    def job(self, job_id: int) -> Optional[list[dict[str, Any]]]:
        """The job's slurmctld records; None only when Slurm says it has no such job."""

    def states(self, job_ids: Collection[int]) -> SlurmRecords:
        """The records slurmctld holds of just these jobs (every task of an array under the array's
        id); an id missing means slurmctld does not hold the job. Records may hold only the state
        (is_full_record tells)."""

    def jobs_with_tag(self, tag: str, user: str) -> SlurmRecords:
        """The records of the jobs slurmctld holds whose comment leads with `tag`: only `user`'s
        where Slurm can select them (a comment is anyone's to write, so the caller checks each
        record's user and submit time)."""

    def jobs(self) -> SlurmRecords:
        """Every job slurmctld holds, in one read (all tasks of an array under the array's id)."""

    def controllers(self) -> list["Controller"]:
        """Slurm's controllers in SlurmctldHost order, each answering or not; Unavailable when Slurm
        cannot say."""

    def accounting_job(self, job_id: int) -> Optional[list[dict[str, Any]]]:
        """The job's slurmdbd records (the newest of each array task); None when slurmdbd has none."""

    def accounting_jobs_since(self, user: str, since: float) -> list[dict[str, Any]]:
        """slurmdbd's records of `user`'s jobs (or of "alice,bob": each user's) active at or after
        `since` (everyone's where Slurm cannot filter); only a clean answer, since an empty list may
        prove a job never existed."""

    def accounting_backlog(self) -> Optional[int]:
        """How many records slurmctld still holds for slurmdbd; None when it does not say."""

    def cancel(self, job_id: int, user: str) -> Optional[bool]:
        """Cancel as `user`, the job's owner: True when cancelled, False when already gone or
        finished, None when Slurm does not say."""


def records_by_job(records: Iterable[Any]) -> SlurmRecords:
    """slurmctld records grouped by job: all tasks of an array under the array's id."""
    grouped: SlurmRecords = {}
    for job in records:
        if isinstance(job, dict) and isinstance(job.get("job_id"), int):
            grouped.setdefault(array_job_id_of(job) or job["job_id"], []).append(job)
    return grouped


def tagged_jobs(jobs: SlurmRecords, tag: str) -> SlurmRecords:
    return {job_id: records for job_id, records in sorted(jobs.items())
            if any(comment_has_tag(job.get("comment"), tag) for job in records)}


def newest_accounting_records(records: Iterable[Any], job_id: int) -> Optional[list[dict[str, Any]]]:
    """The job's slurmdbd records, the newest of each array task: after a slurmctld state wipe
    several records share an id, and the newest is ours. None when there is none."""
    newest: dict[str, dict[str, Any]] = {}
    for job in sorted(job_records_of(records, job_id),
                      key=lambda job: unwrap_number((job.get("time") or {}).get("submission")) or 0):
        newest[array_task_label(job) if array_job_id_of(job) else ""] = job
    return list(newest.values()) or None


# ---------------------------------------------------------------------------------------------
# slurmrestd client
# ---------------------------------------------------------------------------------------------

SLURM_ERROR_INVALID_JOB_ID = 2017
SLURM_ERROR_ALREADY_DONE = 2021  # "Job/step already completing or completed"
SLURMDB_NOTHING_FOUND = 9003
SLURMDB_CONNECTION_ERRORS = range(7000, 7100)  # ESLURM_DB_CONNECTION and kin: slurmdbd did not answer

# Texts that say nothing about the cause: Slurm's reason is then in the other key.
GENERIC_SLURM_TEXTS = frozenset({"", "batch job submission failed", "unspecified error"})


def slurm_error_text(entry: Mapping[str, Any]) -> str:
    """Slurm's own reason, `error` (e.g. "Invalid partition name specified"), with `description` only
    when it says more than that and more than a generic "Batch job submission failed"."""
    error, description = str(entry.get("error") or "").strip(), str(entry.get("description") or "").strip()
    parts = [error] if error.lower() not in GENERIC_SLURM_TEXTS else []
    if description.lower() not in GENERIC_SLURM_TEXTS and description.lower() not in error.lower():
        parts = [description] if error.lower() in description.lower() else parts + [description]
    return ": ".join(parts) or error or description or "unspecified error"


def slurm_errors(body: Any) -> list[tuple[Optional[int], str]]:
    """(code, text) of each entry of a slurmrestd errors[] list, whichever keys it uses."""
    entries = body.get("errors") if isinstance(body, dict) else None
    result = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            code = entry.get("error_number", entry.get("error_code"))
            result.append((code if isinstance(code, int) else None, slurm_error_text(entry)))
    return result


def slurm_warnings(body: Any) -> list[tuple[str, str]]:
    """(description, source) of each entry of a slurmrestd warnings[] list (v0.0.39 and later)."""
    entries = body.get("warnings") if isinstance(body, dict) else None
    return [(str(entry.get("description") or ""), str(entry.get("source") or ""))
            for entry in (entries if isinstance(entries, list) else []) if isinstance(entry, dict)]


# Warnings that leave the job as asked: a held job, a deprecated field that still works, a value
# converted from another JSON type. Any other warning naming a field sent means slurmrestd dropped it
# ("does not support parser", "Ignoring unknown field").
HARMLESS_WARNING_RE = re.compile(r"held state|is deprecated|Expected OpenAPI type", re.IGNORECASE)
WARNING_FIELD_RE = re.compile(r'^#/job/([A-Za-z0-9_]+)|field "([A-Za-z0-9_]+)"')


def dropped_fields(warnings: list[tuple[str, str]], sent: Iterable[str]) -> list[str]:
    """The job fields sent that a submit's warnings say slurmrestd did not use."""
    sent = set(sent)
    dropped: list[str] = []
    for description, source in warnings:
        if HARMLESS_WARNING_RE.search(description):
            continue
        for text in (source, description):
            for match in WARNING_FIELD_RE.finditer(text):
                name = match.group(1) or match.group(2)
                if name in sent and name not in dropped:
                    dropped.append(name)
    return dropped


def is_transient_slurm_code(code: Optional[int]) -> bool:
    """Slurm protocol/communication (1000-1999) and socket (5000-5999) errors: slurmctld is
    unreachable or refused the credentials, the job itself is not at fault."""
    return code is not None and (1000 <= code < 2000 or 5000 <= code < 6000)


def describe_errors(errors: list[tuple[Optional[int], str]]) -> str:
    return "; ".join(f"{text} (error {code})" if code is not None else text for code, text in errors)


# GET jobs/state takes the ids in its URL: at most [slurmrestd] query_url_bytes of "job_id=N&"
# parameters go in one request. slurmrestd 24.11 and 25.11 take a request head of about 80 KiB
# (measured: a 75,047-byte URL answered, an 82,547-byte one refused with 400, or 500 "Insane message
# length"); a proxy in front of slurmrestd may allow less (nginx's default request line is 8 KiB).
STATE_ENTRY_ID_RE = re.compile(r"^(\d+)(?:_(\d+))?$")
# What is remembered of our jobs' records between passes for update_time: enough for their state.
LIGHT_RECORD_KEYS = ("job_id", "job_state", "array_job_id", "array_task_id", "array_task_string")
# A remembered answer older than this is not used: a full read then, whatever update_time would say.
STATES_MEMORY_MAX_AGE = 3600
# update_time is slurmctld's clock against ours, to the second: asking from a little earlier than the
# read costs at most one more full answer, and a change is never missed for a skewed clock.
UPDATE_TIME_MARGIN = 5


def state_query_chunks(ids: list[int], max_bytes: int) -> Iterator[list[int]]:
    """`ids` in runs whose job_id parameters fit in `max_bytes`."""
    chunk: list[int] = []
    size = 0
    for job_id in ids:
        cost = len(f"job_id={job_id}&")
        if chunk and size + cost > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(job_id)
        size += cost
    if chunk:
        yield chunk


def parse_state_entry(entry: Any) -> Optional[tuple[int, Optional[int], Any]]:
    """(job id, array task or None, state) of one GET jobs/state record: job_id "12" is a job,
    "12_3" task 3 of an array (v0.0.40: 12 is the array; from v0.0.41 the task's own id once it
    started). Pending tasks come one record each. None for what names no single job or task."""
    found = STATE_ENTRY_ID_RE.match(str(entry.get("job_id") if isinstance(entry, dict) else ""))
    if not found:
        return None
    return int(found.group(1)), int(found.group(2)) if found.group(2) else None, entry.get("state")


def light_state_record(job_id: int, task: Optional[int], state: Any) -> dict[str, Any]:
    """A record of job `job_id` (its own, or of task `task` of array `job_id`) holding its state only."""
    if task is None:
        return {"job_id": job_id, "job_state": state}
    return {"job_id": job_id, "job_state": state, "array_job_id": job_id, "array_task_id": task}


def no_job_changes(status: int, body: Any) -> bool:
    """GET jobs?update_time= found no job changed: 304 and no body (v0.0.38), or no jobs and a
    warning saying so (v0.0.39 on)."""
    if status == 304:
        return True
    return (status == 200 and isinstance(body, dict) and body.get("jobs") == []
            and any("no job changes" in description.lower() for description, _ in slurm_warnings(body)))


def read_states_memory(path: Optional[str]) -> Optional[dict[str, Any]]:
    """The remembered answer for update_time, None when absent or not as written."""
    try:
        memory = json.loads(read_private_file(path) or "null")
    except ValueError:
        return None
    shapes = {"url": str, "version": str, "read_at": (int, float), "since": int, "asked": list, "held": dict}
    usable = isinstance(memory, dict) and all(isinstance(memory.get(key), kind) for key, kind in shapes.items())
    return memory if usable else None


SUBMIT_PATH_RE = re.compile(r"^/slurm/(v0\.0\.\d+)/job/submit/?$")
STATE_QUERY_PATH_RE = re.compile(r"^/slurm/(v0\.0\.\d+)/jobs/state/?$")
SLURMDB_PATH_RE = re.compile(r"^/slurmdb/(v0\.0\.\d+)/")


@dataclasses.dataclass(frozen=True)
class ServedApi:
    """What one slurmrestd serves, read from its OpenAPI document."""

    versions: tuple[str, ...]  # of the job endpoints, oldest first
    slurmdb_versions: tuple[str, ...]
    release: Optional[str]
    state_query_versions: tuple[str, ...] = ()  # with GET jobs/state (Slurm 24.05 on)


def served_api(document: Any) -> ServedApi:
    """The job API versions, slurmdbd API versions and Slurm release of a /openapi/v3 document."""
    paths = document.get("paths") if isinstance(document, dict) else None
    paths = list(paths) if isinstance(paths, dict) else []
    info = document.get("info") if isinstance(document, dict) and isinstance(document.get("info"), dict) else {}
    release = (info.get("x-slurm") or {}).get("release") if isinstance(info.get("x-slurm"), dict) else None
    if not release:  # 23.11-24.11: "Slurm-24.11.5&data_parsers..."
        found = re.match(r"^Slurm-([0-9.]+)", str(info.get("version") or ""))
        release = found.group(1) if found else None

    def versions(pattern: re.Pattern[str]) -> tuple[str, ...]:
        return tuple(sorted({m.group(1) for m in map(pattern.match, paths) if m}, key=api_minor))

    return ServedApi(versions(SUBMIT_PATH_RE), versions(SLURMDB_PATH_RE), release, versions(STATE_QUERY_PATH_RE))


def choose_api_version(served: ServedApi, url: str) -> str:
    """The newest job API version both slurmrestd and this tool speak; ConfigError when none."""
    usable = [version for version in served.versions if OLDEST_API_MINOR <= api_minor(version) <= NEWEST_API_MINOR]
    if not usable:
        raise ConfigError(f"[slurmrestd] api_version = auto: slurmrestd at {url} serves "
                          f"{', '.join(served.versions) or 'no job API'}; this tool supports "
                          f"v0.0.{OLDEST_API_MINOR} to v0.0.{NEWEST_API_MINOR}")
    return usable[-1]


class SlurmCredentials:
    """X-SLURM-USER-NAME/X-SLURM-USER-TOKEN for a user: an HS256 token minted with the cluster
    key (claims iat, exp, sun), or a configured static SlurmUser/root token."""

    def __init__(self, jwt_key: Optional[bytes], static_token: Optional[str], lifespan: int):
        self.jwt_key = jwt_key
        self.static_token = static_token
        self.lifespan = lifespan
        self.minted: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()  # one token per user, whichever worker asks first
        REDACTOR.add(static_token)

    def headers(self, user: str) -> dict[str, str]:
        if self.static_token:
            return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self.static_token}
        with self.lock:
            token, expires = self.minted.get(user, ("", 0.0))
            now = time.time()
            if expires - 60 <= now:
                expires = now + self.lifespan
                import jwt
                token = jwt.encode({"iat": int(now), "exp": int(expires), "sun": user}, self.jwt_key, algorithm="HS256")
                REDACTOR.add(token)
                self.minted[user] = (token, expires)
        return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}


class SlurmRest:
    def __init__(self, config: Config, http: Http, choice_path: Optional[str] = None, remember: bool = True,
                 states_path: Optional[str] = None):
        self.base = config.slurmrestd.url.rstrip("/")
        self.api_version_setting = config.slurmrestd.api_version
        self.slurmdbd_setting = config.slurmrestd.slurmdbd
        self.timeout = config.slurmrestd.timeout
        self.purge_horizon = config.slurmrestd.purge_horizon
        self.query_user = config.slurmrestd.query_user
        self.query_url_bytes = config.slurmrestd.query_url_bytes
        self.http = http
        self.credentials = SlurmCredentials(config.slurm_jwt_key, config.slurm_static_token, config.slurmrestd.token_lifespan)
        # The auto choice (version, slurmdbd, release), remembered in the state directory between passes.
        self.choice_path = choice_path
        self.remember = remember
        self._choice: Optional[dict[str, Any]] = None
        # Our jobs' states at the last full answer of GET jobs, for update_time (see states()).
        self.states_path = states_path
        self._no_state_query = False
        self._choice_lock = threading.RLock()  # the first worker to need the version chooses it

    @property
    def version(self) -> str:
        if self.api_version_setting != "auto":
            return self.api_version_setting
        return self.choice()["api_version"]

    @property
    def minor(self) -> int:
        return api_minor(self.version)

    @property
    def use_slurmdbd(self) -> bool:
        if self.slurmdbd_setting != "auto":
            return bool(self.slurmdbd_setting)
        return self.choice()["slurmdbd"]

    @property
    def serves_state_query(self) -> bool:
        """Whether GET jobs/state answers (Slurm 24.05 on). A pinned v0.0.40+ is assumed to, until
        a 404 says otherwise (Slurm 23.11 serves v0.0.40 without it)."""
        if self.api_version_setting != "auto":
            return self.minor >= 40 and not self._no_state_query
        return bool(self.choice().get("state_query"))

    @property
    def release(self) -> Optional[str]:
        """The Slurm release, when the OpenAPI document was read (auto settings)."""
        choice = self._choice  # read once: a worker may forget it meanwhile
        return choice.get("release") if choice else None

    def choice(self) -> dict[str, Any]:
        """The remembered auto choice, else one made from slurmrestd's /openapi/v3 paths."""
        with self._choice_lock:
            if self._choice is None:
                self._choice = self._remembered_choice() or self._choose(self.served())
            return self._choice

    def _remembered_choice(self) -> Optional[dict[str, Any]]:
        try:
            choice = json.loads(read_private_file(self.choice_path) or "null")
        except ValueError:
            return None
        usable = (isinstance(choice, dict) and choice.get("url") == self.base and isinstance(choice.get("slurmdbd"), bool)
                  and isinstance(choice.get("state_query"), bool)
                  and API_VERSION_RE.match(str(choice.get("api_version"))) is not None)
        return choice if usable else None

    def served(self) -> ServedApi:
        """What slurmrestd serves, from its /openapi/v3 document (read as the query user)."""
        response, body = self._request("GET", "/openapi/v3", self.query_user, True)
        served = served_api(body)
        if response.status_code != 200 or not served.versions:
            raise Unavailable(f"GET {self.base}/openapi/v3: HTTP {response.status_code}: no job API paths to choose from")
        return served

    def discover(self) -> ServedApi:
        """Choose now, whatever was remembered, and return what slurmrestd serves (for the check)."""
        served = self.served()
        self._choice = self._choose(served)
        return served

    def _choose(self, served: ServedApi) -> dict[str, Any]:
        """The pinned version or the newest both speak; remembered unless read-only."""
        version = (self.api_version_setting if self.api_version_setting != "auto"
                   else choose_api_version(served, self.base))
        choice = {"url": self.base, "api_version": version, "slurmdbd": version in served.slurmdb_versions,
                  "state_query": version in served.state_query_versions, "release": served.release}
        log.info("slurmrestd at %s serves %s (Slurm %s); using %s%s", self.base, ", ".join(served.versions),
                 served.release or "release unknown", version, " and slurmdbd" if choice["slurmdbd"] else "")
        if self.remember and self.choice_path:
            write_private_file(self.choice_path, json.dumps(choice).encode())
        return choice

    def forget_choice(self) -> None:
        with self._choice_lock:
            self._choice = None
            if self.remember and self.choice_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.choice_path)

    def _request(self, method: str, path: str, user: str, idempotent: bool, **kwargs: Any) -> tuple[requests.Response, Any]:
        url = self.base + path

        def attempt() -> tuple[requests.Response, Any]:
            response = self.http.send("slurmrestd", method, url, self.timeout, headers=self.credentials.headers(user), **kwargs)
            body = json_body(response)
            if response.status_code in (401, 511):  # 25.11 answers an authentication failure with 511
                raise AuthError(f"{method} {url}: slurmrestd refused the credentials for user {user} "
                                f"({response.status_code})")
            if response.status_code == 404 and body is None:
                if self.api_version_setting == "auto" and path != "/openapi/v3":
                    self.forget_choice()
                    raise Unavailable(f"{method} {url}: slurmrestd no longer serves this API version; "
                                      "the next pass chooses again")
                raise ConfigError(f"{method} {url}: slurmrestd does not serve this path; is api_version "
                                  f"{self.api_version_setting} loaded?")
            errors = slurm_errors(body)
            if any(is_transient_slurm_code(code) for code, _ in errors):
                raise Unavailable(f"{method} {url}: Slurm could not be reached or refused the token: {describe_errors(errors)}")
            if response.status_code in (429, 502, 503, 504) or (response.status_code >= 500 and not errors):
                raise Unavailable(f"{method} {url}: HTTP {response.status_code} {response.text[:200].strip()}")
            return response, body

        return self.http.call("slurmrestd", attempt, idempotent)

    def job_request(self, script: str, sbatch_arguments: Iterable[str], name: str, directory: str,
                    environment: dict[str, str], tag: str) -> JobRequest:
        """The job JSON of the API version in use (the options translated, see build_job_request)."""
        return build_job_request(script, sbatch_arguments, name, directory, environment, tag, self.minor, self.release)

    def submit(self, request: JobRequest, user: str) -> int:
        """POST job/submit as `user`. Never retried: an unanswered submit is resolved by the tag.
        Warnings are logged; one that says a field sent was dropped raises DroppedOptions."""
        payload = request.payload
        job_fields = {key: value for key, value in payload["job"].items() if key != "script"}
        log.debug("job request for slurmrestd (script left out): %s", json.dumps(job_fields))
        url = f"{self.base}/slurm/{self.version}/job/submit"
        response, body = self._request("POST", f"/slurm/{self.version}/job/submit", user, False, json=payload)
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if isinstance(job_id, int) and job_id > 0:
            context = log_fields(slurm_job_id=job_id, user=user)
            messages = slurm_errors(body)
            if messages:
                log.warning("Slurm accepted job %d with messages: %s", job_id, describe_errors(messages), **context)
            warnings = slurm_warnings(body)
            for description, source in warnings:
                log.warning("Slurm accepted job %d with a warning: %s (%s)", job_id, description, source, **context)
            dropped = dropped_fields(warnings, payload["job"])
            if dropped:
                named = ", ".join(request.options_by_field.get(field, field) for field in dropped)
                raise DroppedOptions(f"this cluster's slurmrestd (API {self.version}) ignored {named}; the job cannot "
                                     f"run as asked: remove {named}", job_id)
            return job_id
        errors = slurm_errors(body)
        if errors:
            raise Rejection(f"Slurm refused the job: {describe_errors(errors)}")
        raise Unavailable(f"POST {url}: HTTP {response.status_code} without a job id")

    def ping(self, user: str) -> None:
        """GET ping as `user`: slurmctld accepted that user's token and answered; else the reason."""
        response, body = self._request("GET", f"/slurm/{self.version}/ping", user, True)
        errors = slurm_errors(body)
        if response.status_code != 200 or errors:
            raise Unavailable(f"GET {self.base}/slurm/{self.version}/ping as {user}: HTTP {response.status_code} "
                              f"{describe_errors(errors) or response.text[:200].strip()}")

    def jobs(self) -> dict[int, list[dict[str, Any]]]:
        """Every job slurmctld holds, in one call: id -> its records (all tasks of an array under the array's id)."""
        return self._job_list()[1]

    def controllers(self) -> list[Controller]:
        """GET ping as the query user: slurmrestd pings each controller of SlurmctldHost in turn."""
        path = f"/slurm/{self.version}/ping"
        response, body = self._request("GET", path, self.query_user, True)
        controllers = controllers_from_ping(body)
        if response.status_code != 200 or not controllers:
            raise Unavailable(f"GET {self.base}{path}: HTTP {response.status_code} "
                              f"{describe_errors(slurm_errors(body)) or 'lists no controller'}")
        return controllers

    def _job_list(self, since: Optional[int] = None) -> tuple[bool, dict[int, list[dict[str, Any]]]]:
        """GET jobs, with update_time=`since` when given: (False, {}) when slurmctld says no job
        changed since then, else (True, every job it holds, grouped as jobs() groups them)."""
        path = f"/slurm/{self.version}/jobs"
        response, body = self._request("GET", path, self.query_user, True,
                                       params={"update_time": since} if since is not None else None)
        if since is not None and no_job_changes(response.status_code, body):
            return False, {}
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(jobs, list):
            raise Unavailable(f"GET {self.base}{path}: HTTP {response.status_code} {describe_errors(slurm_errors(body))}")
        return True, records_by_job(jobs)

    def states(self, job_ids: Collection[int]) -> dict[int, list[dict[str, Any]]]:
        """The records slurmctld holds for these jobs, grouped as jobs() groups them; an id missing
        from the answer is a job slurmctld does not hold. Asks for these jobs only where slurmrestd
        can (GET jobs/state: light records, the state and array task only); elsewhere GET jobs with
        update_time, whose answer is empty while no job changed (the last answer's records of ours,
        kept in the state directory, stand) and every job otherwise."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        if self.serves_state_query:
            try:
                return self._states_by_query(ids)
            except ConfigError:  # a pinned version on a Slurm without jobs/state (23.11 and v0.0.40)
                log.info("slurmrestd at %s has no %s jobs/state; reading every job instead", self.base, self.version)
                self._no_state_query = True
        return self._states_since_last_read(ids)

    def _states_by_query(self, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """GET jobs/state for `ids`, in chunks. From v0.0.41 a started array task is listed under its
        own job id ("5_0" of array 2), which does not say which array it belongs to: then each array
        (and each id not found) is asked alone, so that all its records are its own."""
        asked = set(ids)
        grouped: dict[int, list[dict[str, Any]]] = {}
        orphans: set[tuple[int, int]] = set()
        for chunk in state_query_chunks(ids, self.query_url_bytes):
            for job_id, task, state in self._state_query(chunk):
                if job_id in asked:
                    grouped.setdefault(job_id, []).append(light_state_record(job_id, task, state))
                elif task is not None:
                    orphans.add((job_id, task))
        # The arrays first, then the ids not found (an array whose own record is gone), until every
        # orphan has its array.
        arrays = [job_id for job_id in ids if any(array_job_id_of(job) for job in grouped.get(job_id, []))]
        for job_id in arrays + [job_id for job_id in ids if job_id not in grouped]:
            if not orphans:
                break
            answer = self._state_query([job_id])
            orphans -= {(own_id, task) for own_id, task, _ in answer if task is not None}
            grouped[job_id] = [light_state_record(job_id, task, state) for _, task, state in answer]
        return {job_id: records for job_id, records in grouped.items() if records}

    def _state_query(self, ids: list[int]) -> list[tuple[int, Optional[int], Any]]:
        """(job id, array task or None, state) of each record GET jobs/state lists for `ids`. The
        ids go as repeated job_id parameters: 24.11 and 25.11 refuse a comma-separated list."""
        path = f"/slurm/{self.version}/jobs/state/"
        response, body = self._request("GET", path, self.query_user, True, params=[("job_id", job_id) for job_id in ids])
        jobs = body.get("jobs") if isinstance(body, dict) else None
        errors = slurm_errors(body)
        if response.status_code != 200 or errors or not isinstance(jobs, list):
            raise Unavailable(f"GET {self.base}{path} ({len(ids)} job ids): HTTP {response.status_code} "
                              f"{describe_errors(errors) or response.text[:200].strip()}")
        return [parsed for parsed in map(parse_state_entry, jobs) if parsed is not None]

    def _states_since_last_read(self, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """GET jobs?update_time=<the last full answer's time> while the remembered answer is
        usable (same slurmrestd and version, every id asked then, younger than STATES_MEMORY_MAX_AGE);
        a full GET jobs otherwise. Every full answer is remembered (our jobs' records only)."""
        memory = read_states_memory(self.states_path)
        usable = (memory is not None and memory["url"] == self.base and memory["version"] == self.version
                  and set(ids) <= set(memory["asked"]) and 0 <= time.time() - memory["read_at"] < STATES_MEMORY_MAX_AGE)
        read_at = time.time()
        changed, grouped = self._job_list(memory["since"] if usable and memory else None)
        if not changed and memory:
            return {job_id: memory["held"][str(job_id)] for job_id in ids if str(job_id) in memory["held"]}
        held = {job_id: grouped[job_id] for job_id in ids if job_id in grouped}
        if self.remember and self.states_path:
            write_private_file(self.states_path, json.dumps({
                "url": self.base, "version": self.version, "read_at": read_at,
                "since": int(read_at) - UPDATE_TIME_MARGIN, "asked": ids,
                "held": {str(job_id): [{key: job[key] for key in LIGHT_RECORD_KEYS if key in job} for job in records]
                         for job_id, records in held.items()}}).encode())
        return held

    def job(self, job_id: int) -> Optional[list[dict[str, Any]]]:
        """The job's records from slurmctld (every task of an array), or None only when Slurm
        positively says it has no such job."""
        response, body = self._request("GET", f"/slurm/{self.version}/job/{job_id}", self.query_user, True)
        errors = slurm_errors(body)
        if any(code == SLURM_ERROR_INVALID_JOB_ID for code, _ in errors):
            return None
        jobs = body.get("jobs") if isinstance(body, dict) else None
        records = job_records_of(jobs, job_id) if isinstance(jobs, list) else []
        if response.status_code == 200 and records:
            return records
        raise ItemError(f"GET {self.base}/slurm/{self.version}/job/{job_id}: HTTP {response.status_code} {describe_errors(errors)}")

    def accounting_job(self, job_id: int) -> Optional[list[dict[str, Any]]]:
        """The job's slurmdbd records (every task of an array), or None when slurmdbd has none."""
        response, body = self._request("GET", f"/slurmdb/{self.version}/job/{job_id}", self.query_user, True)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        newest = newest_accounting_records(jobs, job_id) if isinstance(jobs, list) else None
        if newest:
            return newest
        errors = slurm_errors(body)
        if response.status_code in (200, 204, 404) and (not errors or any(c == SLURMDB_NOTHING_FOUND for c, _ in errors)):
            return None
        raise ItemError(f"GET {self.base}/slurmdb/{self.version}/job/{job_id}: HTTP {response.status_code} {describe_errors(errors)}")

    def jobs_with_tag(self, tag: str, user: str) -> SlurmRecords:
        return tagged_jobs(self.jobs(), tag)  # GET jobs cannot select a user's

    def accounting_jobs_since(self, user: str, since: float) -> list[dict[str, Any]]:
        """slurmdbd's records of jobs active at or after `since`: the user's own from v0.0.39 on
        (users=); everyone's on v0.0.38, whose query knows no users= (error 9000). The time is
        relative: v0.0.38 knows no other, and 24.11 and 25.11 refuse an epoch on v0.0.40 and v0.0.41
        (422, error 9202)."""
        minutes = int((time.time() - since) // 60) + 2
        params: list[tuple[str, Any]] = [("start_time", f"now-{minutes}minutes")]
        if self.minor > 38:  # one users= per user: 24.11 and 25.11 refuse "alice,bob" (422, error 2166)
            params += [("users", name) for name in user.split(",")]
        path = f"/slurmdb/{self.version}/jobs"
        response, body = self._request("GET", path, self.query_user, True, params=params)
        errors = slurm_errors(body)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if any(code in SLURMDB_CONNECTION_ERRORS for code, _ in errors):
            raise Unavailable(f"GET {self.base}{path}: slurmdbd did not answer: {describe_errors(errors)}")
        # Only a clean answer counts: an empty list may be taken as proof that a job never existed.
        if response.status_code not in (200, 204) or any(code != SLURMDB_NOTHING_FOUND for code, _ in errors):
            raise ItemError(f"GET {self.base}{path}: HTTP {response.status_code} {describe_errors(errors)}")
        if response.status_code == 204:
            return []
        if not isinstance(jobs, list):
            raise Unavailable(f"GET {self.base}{path}: not a list of jobs ({response.text[:200]!r})")
        return [job for job in jobs if isinstance(job, dict)]

    def accounting_backlog(self) -> Optional[int]:
        """How many records slurmctld still holds for slurmdbd (sdiag's DBD Agent queue size);
        None when slurmctld does not say."""
        response, body = self._request("GET", f"/slurm/{self.version}/diag", self.query_user, True)
        statistics = body.get("statistics") if isinstance(body, dict) and response.status_code == 200 else None
        size = statistics.get("dbd_agent_queue_size") if isinstance(statistics, dict) else None
        return size if isinstance(size, int) and not isinstance(size, bool) else None

    def cancel(self, job_id: int, user: str) -> Optional[bool]:
        """Cancel as `user`, who must own the job: a DELETE as anyone else hangs slurmctld 24.11.5.
        True when Slurm says it cancelled, False when the job is gone or already finished, None when
        Slurm does not say (before v0.0.42 a 200 comes back whatever happened: re-read the job)."""
        response, body = self._request("DELETE", f"/slurm/{self.version}/job/{job_id}", user, True)
        errors = slurm_errors(body)
        if any(code == SLURM_ERROR_INVALID_JOB_ID for code, _ in errors) or response.status_code == 404:
            return False
        if response.status_code != 200 or errors:
            raise ItemError(f"cancelling Slurm job {job_id} as {user}: HTTP {response.status_code} {describe_errors(errors)}")
        outcomes = body.get("status") if isinstance(body, dict) else None
        if not isinstance(outcomes, list):
            return None
        failures = [entry["error"] for entry in outcomes
                    if isinstance(entry, dict) and isinstance(entry.get("error"), dict) and entry["error"].get("code")]
        if any(failure.get("code") in (SLURM_ERROR_INVALID_JOB_ID, SLURM_ERROR_ALREADY_DONE) for failure in failures):
            return False
        if failures:
            raise ItemError(f"cancelling Slurm job {job_id} as {user}: Slurm says "
                            + "; ".join(f"{f.get('string') or f.get('message')} (error {f.get('code')})" for f in failures))
        return True


# ---------------------------------------------------------------------------------------------
# Slurm commands client: the sbatch backend, for sites without slurmrestd
# ---------------------------------------------------------------------------------------------

# The queries run as root with this environment; LANG=C keeps Slurm's messages the ones matched below.
QUERY_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C"}
# What Slurm's commands say when slurmctld or slurmdbd cannot be reached or will not authenticate
# them (munge): no fault of the job, so the next pass tries again.
SLURM_UNREACHABLE_RE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|Connection refused|"
    r"Connection timed out|Communication connection failure|Protocol authentication error|munge|"
    r"Problem talking to the database|Unable to connect to database|backup controller in standby|"
    r"temporarily unavailable|Transport endpoint", re.IGNORECASE)
SLURM_INVALID_JOB_RE = re.compile(r"Invalid job id specified", re.IGNORECASE)
SLURM_JOB_DONE_RE = re.compile(r"Invalid job id specified|already completing or completed", re.IGNORECASE)
# What Slurm's commands say when they were built without the JSON output (its plugins missing).
NO_JSON_RE = re.compile(r"json|data_parser|serializer|plugin|unrecognized option", re.IGNORECASE)
FIELD_SEPARATOR = "\x1f"  # between squeue/sacct text fields: no job field carries a control character
# squeue's fields of the text fallback; the comment last, so that nothing it holds can shift another.
SQUEUE_FIELDS = (("job_id", "%A"), ("array_job_id", "%F"), ("array_task", "%K"), ("job_state", "%T"),
                 ("state_reason", "%r"), ("user_name", "%u"), ("name", "%j"),
                 ("current_working_directory", "%Z"), ("comment", "%k"))
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "Reason", "ExitCode", "User", "JobName", "WorkDir", "Submit", "Comment")
DBD_QUEUE_RE = re.compile(r"^\s*DBD Agent queue size:\s*(\d+)\s*$", re.MULTILINE)
MIN_JOB_AGE_RE = re.compile(r"^MinJobAge\s*=\s*(\d+) sec\s*$", re.MULTILINE)  # scontrol show config
VERSION_RE = re.compile(r"(\d+\.\d+\.\d+)")


@dataclasses.dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def message(self) -> str:
        """What the command said, on one line, without the program's name in front of each line."""
        lines = [re.sub(r"^\S+: (error: )?", "", line.strip()) for line in self.stderr.splitlines()]
        lines = [line for line in lines if line and not line.startswith("Try ")]
        return "; ".join(lines) or self.stdout.strip()[:300] or f"exit status {self.returncode}"


# coreutils' env enters the directory (--chdir) after subprocess has switched to the user, with the
# user's rights. subprocess's own cwd= would enter it as root, and a preexec_fn would run Python in a
# child forked from a process whose worker threads may hold locks; this way the child runs only
# subprocess's C code until exec.
ENV_COMMAND = "/usr/bin/env"
# env's own exit statuses: it could not enter the directory (125), or could not run the command (126, 127)
ENV_CANNOT_ENTER, ENV_CANNOT_RUN = 125, (126, 127)


def run_command(argv: list[str], timeout: float, user: Optional[LocalUser] = None, directory: Optional[str] = None,
                environment: Optional[Mapping[str, str]] = None, stdin: str = "") -> CommandResult:
    """Run a Slurm command without a shell, as root or, given `user`, as that user (uid, gid and
    supplementary groups). `directory` is entered after the switch, with the user's own rights."""
    identity: dict[str, Any] = {}
    if user is not None and os.geteuid() == 0:
        identity = {"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
    elif user is not None and os.geteuid() != user.uid:
        raise ItemError(f"jobbergate-sync runs as uid {os.geteuid()} and cannot run {argv[0]} as {user.name}; "
                        "run it as root")
    launched = [ENV_COMMAND, f"--chdir={directory}", "--", *argv] if directory else argv
    not_runnable = f"[slurm] {os.path.basename(argv[0])} = {argv[0]}: cannot run it"
    try:
        process = subprocess.Popen(launched, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace", env=dict(environment or QUERY_ENVIRONMENT), cwd="/",
                                   umask=0o022, **identity)
    except OSError as exc:
        raise ConfigError(f"{not_runnable}: {exc.strerror}") from None
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:  # not subprocess.run: it waits for a command it could not kill
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
        stop_process(process, shlex.join(argv))
        raise Unavailable(f"{shlex.join(argv)}: no answer within {timeout:g} s") from None
    result = CommandResult(argv, process.returncode, stdout, stderr)
    if directory and stderr.startswith((f"{ENV_COMMAND}: ", "env: ")):  # env names itself as it was run
        if process.returncode == ENV_CANNOT_ENTER:
            raise ItemError(f"{argv[0]}: cannot enter {directory} as {user.name if user else 'root'}: {result.message()}")
        if process.returncode in ENV_CANNOT_RUN:
            raise ConfigError(f"{not_runnable}: {result.message()}")
    return result


CommandRunner = Callable[..., CommandResult]


def command_failure(result: CommandResult) -> SyncError:
    """Unavailable when Slurm could not be reached, else an item failure naming the command."""
    if SLURM_UNREACHABLE_RE.search(result.stderr) or result.returncode < 0:
        return Unavailable(f"{result.command}: Slurm could not be reached: {result.message()}")
    return ItemError(f"{result.command}: exit status {result.returncode}: {result.message()}")


def parse_parsable(stdout: str) -> Optional[int]:
    """The job id that `sbatch --parsable` prints: "jobid" or "jobid;cluster"."""
    match = re.fullmatch(r"(\d+)(;\S+)?", stdout.strip())
    return int(match.group(1)) if match else None


def sacct_json_lacks_exit_codes(result: CommandResult) -> bool:
    """True for the JSON of Slurm 22.05's sacct (its openapi/dbv0.0.38 plugin), which gives every
    job exit code 0: only its text output (ExitCode "3:0") says how a job ended."""
    try:
        meta = json.loads(result.stdout).get("meta")
        plugin = str(meta["plugin"]["type"])
    except (ValueError, AttributeError, KeyError, TypeError):
        return False
    return plugin.startswith("openapi/dbv0.0.3")


def json_jobs(result: CommandResult) -> list[dict[str, Any]]:
    """The jobs of a `squeue --json` or `sacct --json` answer; Unavailable on anything else."""
    try:
        body = json.loads(result.stdout)
    except ValueError:
        body = None
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(jobs, list):
        raise Unavailable(f"{result.command}: not a list of jobs ({result.stdout[:200]!r})")
    return [job for job in jobs if isinstance(job, dict)]


def squeue_text_record(line: str) -> Optional[dict[str, Any]]:
    """A slurmctld record from one line of `squeue --format` with SQUEUE_FIELDS (no exit code)."""
    values = line.split(FIELD_SEPARATOR, len(SQUEUE_FIELDS) - 1)
    if len(values) != len(SQUEUE_FIELDS) or not values[0].isdigit():
        return None
    record: dict[str, Any] = dict(zip((name for name, _ in SQUEUE_FIELDS), values))
    task = record.pop("array_task")
    record["job_id"] = int(record["job_id"])
    if task == "N/A":  # not an array: squeue prints the job's own id as its array id
        record["array_job_id"] = 0
    else:
        record["array_job_id"] = int(record["array_job_id"])
        record["array_task_id" if task.isdigit() else "array_task_string"] = int(task) if task.isdigit() else task
    return record


def exit_code_record(text: str) -> dict[str, Any]:
    """sacct's "3:0" (return code, signal) in the structured form of slurmdbd's records."""
    code, _, signal_id = text.partition(":")
    return {"return_code": int(code) if code.isdigit() else 0,
            "signal": {"id": int(signal_id) if signal_id.isdigit() else 0}}


def sacct_text_record(line: str) -> Optional[dict[str, Any]]:
    """A slurmdbd record from one line of `sacct --parsable2` with SACCT_FIELDS (times in epoch)."""
    values = line.split(FIELD_SEPARATOR, len(SACCT_FIELDS) - 1)
    if len(values) != len(SACCT_FIELDS) or not values[1].isdigit():
        return None
    field = dict(zip(SACCT_FIELDS, values))
    array_id, _, task = field["JobID"].partition("_")
    in_array = bool(task) and array_id.isdigit()
    return {"job_id": int(field["JobIDRaw"]), "name": field["JobName"], "user": field["User"],
            "state": {"current": field["State"], "reason": field["Reason"]},
            "exit_code": exit_code_record(field["ExitCode"]), "working_directory": field["WorkDir"],
            "array": {"job_id": int(array_id) if in_array else 0,
                      **({"task_id": int(task)} if task.isdigit() else {"task": task.strip("[]")} if in_array else {})},
            "time": {"submission": int(field["Submit"]) if field["Submit"].isdigit() else None},
            "comment": {"job": field["Comment"]}}


class SlurmCommands:
    """The sbatch backend: Slurm's own commands, run without a shell at the configured absolute
    paths. sbatch and scancel run as the job's user; the queries run as root. squeue and sacct speak
    JSON where they can (the records are slurmrestd's), else a fixed text format."""

    def __init__(self, config: Config, run: CommandRunner = run_command, lookup: Callable[[str], Optional[LocalUser]] = lookup_user):
        settings = config.slurm
        self.tools = {tool: getattr(settings, tool) for tool in SLURM_TOOLS}
        self.timeout = settings.timeout
        self.purge_horizon = settings.purge_horizon
        self.use_slurmdbd = settings.slurmdbd
        self.run = run
        self.lookup = lookup
        self.json = {"squeue": True, "sacct": True}  # until the command proves it cannot

    def _run(self, tool: str, arguments: list[str], **kwargs: Any) -> CommandResult:
        return self.run([self.tools[tool], *arguments], self.timeout, **kwargs)

    def _user(self, name: str, job_id: Optional[int] = None) -> LocalUser:
        user = self.lookup(name)
        if user is None:
            raise ItemError(f"user {name} does not exist here; cannot act on Slurm job {job_id} as that user")
        return user

    def job_request(self, script: str, sbatch_arguments: Iterable[str], name: str, directory: str,
                    environment: dict[str, str], tag: str) -> SbatchRequest:
        return build_sbatch_request(script, sbatch_arguments, name, directory, environment, tag)

    def submit(self, request: SbatchRequest, user: str) -> int:
        """`sbatch --parsable` as `user` in the execution directory, the script on stdin. sbatch's
        refusal of the job is a Rejection with its message; Slurm unreachable is Unavailable (the
        intent stays in the journal and the tag settles it)."""
        result = self._run("sbatch", ["--parsable", *request.arguments], user=self._user(user), directory=request.directory,
                           environment=request.environment, stdin=request.script)
        job_id = parse_parsable(result.stdout) if result.returncode == 0 else None
        if job_id:
            if result.stderr.strip():
                log.warning("sbatch accepted job %d with messages: %s", job_id, result.message(),
                            **log_fields(slurm_job_id=job_id, user=user))
            return job_id
        if result.returncode == 0:
            raise Unavailable(f"{result.command}: exit status 0 without a job id ({result.stdout[:200]!r})")
        failure = command_failure(result)
        if isinstance(failure, Unavailable):
            raise failure
        given = [word for word in request.arguments if not word.startswith(("--ignore-pbs", "--job-name=", "--comment="))]
        raise Rejection(f"sbatch refused the job: {result.message()}"
                        + (f" (sbatch_arguments: {shlex.join(given)})" if given else ""))

    def _squeue(self, selection: list[str]) -> list[dict[str, Any]]:
        """slurmctld's records of the selected jobs (all jobs without a selection), in any state."""
        if self.json["squeue"]:
            result = self._run("squeue", ["--json", "--states=all", *selection])
            if result.returncode == 0:
                return json_jobs(result)
            if not self._json_missing("squeue", result):
                return self._squeue_failed(result)
        fields = FIELD_SEPARATOR.join(code for _, code in SQUEUE_FIELDS)
        result = self._run("squeue", ["--noheader", "--states=all", f"--format={fields}", *selection])
        if result.returncode != 0:
            return self._squeue_failed(result)
        return [record for record in map(squeue_text_record, result.stdout.splitlines()) if record]

    def _json_missing(self, tool: str, result: CommandResult) -> bool:
        """True, and the text format used from now on, when `tool` says it cannot print JSON."""
        if SLURM_UNREACHABLE_RE.search(result.stderr) or not NO_JSON_RE.search(result.stderr):
            return False
        log.info("%s cannot print JSON (%s); reading its text output", result.argv[0], result.message())
        self.json[tool] = False
        return True

    @staticmethod
    def _squeue_failed(result: CommandResult) -> list[dict[str, Any]]:
        if SLURM_INVALID_JOB_RE.search(result.stderr):  # every job asked for is unknown to slurmctld
            return []
        raise command_failure(result)

    def states(self, job_ids: Collection[int]) -> SlurmRecords:
        """The records of just these jobs, from one squeue: id -> its records (every task of an
        array); an id missing means slurmctld does not hold the job."""
        if not job_ids:
            return {}
        grouped = records_by_job(self._squeue([f"--jobs={','.join(str(job_id) for job_id in sorted(job_ids))}"]))
        return {job_id: records for job_id, records in grouped.items() if job_id in job_ids}

    def jobs(self) -> SlurmRecords:
        return records_by_job(self._squeue([]))

    def job(self, job_id: int) -> Optional[list[dict[str, Any]]]:
        return self.states([job_id]).get(job_id)

    def jobs_with_tag(self, tag: str, user: str) -> SlurmRecords:
        return tagged_jobs(records_by_job(self._squeue([f"--user={user}"])), tag)

    def _sacct(self, selection: list[str]) -> list[dict[str, Any]]:
        """slurmdbd's records of the selected jobs (allocations, not steps); Unavailable while
        slurmdbd does not answer."""
        if self.json["sacct"]:
            result = self._run("sacct", ["--json", *selection])
            if result.returncode == 0 and not sacct_json_lacks_exit_codes(result):
                return json_jobs(result)
            if result.returncode == 0:
                log.info("%s prints no exit codes in JSON (Slurm 22.05); reading its text output", result.argv[0])
                self.json["sacct"] = False
            elif not self._json_missing("sacct", result):
                raise command_failure(result)
        result = self._run("sacct", ["--noheader", "--parsable2", f"--delimiter={FIELD_SEPARATOR}", "--allocations",
                                     f"--format={','.join(SACCT_FIELDS)}", *selection],
                           environment={**QUERY_ENVIRONMENT, "SLURM_TIME_FORMAT": "%s"})
        if result.returncode != 0:
            raise command_failure(result)
        return [record for record in map(sacct_text_record, result.stdout.splitlines()) if record]

    def accounting_job(self, job_id: int) -> Optional[list[dict[str, Any]]]:
        return newest_accounting_records(self._sacct([f"--jobs={job_id}"]), job_id)

    def accounting_jobs_since(self, user: str, since: float) -> list[dict[str, Any]]:
        # sacct reads times in its own time zone: a relative start needs none
        minutes = int((time.time() - since) // 60) + 2
        return self._sacct([f"--user={user}", f"--starttime=now-{minutes}minutes"])

    def accounting_backlog(self) -> Optional[int]:
        result = self._run("sdiag", [])
        if result.returncode != 0:
            raise command_failure(result)
        found = DBD_QUEUE_RE.search(result.stdout)
        return int(found.group(1)) if found else None

    def cancel(self, job_id: int, user: str) -> Optional[bool]:
        """`scancel` as `user`, the job's owner. scancel says nothing of a job that has already
        ended, so a success is None: the caller reads the job again."""
        result = self._run("scancel", [str(job_id)], user=self._user(user, job_id))
        if result.returncode == 0:
            return None
        if SLURM_JOB_DONE_RE.search(result.stderr):
            return False
        raise command_failure(result)

    def min_job_age(self) -> Optional[int]:
        """slurmctld's MinJobAge (seconds a finished job stays before it is purged), from `scontrol
        show config`; None when it does not say."""
        result = self._run("scontrol", ["show", "config"])
        if result.returncode != 0:
            raise command_failure(result)
        found = MIN_JOB_AGE_RE.search(result.stdout)
        return int(found.group(1)) if found else None

    def controllers(self) -> list[Controller]:
        """`scontrol ping` as root; it exits 1 when no controller answers, and still lists them."""
        result = self._run("scontrol", ["ping"])
        controllers = controllers_from_scontrol(result.stdout)
        if not controllers:
            raise Unavailable(f"{result.command}: lists no controller: {result.message()}")
        return controllers

    def tool_release(self, tool: str) -> str:
        """`TOOL --version`: the Slurm release of that command (for the check)."""
        result = self._run(tool, ["--version"])
        found = VERSION_RE.search(result.stdout)
        if result.returncode != 0 or not found:
            raise command_failure(result)
        return found.group(1)


# ---------------------------------------------------------------------------------------------
# Files as the user: execution directory and job files, written by a program exec'd as the user
# ---------------------------------------------------------------------------------------------


def resolve_execution_directory(requested: Optional[str], template: str, user: LocalUser) -> str:
    directory = requested if requested else template.format(username=user.name, home=user.home)
    refused = control_character(directory)
    if refused:
        raise Rejection(f"execution directory {directory!r} contains a control character ({refused})")
    if not directory.startswith("/"):
        raise Rejection(f"execution directory {directory!r} is not an absolute path")
    return os.path.normpath(directory)


def read_whole(fd: int) -> bytes:
    """A downloaded file's content. pread, never the descriptor's offset: workers share the file."""
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


# The program that writes the files of one user's submissions, exec'd as that user (UserWriter). It knows
# only its requests: each a message on the socket that is its stdin, marshalled (the directory, the files'
# names, the mode, whether to replace files it did not write), with the files' sources as descriptors
# (SCM_RIGHTS). It answers each with a message "ok", "rejection" (the owner's to fix) or "error" (retried
# next pass), the latter two followed by a line with the message, and ends when the socket closes.
# Every file goes to a temporary name and is renamed into place, so a failed write leaves the old file
# whole; the names and signatures of the files it wrote are kept in MANIFEST in the directory, and only
# those are replaced unless told otherwise. Only modules that load fast: it starts once per user and pass.
FILE_WRITER_SOURCE = r'''
import errno, marshal, os, socket, stat


def not_dumpable():
    """PR_SET_DUMPABLE 0, as soon as may be: no tracing, no /proc/<pid>/mem. Through _ctypes, which loads
    in a millisecond where the ctypes package takes ten."""
    try:
        import _ctypes
        _ctypes.call_function(_ctypes.dlsym(_ctypes.dlopen(None), "prctl"), (4, 0, 0, 0, 0))
    except AttributeError:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)


not_dumpable()
PERMANENT = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.ENAMETOOLONG, errno.EROFS,
             errno.EEXIST, errno.ENOENT, errno.ENXIO}
MANIFEST = ".jobbergate-sync-files"


class Refused(Exception):
    """The files cannot be written as the submission asks: its owner is told."""


class Transient(Exception):
    """The files could not be written this time (a full disk, a quota): tried again next pass."""


def failure(exc, what):
    return (Refused if exc.errno in PERMANENT else Transient)(f"{what}: {exc.strerror}")


def signature(info):
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def existing(name, directory_fd):
    try:
        return os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_directory(directory, mode):
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        try:
            os.makedirs(directory, mode, exist_ok=True)
            info = os.lstat(directory)
        except OSError as exc:
            raise failure(exc, f"cannot create execution directory {directory}") from None
    except OSError as exc:
        raise failure(exc, f"cannot reach execution directory {directory}") from None
    if stat.S_ISLNK(info.st_mode):
        raise Refused(f"execution directory {directory} is a symbolic link; give the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise Refused(f"execution directory {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise Refused(f"execution directory {directory} is not writable by the job's user")
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_manifest(directory_fd):
    """The files written here before: lines "inode size mtime_ns name" (names never hold a newline)."""
    manifest = {}
    try:
        fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory_fd)
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(1 << 20).decode() if stat.S_ISREG(os.fstat(fd).st_mode) else ""
        for line in text.splitlines():
            inode, size, mtime, name = line.split(" ", 3)
            manifest[name] = [int(inode), int(size), int(mtime)]
    except (OSError, ValueError):
        return {}
    return manifest


def write_file(directory_fd, name, write, mode, path):
    """Call write(out) on a new temporary file, then rename it to `name`; the signature of what is there."""
    temporary = f".jobbergate-sync-{os.getpid()}.tmp"  # one file at a time: renamed or removed before the next
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=directory_fd)
    except OSError as exc:
        raise failure(exc, f"cannot write {path}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            info = os.fstat(fd)
        os.rename(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    except OSError as exc:
        try:
            os.unlink(temporary, dir_fd=directory_fd)
        except OSError:
            pass
        raise failure(exc, f"cannot write {path}") from None
    return signature(info)


def copy_from(source):
    def write(out):
        offset = 0
        while True:
            chunk = os.pread(source, 1 << 20, offset)
            if not chunk:
                return
            out.write(chunk)
            offset += len(chunk)
    return write


def stage(directory, files, mode, replace):
    directory_mode = mode | (mode & 0o444) >> 2  # x where r: 0600 -> 0700, 0640 -> 0750
    os.umask(0o777 & ~directory_mode)  # also the mode of the parent directories makedirs creates
    directory_fd = open_directory(directory, directory_mode)
    try:
        write_all(directory, directory_fd, files, mode, replace)
    finally:
        os.close(directory_fd)


def write_all(directory, directory_fd, files, mode, replace):
    manifest = read_manifest(directory_fd)
    for name, _ in files:  # every file checked before any is written
        try:
            info = existing(name, directory_fd)
        except OSError as exc:
            raise failure(exc, f"cannot write {directory}/{name}") from None
        if info is None:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise Refused(f"{directory}/{name} is a symbolic link; refusing to write through it")
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{directory}/{name} exists and is not a regular file")
        if not replace and manifest.get(name) != signature(info):
            raise Refused(f"{directory}/{name} exists and jobbergate-sync did not write it (or it changed since): "
                          "it is left alone; move it away or choose another execution directory")
    for name, source in files:
        manifest[name] = write_file(directory_fd, name, copy_from(source), mode, f"{directory}/{name}")
    if files:
        current = {name: mark for name, mark in manifest.items() if still_there(name, mark, directory_fd)}
        text = "".join(f"{inode} {size} {mtime} {name}\n" for name, (inode, size, mtime) in current.items())
        write_file(directory_fd, MANIFEST, lambda out: out.write(text.encode()), 0o600, f"{directory}/{MANIFEST}")


def still_there(name, mark, directory_fd):
    info = existing(name, directory_fd)
    return info is not None and signature(info) == mark


def answer(request, sources):
    try:
        stage(request["directory"], list(zip(request["names"], sources)), request["file_mode"], request["replace"])
        return "ok\n"
    except Refused as exc:
        return f"rejection\n{exc}"
    except Transient as exc:
        return f"error\n{exc}"
    except Exception as exc:
        return f"error\n{type(exc).__name__}: {exc}"
    finally:
        for source in sources:
            os.close(source)


channel = socket.socket(fileno=0)
while True:
    message, sources, _, _ = socket.recv_fds(channel, 1 << 20, 253)  # SCM_MAX_FD: descriptors in one message
    if not message:
        break
    channel.send(answer(marshal.loads(message), sources).encode(errors="surrogateescape"))
'''


# The writer needs only the standard library, run by an interpreter every user can reach: this one's real
# file (not a virtual environment's link to it), unless it sits where only root can enter (a pyenv in
# /root), then the system's.
SYSTEM_PYTHON = "/usr/bin/python3"


def runnable_by_anyone(path: str) -> bool:
    """Whether others may execute `path` and enter every directory on the way to it."""
    steps = [path] + [os.path.dirname(path)]
    while steps[-1] != os.path.dirname(steps[-1]):
        steps.append(os.path.dirname(steps[-1]))
    try:
        return all(os.stat(step).st_mode & stat.S_IXOTH for step in steps)
    except OSError:
        return False


def writer_python() -> str:
    real = os.path.realpath(sys.executable)
    return real if runnable_by_anyone(real) else SYSTEM_PYTHON


# The most of a writer's answer read (a line or two; only a process tracing it could send more).
WRITER_REPORT_BYTES = 65536
# A writer's time limit: a start-up allowance plus its bytes at this rate (a slow NFS still writes 1 MiB/s),
# never past the deadline (plus DEADLINE_GRACE_TIMEOUT, as HTTP calls).
WRITER_START_SECONDS = 10.0
WRITER_BYTES_PER_SECOND = 1024 * 1024
# How long to wait for a killed process to be gone: one stuck in the kernel (a hung NFS) is left to end later.
KILLED_PROCESS_WAIT = 5.0


def writer_timeout(total_bytes: int, remaining: float) -> float:
    return min(WRITER_START_SECONDS + total_bytes / WRITER_BYTES_PER_SECOND, max(remaining, DEADLINE_GRACE_TIMEOUT))


# Descriptors one message can carry (the kernel's SCM_MAX_FD): the most files a submission may have.
MAX_SUBMISSION_FILES = 253


class FileWriters:
    """The pass's file writers: one per user, started when that user's first submission is written and
    ended with the submit phase (close)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writers: dict[tuple[int, int, str], UserWriter] = {}

    def write(self, user: LocalUser, directory: str, files: list[tuple[str, int]], file_mode: int, replace: bool,
              timeout: float) -> None:
        with self.lock:
            writer = self.writers.setdefault((user.uid, user.gid, user.name), UserWriter(user))
        writer.write(directory, files, file_mode, replace, timeout)

    def close(self) -> None:
        with self.lock:
            writers, self.writers = list(self.writers.values()), {}
        for writer in writers:
            writer.close()


class UserWriter:
    """Writes a user's files into execution directories through a freshly exec'd program (FILE_WRITER_SOURCE)
    with the user's uid, gid and groups and nothing of this process but what each request hands it (no
    memory, secrets or other descriptors), one request at a time. A writer that does not answer within
    the request's time limit (the user may stop it: it runs as them) is killed, and only that item fails;
    the user's next request starts a new one."""

    def __init__(self, user: LocalUser):
        self.user = user
        self.lock = threading.Lock()
        self.process: Optional[subprocess.Popen] = None
        self.channel: Optional[socket.socket] = None

    def write(self, directory: str, files: list[tuple[str, int]], file_mode: int, replace: bool,
              timeout: float) -> None:
        """Create `directory` if missing and write each (name, source descriptor) into it as the user."""
        what = f"writing files to {directory} as {self.user.name}"
        request = marshal.dumps({"directory": directory, "names": [name for name, _ in files],
                                 "file_mode": file_mode, "replace": replace})
        with self.lock:
            channel = self.channel or self.start(what)
            try:
                channel.settimeout(timeout)
                socket.send_fds(channel, [request], [source for _, source in files])
                answer = channel.recv(WRITER_REPORT_BYTES)
            except socket.timeout:
                self.end(kill=True)
                raise ItemError(f"{what}: the writer did not finish within {timeout:g} s; it was killed") from None
            except ConnectionError:  # the writer is gone
                answer = b""
            except OSError as exc:
                self.end(kill=True)
                raise ItemError(f"{what}: cannot reach the writer: {exc}") from None
            if not answer:
                status = self.end(kill=True)
                raise ItemError(f"{what}: the writer ended without answering (exit status {status})")
        outcome, _, message = answer.decode(errors="replace").partition("\n")
        if outcome == "rejection":
            raise Rejection(message)
        if outcome != "ok":
            raise ItemError(f"{what}: {message}")

    def start(self, what: str) -> socket.socket:
        identity: dict[str, Any] = {}
        if os.geteuid() == 0:
            identity = {"user": self.user.uid, "group": self.user.gid,
                        "extra_groups": os.getgrouplist(self.user.name, self.user.gid)}
        elif os.geteuid() != self.user.uid:
            raise ItemError(f"jobbergate-sync runs as uid {os.geteuid()} and cannot act as {self.user.name}; "
                            "run it as root")
        channel, writers_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with writers_end:
            try:
                self.process = subprocess.Popen([writer_python(), "-I", "-S", "-c", FILE_WRITER_SOURCE],
                                                stdin=writers_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                close_fds=True, env={}, cwd="/", **identity)
            except OSError as exc:
                channel.close()
                raise ItemError(f"{what}: cannot start the writer: {exc.strerror}") from None
        self.channel = channel
        return channel

    def end(self, kill: bool) -> Optional[int]:
        """Close the writer's socket, where it ends, or kill it; its exit status once it is gone (None: not yet)."""
        process, channel, self.process, self.channel = self.process, self.channel, None, None
        if channel is not None:
            channel.close()
        if process is None:
            return None
        if not kill:
            try:
                return process.wait(KILLED_PROCESS_WAIT)
            except subprocess.TimeoutExpired:
                pass  # stopped by its user between requests: killed
        stop_process(process, f"the file writer of {self.user.name}")
        return process.returncode

    def close(self) -> None:
        with self.lock, contextlib.suppress(ItemError):
            self.end(kill=False)


def stop_process(process: subprocess.Popen, what: str) -> None:
    """SIGKILL a process that overran, and reap it. A process of another uid can be killed only with
    CAP_KILL: without it the item fails now, and the process is left running rather than waited for."""
    try:
        process.kill()
    except PermissionError:
        raise ItemError(f"{what}: it overran and cannot be stopped (Operation not permitted: the service needs "
                        "CAP_KILL); it is left running") from None
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(KILLED_PROCESS_WAIT)


# ---------------------------------------------------------------------------------------------
# State journal: what was submitted and reported, durable across crashes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    submission_id: int
    tag: str
    username: Optional[str]
    slurm_job_id: Optional[int]
    reported: bool
    last_state: Optional[str]
    last_reason: Optional[str]
    last_reported_at: Optional[float]
    created_at: float
    intent_at: Optional[float] = None  # when the submit was decided, just before it was sent
    job_name: Optional[str] = None  # the job's name and working directory as sent: with the owner and
    working_directory: Optional[str] = None  # intent_at they find a purged job in slurmdbd


JOURNAL_COLUMNS = ("submission_id, tag, username, slurm_job_id, reported, last_state, last_reason, "
                   "last_reported_at, created_at, intent_at, job_name, working_directory")
JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    submission_id INTEGER PRIMARY KEY,
    tag TEXT NOT NULL,
    username TEXT,
    slurm_job_id INTEGER,
    reported INTEGER NOT NULL DEFAULT 0,
    last_state TEXT,
    last_reason TEXT,
    last_reported_at REAL,
    created_at REAL NOT NULL,
    intent_at REAL,
    job_name TEXT,
    working_directory TEXT
)"""
# Job metrics: the submissions whose profile is followed, and the newest sample time uploaded for
# each of their (host, step, task) series (what GET agent/metrics/{id} answers as max_times).
METRICS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS metric_jobs (submission_id INTEGER PRIMARY KEY, slurm_job_id INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS metric_marks (submission_id INTEGER NOT NULL, node_host TEXT NOT NULL, "
    "step INTEGER NOT NULL, task INTEGER NOT NULL, max_time INTEGER NOT NULL, "
    "PRIMARY KEY (submission_id, node_host, step, task))",
)
JOURNAL_VERSION = 3
# Version 1 had no intent columns. Its created_at of a row without a job id is the intent's time
# (record_intent wrote both at once), so it becomes intent_at; name and directory stay unknown.
JOURNAL_MIGRATIONS = {
    2: ("ALTER TABLE submissions ADD COLUMN intent_at REAL",
        "ALTER TABLE submissions ADD COLUMN job_name TEXT",
        "ALTER TABLE submissions ADD COLUMN working_directory TEXT",
        "UPDATE submissions SET intent_at = created_at WHERE slurm_job_id IS NULL AND reported = 0"),
    3: METRICS_SCHEMA,
}


# Submissions whose work failed unexpectedly (a bug met on their input), by passes in a row: its own
# table, which a journal of any schema version gains without a migration (older versions ignore it).
ITEM_FAILURES_SCHEMA = """
CREATE TABLE IF NOT EXISTS item_failures (
    submission_id INTEGER PRIMARY KEY,
    passes INTEGER NOT NULL,
    last_failure TEXT NOT NULL,
    last_failed_at REAL NOT NULL
)"""


def migrate_journal(db: sqlite3.Connection) -> None:
    """Bring a journal of any earlier version to JOURNAL_VERSION, in one transaction."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(submissions)")}
    if not columns:
        for statement in (JOURNAL_SCHEMA, *METRICS_SCHEMA):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {JOURNAL_VERSION}")
        return
    version = db.execute("PRAGMA user_version").fetchone()[0] or (2 if "intent_at" in columns else 1)
    if version > JOURNAL_VERSION:
        raise ConfigError(f"the journal was written by a newer jobbergate-sync (schema {version}); "
                          f"this one reads schema {JOURNAL_VERSION} at most")
    if version == JOURNAL_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version + 1, JOURNAL_VERSION + 1):
            for statement in JOURNAL_MIGRATIONS[step]:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {JOURNAL_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info("journal migrated from schema %d to %d", version, JOURNAL_VERSION)


class Journal:
    """sqlite3 with synchronous=FULL: a row is on disk before the call that follows it. One
    connection shared by the pass's workers, one statement at a time under `lock` (sqlite would
    serialise the writes anyway; one connection keeps each worker's write visible to the others at
    once, with no busy waits between connections of one process)."""

    def __init__(self, path: Optional[str]):
        self.lock = threading.Lock()
        if path is None:  # dry run: a scratch copy, so planning writes nothing
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            create_private_file(path)
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
            self.db.execute("PRAGMA synchronous=FULL")
        migrate_journal(self.db)
        self.db.execute(ITEM_FAILURES_SCHEMA)

    @classmethod
    def scratch_copy_of(cls, path: str) -> "Journal":
        journal = cls(None)
        if os.path.exists(path):
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            source.backup(journal.db)
            source.close()
            migrate_journal(journal.db)
            journal.db.execute(ITEM_FAILURES_SCHEMA)
        return journal

    def _execute(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    def get(self, submission_id: int) -> Optional[JournalEntry]:
        rows = self._execute(f"SELECT {JOURNAL_COLUMNS} FROM submissions WHERE submission_id = ?", (submission_id,))
        return JournalEntry(*rows[0][:4], bool(rows[0][4]), *rows[0][5:]) if rows else None

    def record_intent(self, submission_id: int, tag: str, username: str, job_name: str, working_directory: str) -> None:
        now = time.time()
        self._execute(
            "INSERT OR REPLACE INTO submissions (submission_id, tag, username, created_at, intent_at, job_name, "
            "working_directory) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (submission_id, tag, username, now, now, job_name, working_directory))

    def record_adopted(self, submission_id: int, tag: str, username: str, slurm_job_id: int) -> None:
        """The submission's job, found in Slurm by its tag (submitted by another host's pass)."""
        self._execute("INSERT OR REPLACE INTO submissions (submission_id, tag, username, slurm_job_id, created_at) "
                      "VALUES (?, ?, ?, ?, ?)", (submission_id, tag, username, slurm_job_id, time.time()))

    def record_job(self, submission_id: int, slurm_job_id: int) -> None:
        self._execute("UPDATE submissions SET slurm_job_id = ? WHERE submission_id = ?", (slurm_job_id, submission_id))

    def record_report(self, submission_id: int, report: StateReport) -> None:
        """The submission's job is known to Jobbergate, with this state as the last one sent. A
        submission the journal holds no submit of gets no tag (''): a tag only serves to find the job
        of an interrupted submit."""
        self._execute(
            "INSERT INTO submissions (submission_id, tag, slurm_job_id, reported, last_state, last_reason, "
            "last_reported_at, created_at) VALUES (?, '', ?, 1, ?, ?, ?, ?) ON CONFLICT(submission_id) DO UPDATE SET "
            "slurm_job_id = excluded.slurm_job_id, reported = 1, last_state = excluded.last_state, "
            "last_reason = excluded.last_reason, last_reported_at = excluded.last_reported_at",
            (submission_id, report.job_id, report.state, report.reason, time.time(), time.time()))

    def forget(self, submission_id: int) -> None:
        self._execute("DELETE FROM submissions WHERE submission_id = ?", (submission_id,))

    def entries(self) -> list[JournalEntry]:
        ids = [row[0] for row in self._execute("SELECT submission_id FROM submissions")]
        return [entry for entry in map(self.get, ids) if entry]

    def size(self) -> int:
        return self._execute("SELECT count(*) FROM submissions")[0][0]

    def failure_counts(self) -> dict[int, int]:
        """How many passes in a row each submission failed unexpectedly (only those that did)."""
        return dict(self._execute("SELECT submission_id, passes FROM item_failures"))  # type: ignore[arg-type]

    def record_failure(self, submission_id: int, failure: str) -> int:
        """One more pass in a row in which the submission failed unexpectedly; how many now."""
        self._execute(
            "INSERT INTO item_failures (submission_id, passes, last_failure, last_failed_at) VALUES (?, 1, ?, ?) "
            "ON CONFLICT(submission_id) DO UPDATE SET passes = passes + 1, last_failure = excluded.last_failure, "
            "last_failed_at = excluded.last_failed_at", (submission_id, failure, time.time()))
        return self._execute("SELECT passes FROM item_failures WHERE submission_id = ?", (submission_id,))[0][0]

    def clear_failures(self, submission_id: int) -> None:
        self._execute("DELETE FROM item_failures WHERE submission_id = ?", (submission_id,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Several statements applied together or not at all (the connection is in autocommit mode)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def metric_jobs(self) -> dict[int, "MetricsJob"]:
        """The submissions whose job metrics are followed, with their series' high-water marks."""
        jobs = {row[0]: MetricsJob(row[0], row[1], {}) for row in self._execute(
            "SELECT submission_id, slurm_job_id FROM metric_jobs")}
        for submission_id, host, step, task, max_time in self._execute(
                "SELECT submission_id, node_host, step, task, max_time FROM metric_marks"):
            if submission_id in jobs:
                jobs[submission_id].marks[(host, step, task)] = max_time
        return jobs

    def follow_metrics(self, job: "MetricsJob") -> None:
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO metric_jobs (submission_id, slurm_job_id) VALUES (?, ?)",
                            (job.submission_id, job.slurm_job_id))
            self._write_marks(job.submission_id, job.marks)

    def write_metric_marks(self, marks: Mapping[int, Mapping[tuple[str, int, int], int]], forgotten: Collection[int]) -> None:
        """In one transaction: raise these submissions' series marks (never lowering them), then stop
        following the `forgotten` submissions."""
        if not marks and not forgotten:
            return
        with self._transaction():
            for submission_id, submission_marks in marks.items():
                self._write_marks(submission_id, submission_marks)
            for submission_id in forgotten:
                self.db.execute("DELETE FROM metric_marks WHERE submission_id = ?", (submission_id,))
                self.db.execute("DELETE FROM metric_jobs WHERE submission_id = ?", (submission_id,))

    def _write_marks(self, submission_id: int, marks: Mapping[tuple[str, int, int], int]) -> None:
        self.db.executemany(
            "INSERT INTO metric_marks (submission_id, node_host, step, task, max_time) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(submission_id, node_host, step, task) DO UPDATE SET "
            "max_time = max(max_time, excluded.max_time)",
            [(submission_id, host, step, task, max_time) for (host, step, task), max_time in marks.items()])

    def job_ids_of_others(self, submission_id: int) -> set[int]:
        """The Slurm jobs the journal holds for other submissions: never the job of this one."""
        return {row[0] for row in self._execute(
            "SELECT slurm_job_id FROM submissions WHERE slurm_job_id IS NOT NULL AND submission_id != ?",
            (submission_id,))}


# ---------------------------------------------------------------------------------------------
# Two head nodes: which controller is in charge, and this host's role
# ---------------------------------------------------------------------------------------------

# This host's last role, kept in the state directory: a host that was not active at its last
# pass settles every CREATED submission against Slurm before submitting any (see HostRole).
ROLE_FILE = "role.json"
# One line of `scontrol ping` per controller, in SlurmctldHost order, the same in 22.05 to 25.11
# (_print_ping in scontrol.c): "Slurmctld(primary) at head1 is UP".
SCONTROL_PING_RE = re.compile(r"^Slurmctld\(([^)]*)\) at (\S+) is (UP|DOWN)\s*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Controller:
    """One SlurmctldHost entry as Slurm's ping reports it."""

    hostname: str
    mode: str  # "primary", "backup" (of two), "backup2"...: its place in SlurmctldHost order
    responding: bool


def controller_mode(position: int, count: int) -> str:
    """Slurm's name of the controller at `position` of `count` (scontrol.c, data_parser CONTROLLER_PING_MODE)."""
    if position == 0:
        return "primary"
    return "backup" if position == 1 and count == 2 else f"backup{position}"


def controllers_from_ping(body: Any) -> list[Controller]:
    """The controllers of a GET ping answer, in SlurmctldHost order, whatever the version: v0.0.38
    {hostname, ping: "UP"|"DOWN", status, mode}; v0.0.40 and v0.0.41 {hostname, pinged, latency, mode};
    v0.0.42 on also responding (a bool) and primary (first in SlurmctldHost order), pinged and mode
    deprecated."""
    pings = body.get("pings") if isinstance(body, dict) else None
    pings = [entry for entry in pings if isinstance(entry, dict)] if isinstance(pings, list) else []
    controllers = []
    for position, entry in enumerate(pings):
        hostname, mode, responding = entry.get("hostname"), entry.get("mode"), entry.get("responding")
        if not isinstance(hostname, str) or not hostname:
            continue
        if not isinstance(responding, bool):
            responding = str(entry.get("pinged", entry.get("ping"))).upper() == "UP"
        controllers.append(Controller(hostname, mode if isinstance(mode, str) else controller_mode(position, len(pings)),
                                      responding))
    return controllers


def controllers_from_scontrol(text: str) -> list[Controller]:
    """The controllers `scontrol ping` lists, in SlurmctldHost order."""
    return [Controller(hostname, mode, state == "UP") for mode, hostname, state in SCONTROL_PING_RE.findall(text)]


def controllers_text(controllers: Iterable[Controller]) -> str:
    return ", ".join(f"{c.hostname} ({c.mode}, {'UP' if c.responding else 'DOWN'})" for c in controllers)


def local_host_names(aliases: str) -> set[str]:
    """This host's names, lower case: its hostname, its FQDN, their first labels (SlurmctldHost
    usually gives the short name), and the [run] host_names aliases."""
    names = {socket.gethostname(), socket.getfqdn()}
    names |= {name.split(".")[0] for name in names}
    names |= {alias.strip() for alias in aliases.split(",")}
    return {name.lower() for name in names if name}


def is_this_host(hostname: str, names: set[str]) -> bool:
    return hostname.lower() in names or hostname.lower().split(".")[0] in names


class Standby(Exception):
    """This host stands by: another host's slurmctld is in charge, or this host has just taken over
    and waits for the passes started on the other host to end. The pass does nothing and ends with
    exit 0; the message says why."""


def role_of_this_host(controllers: list[Controller], names: Callable[[], set[str]]) -> tuple[bool, Optional[Controller]]:
    """(whether this host is active, the controller in charge: the first in SlurmctldHost order that
    answers). With one controller this host is active whatever it answers, as before two head nodes
    were known. ConfigError when none of several controllers is this host, Unavailable when none answers."""
    in_charge = next((controller for controller in controllers if controller.responding), None)
    if len(controllers) <= 1:
        return True, in_charge
    ours = names()
    mine = [controller for controller in controllers if is_this_host(controller.hostname, ours)]
    if not mine:
        raise ConfigError(f"[run] host_names: this host ({', '.join(sorted(ours))}) is none of Slurm's controllers "
                          f"({controllers_text(controllers)}); add the name SlurmctldHost gives this host to [run] "
                          "host_names, or set [run] role = always on a host that is no head node")
    if in_charge is None:
        raise Unavailable(f"no Slurm controller answers ({controllers_text(controllers)}): cannot tell which head "
                          "node is in charge; nothing done")
    return in_charge in mine, in_charge


class HostRole:
    """This host's role in a pass ([run] role): with role = auto, passes run only where the slurmctld
    in charge runs. The role is kept in the state directory (ROLE_FILE) with the time of the pass.
    A host that takes over (it stood by, or ran no pass for 2 x [run] interval, or has no journal)
    settles every CREATED submission against Slurm before submitting any, since the host in charge
    before may have submitted them; with two head nodes it first waits (takeover_wait) for the passes
    started on that host to end."""

    def __init__(self, config: Config, slurm: "SlurmBackend", write: bool = True):
        self.setting = config.run.role
        self.aliases = config.run.host_names
        self.path = os.path.join(config.run.state_dir, ROLE_FILE)
        self.slurm = slurm
        self.write = write
        self.away = 2 * config.run.interval
        # A pass started on the other host stops starting work at its deadline; what is under way
        # then ends within a Slurm exchange or two.
        self.takeover_wait = config.run.deadline + 2 * slurm.timeout
        self.kept = self._remembered()

    def _remembered(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                kept = json.load(handle)
        except (OSError, ValueError):
            return {}
        return kept if isinstance(kept, dict) else {}

    def take(self, journal_path: str) -> bool:
        """Raises Standby when this host stands by; else whether this pass must settle the CREATED
        submissions against Slurm first, remembered until `settled` says it was done."""
        now, kept = time.time(), self.kept
        controllers, elsewhere = self.ask_slurm()
        if elsewhere is not None:
            self._keep({"role": "standby", "settled": False, "since": kept.get("since") if kept.get("role") == "standby"
                        else now, "at": now, "controllers": controllers})
            raise Standby(f"the slurmctld in charge runs on {elsewhere.hostname}, not on this host")
        last_pass = kept.get("at") if isinstance(kept.get("at"), (int, float)) else 0
        settle = (kept.get("role") != "active" or kept.get("settled") is not True or not os.path.exists(journal_path)
                  or not 0 <= now - last_pass <= self.away)
        taking_over = kept.get("role") == "active" and kept.get("settled") is False
        since = kept.get("since") if taking_over and isinstance(kept.get("since"), (int, float)) else now
        self._keep({"role": "active", "settled": not settle, "since": since, "at": now,
                    "controllers": controllers or kept.get("controllers") or []})
        if settle and self.setting == "auto" and len(self.kept["controllers"]) > 1 and now < since + self.takeover_wait:
            raise Standby(f"this host's slurmctld is in charge since {utc_text(since)}; passes started on the other "
                          f"head node end by {utc_text(since + self.takeover_wait)}, then this host settles the "
                          "pending submissions against Slurm and submits")
        return settle

    def ask_slurm(self) -> tuple[list[str], Optional[Controller]]:
        """(Slurm's controllers, the one in charge when it is not this host's). No controller when
        role = always, or when Slurm cannot say and this host has seen one controller at most."""
        if self.setting != "auto":
            return [], None
        try:
            found = self.slurm.controllers()
        except Unavailable as exc:
            if len(self.kept.get("controllers") or []) > 1:
                raise Unavailable(f"cannot tell which head node is in charge: {exc}") from None
            log.info("cannot ask Slurm which controller is in charge (%s); going on as with one controller, "
                     "the most this host has seen", exc)
            return [], None
        active, in_charge = role_of_this_host(found, lambda: local_host_names(self.aliases))
        return [controller.hostname for controller in found], None if active else in_charge

    def settled(self) -> None:
        """Every CREATED submission was settled against Slurm: the next passes need not."""
        self._keep({**self.kept, "settled": True})

    def _keep(self, role: dict[str, Any]) -> None:
        if self.write and role != self.kept:
            write_private_file(self.path, json.dumps(role).encode())
        self.kept = role


# ---------------------------------------------------------------------------------------------
# The pass: its phases in order, and what they share
# ---------------------------------------------------------------------------------------------


class SyncPass:
    def __init__(self, config: Config, api: JobbergateApi, slurm: SlurmBackend, journal: Journal, mapper: UserMapper,
                 deadline: Deadline, dry_run: bool = False, settle_created: Optional[Callable[[], None]] = None):
        """settle_created: given when every CREATED submission must be settled against Slurm before
        any is submitted (see HostRole); called once they all were."""
        self.context = PassContext(config, api, slurm, journal, mapper, deadline, dry_run, settle_created)
        self.summary = self.context.summary

    def run(self) -> PassSummary:
        """Submit, update, ping health. The submit phase gets at most `[run] submit_share` of the
        deadline, so that a backlog never keeps the update phase (and the cancels it makes) or the
        ping from running. Whatever ends a phase (its time, a peer down, a bug), the next still runs
        and the health ping is always sent; a bug is raised after the ping (the pass exits 70).
        Authentication and configuration failures end the pass at once: the next phases would meet
        them again."""
        context = self.context
        run_settings = context.config.run
        submit_deadline = context.deadline.share(run_settings.submit_share)
        phases: list[tuple[str, Callable[[], None]]] = [("submit phase", lambda: SubmitPhase(context).run(submit_deadline)),
                                                         ("update phase", UpdatePhase(context).run),
                                                         ("health ping", context.changes.ping_health),
                                                         ("job metrics", JobMetricsPhase(context).run)]
        ending: Optional[Exception] = None
        for name, phase in phases:
            try:
                context.contain(phase, f"{name} ended")
            except DeadlineReached:
                self.summary.deadline_reached = True
                log.warning("the %s reached the %s; its remaining work waits for the next pass", name,
                            f"submit share of the deadline ({run_settings.deadline * run_settings.submit_share:g} s)"
                            if name == "submit phase" else f"{run_settings.deadline} s deadline")
            except SyncError:
                raise
            except Exception as exc:  # a bug: the pass exits 70 once the phases after it have run
                if ending is None:
                    ending = exc
                else:
                    log.exception("%s ended by an internal error", name)
        self.summary.count("errors", context.api.malformed_items)
        if ending is not None:
            raise ending
        return self.summary


@dataclasses.dataclass
class PassSummary:
    submitted: int = 0
    rejected: int = 0
    updated: int = 0
    cancelled: int = 0
    errors: int = 0
    unavailable: bool = False
    deadline_reached: bool = False
    pending: Optional[int] = None  # how many submissions the pass listed (None: the list failed)
    standby: Optional[str] = None  # why this host stood by in this pass (see Standby)
    active: Optional[int] = None
    influxdb_failures: Optional[int] = None  # InfluxDB queries that failed (None: job metrics are off)
    lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, outcome: str, number: int = 1) -> None:
        """Add to a counter; workers count side by side, and `+=` on an attribute is no atomic step."""
        with self.lock:
            setattr(self, outcome, getattr(self, outcome) + number)

    def exit_code(self) -> int:
        if self.unavailable:
            return EX_UNAVAILABLE
        return EXIT_ITEMS_FAILED if self.errors else EXIT_OK


WorkItem = TypeVar("WorkItem")


def run_in_threads(items: Sequence[WorkItem], work: Callable[[int, WorkItem], None], threads: int,
                   deadline: Deadline) -> None:
    """Run work(position, item) on each item, by up to `threads` threads taking the items in order;
    with one thread, in this one. No item starts once `deadline` has passed or once an item raised
    (what ends the pass: the work contains the rest): the items under way finish, then that is
    raised here."""
    upcoming = enumerate(items)
    lock = threading.Lock()
    stops: list[BaseException] = []  # why no further item may start

    def worker() -> None:
        while True:
            with lock:
                position, item = next(upcoming, (None, None)) if not stops else (None, None)
                if position is not None and deadline.remaining() <= 0:
                    stops.append(DeadlineReached())
                    return
            if position is None:
                return
            try:
                work(position, item)
            except BaseException as exc:  # handed to the calling thread, which raises it
                with lock:
                    stops.append(exc)

    workers = [threading.Thread(target=worker, name=f"worker-{number}")
               for number in range(1, min(threads, len(items)) + 1)]
    if len(workers) <= 1:
        worker()
    else:
        for thread in workers:
            thread.start()
        try:
            for thread in workers:
                thread.join()
        except BaseException as exc:  # interrupted: no further item starts, those under way finish
            with lock:
                stops.insert(0, exc)
            for thread in workers:
                thread.join()
    if stops:
        raise next((exc for exc in stops if not isinstance(exc, DeadlineReached)), stops[0])


class PassContext:
    """What the phases share: the peers, the journal, the summary, containment, and the one object
    that changes anything (`changes`), live or dry, chosen here once."""

    def __init__(self, config: Config, api: JobbergateApi, slurm: SlurmBackend, journal: Journal, mapper: UserMapper,
                 deadline: Deadline, dry_run: bool, settle_created: Optional[Callable[[], None]] = None):
        self.config = config
        self.api = api
        self.slurm = slurm
        self.journal = journal
        self.mapper = mapper
        self.deadline = deadline
        self.cluster = config.oidc.client_id
        self.summary = PassSummary()
        self.pending_ids: Optional[set[int]] = None  # every pending submission, once fully listed
        self.reported_now: set[int] = set()  # submissions this pass reported SUBMITTED (set.add is atomic)
        # submission -> its Slurm job, for those whose job the update phase found to be their owner's: by
        # its records now, or unchanged since a report that was (only these are read for job metrics)
        self.owned_jobs: dict[int, int] = {}
        self.writers = FileWriters()  # what writes job files as their users, one writer per user
        self.active_listed: Optional[tuple[list[dict[str, Any]], bool]] = None  # agent/active: (items, complete)
        self.changes: Changes = DryRunChanges(self) if dry_run else LiveChanges(self)
        self.earlier = EarlierSubmit(self)
        self.failing = journal.failure_counts()  # submissions that failed unexpectedly in the passes before
        self.settle_created = settle_created

    def contain(self, action: Callable[[], None], what: str, submission_id: Optional[int] = None) -> None:
        """Run `action`; an outage, an item failure or an API refusal is logged and counted and the
        pass goes on. Everything else (authentication, configuration, deadline, bugs) goes up."""
        try:
            action()
        except Unavailable as exc:
            self.summary.unavailable = True
            self.log_failure(f"{what}: left for the next pass: {exc}", submission_id)
        except ItemError as exc:
            self.log_failure(f"{what}: {exc}", submission_id)
        except ApiConflict as exc:
            self.log_failure(f"{what}: the API refused a change: {exc}", submission_id)

    def contain_item(self, submission_id: int, action: Callable[[], None],
                     reject: Optional[Callable[[int, str], None]] = None) -> None:
        """Run one item's work; its failure is logged and counted, and the pass goes on. An unexpected
        exception (a bug met on this item's input) is this item's failure too, logged with its
        traceback; `reject` rejects a submission that failed so in FAILED_PASSES_TO_REJECT passes in a
        row, so that it cannot fail every pass for ever. Only what ends the pass goes up."""
        def settled() -> None:
            action()
            if self.failing.pop(submission_id, None) is not None:
                self.journal.clear_failures(submission_id)

        try:
            self.contain(settled, f"submission {submission_id}", submission_id)
        except (SyncError, DeadlineReached):
            raise
        except Exception as exc:
            self.unexpected_failure(submission_id, exc, reject)

    def unexpected_failure(self, submission_id: int, exc: Exception,
                           reject: Optional[Callable[[int, str], None]]) -> None:
        failure = printable(REDACTOR.redact(f"{type(exc).__name__}: {exc}"))[:300]  # for the owner too
        passes = self.journal.record_failure(submission_id, failure)
        self.failing[submission_id] = passes
        self.summary.count("errors")
        log.error("submission %d: unexpected failure (%d pass(es) in a row), left for the next pass: %s; "
                  "please report it with this traceback", submission_id, passes, failure, exc_info=True,
                  **log_fields(submission_id=submission_id))
        if reject is not None and passes >= FAILED_PASSES_TO_REJECT:
            message = (f"jobbergate-sync failed on this submission in {passes} passes in a row ({failure}); it is "
                       "rejected so that it does not hold the cluster's queue. Its administrator has the details.")
            self.contain(lambda: self.reject_failing(submission_id, message, reject),
                         f"submission {submission_id}: rejecting it after {passes} failed passes", submission_id)

    def reject_failing(self, submission_id: int, message: str, reject: Callable[[int, str], None]) -> None:
        reject(submission_id, message)
        self.failing.pop(submission_id, None)
        self.journal.clear_failures(submission_id)

    def for_each_item(self, items: list[dict[str, Any]], work: Callable[[dict[str, Any]], None],
                      reject: Optional[Callable[[int, str], None]] = None, deadline: Optional[Deadline] = None) -> None:
        """Run `work` on each item, contained (contain_item, which `reject` is given to), by `[run]
        workers` threads (run_in_threads; the pass's deadline by default). What items print (a dry
        run's plan) comes out in the items' order, each item's lines together."""
        output = OrderedOutput()

        def one(position: int, item: dict[str, Any]) -> None:
            CURRENT_ITEM.submission_id, CURRENT_ITEM.output = item["id"], []
            try:
                self.contain_item(item["id"], lambda: work(item), reject)
            finally:
                output.done(position, CURRENT_ITEM.output)
                CURRENT_ITEM.submission_id = CURRENT_ITEM.output = None

        run_in_threads(items, one, self.config.run.workers, deadline or self.deadline)

    def say(self, text: str) -> None:
        """Print a line of a dry run's plan: kept with its item's lines, in the items' order."""
        lines = getattr(CURRENT_ITEM, "output", None)
        if lines is None:
            click.echo(text)
        else:
            lines.append(text)

    def log_failure(self, message: str, submission_id: Optional[int]) -> None:
        self.summary.count("errors")
        log.error("%s", message, **log_fields(submission_id=submission_id))

    def report_submitted(self, submission_id: int, job_id: int, known: Optional[StateReport] = None) -> None:
        self.changes.report_submitted(submission_id, job_id, known or state_for_submitted(self.slurm, job_id))


class OrderedOutput:
    """The lines items print, echoed in the items' order whichever worker finishes first: an item's
    lines wait until every earlier item is done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished: dict[int, list[str]] = {}
        self.next_position = 0

    def done(self, position: int, lines: list[str]) -> None:
        with self.lock:
            self.finished[position] = lines
            while self.next_position in self.finished:
                for line in self.finished.pop(self.next_position):
                    click.echo(line)
                self.next_position += 1


class PassPart:
    """A part of the pass, reading the context's fields as its own."""

    def __init__(self, context: PassContext):
        self.context = context
        self.config = context.config
        self.api = context.api
        self.slurm = context.slurm
        self.journal = context.journal
        self.mapper = context.mapper
        self.deadline = context.deadline
        self.summary = context.summary
        self.cluster = context.cluster


def owner_of(journal: Journal, submission_id: int, job_id: int) -> str:
    """Who this tool submitted the job as: the user of its own submit of that job, from the journal.
    Never anyone else (a DELETE as a non-owner hangs slurmctld 24.11.5), and never Slurm's record of
    the job: any Jobbergate user may name any job id."""
    entry = journal.get(submission_id)
    if entry and entry.username and entry.slurm_job_id == job_id:
        return entry.username
    raise ItemError(f"the journal does not say who submitted Slurm job {job_id} of submission {submission_id}; "
                    "not cancelling it as anyone")


class ForeignJob(Exception):
    """An active submission names a Slurm job its owner does not own: logged at ERROR for the admin
    (`detail`, both users) and the submission ended (ABORTED) with `message` for its owner, which
    names no one else; the job is neither reported nor cancelled."""

    def __init__(self, detail: str, message: str):
        super().__init__(detail)
        self.message = message


def job_users(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """The users a job's records name: user_name in slurmctld's, user in slurmdbd's ("" for none)."""
    return {str(record.get("user_name") or record.get("user") or "") for record in records}


def require_job_owner(job_id: int, records: list[dict[str, Any]], owner: str) -> None:
    """ForeignJob unless every record of the job (every task of an array) is `owner`'s."""
    others = job_users(records) - {owner}
    if others:
        users = ", ".join(sorted(user or "(none)" for user in others))
        raise ForeignJob(f"Slurm job {job_id} belongs to {users}, not to the submission's owner {owner}",
                         f"Slurm job {job_id} is not a job of this submission's owner: jobbergate-sync neither "
                         "reports nor cancels it")


# ---------------------------------------------------------------------------------------------
# The submit phase: everything that can reject a submission, then its submit exactly once
# ---------------------------------------------------------------------------------------------


# What the download cache of a pass may keep on disk for submissions yet to come; past it the
# oldest files are let go (and downloaded again if a later submission needs them).
DOWNLOAD_CACHE_BYTES = 256 * 1024 * 1024

FileKey = tuple[int, str]  # (parent job script id, file name): what the API serves a file by


def script_file_keys(item: Mapping[str, Any]) -> list[FileKey]:
    """The files a pending item names, as far as they are well formed (parse_pending judges the rest)."""
    script = item.get("job_script")
    files = script.get("files") if isinstance(script, dict) else None
    return [(entry["parent_id"], entry["filename"]) for entry in files if isinstance(entry, dict)
            and isinstance(entry.get("parent_id"), int) and isinstance(entry.get("filename"), str)
            ] if isinstance(files, list) else []


# What a download must leave free on the file system of the state directory (root's /var, often Slurm's
# StateSaveLocation too), beyond the most it may write.
FREE_SPACE_RESERVE = 64 * 1024 * 1024


def require_free_space(directory: str, needed: int, submission_id: int) -> None:
    info = os.statvfs(directory)
    free = info.f_bavail * info.f_frsize
    if free < needed + FREE_SPACE_RESERVE:
        raise ItemError(f"{directory} has {free} bytes free, less than the {needed} bytes the next file of submission "
                        f"{submission_id} may take plus a reserve of {FREE_SPACE_RESERVE}; left for the next pass")


class DownloadCache:
    """The job script files of one pass, each downloaded once however many submissions share it (a
    sweep submits one job script hundreds of times), into an unlinked private temporary file in
    `directory` (the state directory; a dry run's system temporary directory). Each submission gets
    its own descriptor (open_file) and closes it; the cache closes its own once the last pending
    submission naming the file is done (release), when it holds more than DOWNLOAD_CACHE_BYTES
    (oldest first), and at the pass's end. An unlinked file's space returns when its last descriptor
    closes, so the disk holds at most the budget plus the files of the submissions under way."""

    def __init__(self, api: JobbergateApi, directory: Optional[str], max_file_size: int,
                 budget: int = DOWNLOAD_CACHE_BYTES):
        self.api = api
        self.directory = directory
        self.max_file_size = max_file_size
        self.budget = budget
        self.lock = threading.Lock()
        self.kept: dict[FileKey, tuple[IO[bytes], int]] = {}  # downloaded, oldest first
        self.kept_bytes = 0
        self.downloading: dict[FileKey, threading.Lock] = {}  # one download per file, its askers wait
        self.users: dict[FileKey, int] = {}  # pending submissions naming the file, not yet done

    def expect(self, item: Mapping[str, Any]) -> None:
        for key in script_file_keys(item):
            self.users[key] = self.users.get(key, 0) + 1

    def release(self, item: Mapping[str, Any]) -> None:
        """The item is done with its files: a file no pending submission still names is let go."""
        with self.lock:
            for key in script_file_keys(item):
                self.users[key] = self.users.get(key, 1) - 1
                if self.users[key] <= 0:
                    self._let_go(key)

    def open_file(self, script_file: ScriptFile, submission_id: int, max_bytes: Optional[int] = None) -> int:
        """A new descriptor of the file's content, downloaded unless this pass has it already: at most
        `max_bytes` (and max_file_size), and only while the file system keeps FREE_SPACE_RESERVE beyond that."""
        key = (script_file.parent_id, script_file.filename)
        with self.lock:
            downloading = self.downloading.setdefault(key, threading.Lock())
        with downloading:
            with self.lock:
                if key in self.kept:
                    return os.dup(self.kept[key][0].fileno())
            limit = self.max_file_size if max_bytes is None else min(max_bytes, self.max_file_size)
            require_free_space(self.directory or tempfile.gettempdir(), limit, submission_id)
            handle = tempfile.TemporaryFile(dir=self.directory)
            try:
                size = self.api.download(script_file.parent_id, script_file.filename, handle, limit)
            except BaseException:  # nothing half-written is kept: the next submission asks again
                handle.close()
                raise
            log.debug("downloaded %s of job script %d (%d bytes)", script_file.filename, script_file.parent_id, size,
                      **log_fields(submission_id=submission_id))
            with self.lock:
                descriptor = os.dup(handle.fileno())
                self.kept[key] = (handle, size)
                self.kept_bytes += size
                while self.kept_bytes > self.budget:
                    self._let_go(next(iter(self.kept)))
            return descriptor

    def _let_go(self, key: FileKey) -> None:
        handle, size = self.kept.pop(key, (None, 0))
        if handle is not None:
            handle.close()
            self.kept_bytes -= size

    def close(self) -> None:
        with self.lock:
            for key in list(self.kept):
                self._let_go(key)


class SubmitPhase(PassPart):
    """Each pending submission once: an earlier pass's submit resumed, else the job prepared (where
    it can be rejected) and submitted exactly once; `[run] workers` of them side by side."""

    def run(self, deadline: Deadline) -> None:
        """Submit what is pending until `deadline` (the submit phase's share of the pass's)."""
        pending, complete = self.api.list_pending()
        self.summary.pending = len(pending)
        self.context.pending_ids = {item["id"] for item in pending} if complete else None
        log.info("%d pending submission(s) for cluster %s", len(pending), self.cluster)
        if self.context.settle_created is not None:
            if pending:
                self.context.earlier.find_tagged_jobs(pending)
            if complete:
                self.context.settle_created()
        with contextlib.closing(DownloadCache(self.api, self.context.changes.download_dir,
                                              self.config.submit.max_file_size)) as self.downloads, \
                contextlib.closing(self.context.writers):
            for item in pending:
                self.downloads.expect(item)
            self.context.for_each_item(pending, self.submit_one, self.reject, deadline)

    def submit_one(self, item: Mapping[str, Any]) -> None:
        submission_id = item["id"]
        try:
            earlier = self.context.earlier
            if earlier.resume(earlier.journal_entry_of(item)) or earlier.adopt_tagged(item):
                return
            with contextlib.closing(self.prepare_job(parse_pending(item))) as job:
                self.context.changes.submit_exactly_once(job)
        except SubmitUnsettled as exc:
            self.reject_unsettled(exc)
        except Rejection as exc:
            self.reject(submission_id, printable(str(exc)))
        finally:
            self.downloads.release(item)

    def prepare_job(self, submission: PendingSubmission) -> PreparedJob:
        """Everything that can reject the submission, before anything changes: its owner's local
        account, its execution directory, its files (downloaded; the entrypoint checked) and the job
        as the Slurm backend takes it."""
        user = self.mapper.user_for(submission.owner_email)
        directory = resolve_execution_directory(submission.execution_directory,
                                                self.config.submit.execution_directory, user)
        support = [f for f in submission.files if not f.is_entrypoint]
        if support and not self.config.submit.write_files:
            raise Rejection(f"this cluster does not write supporting files (write_files = false) and the job script "
                            f"has {len(support)}: {', '.join(f.filename for f in support)}")
        if len(submission.files) > MAX_SUBMISSION_FILES:
            raise Rejection(f"the job script has {len(submission.files)} files; jobbergate-sync writes at most "
                            f"{MAX_SUBMISSION_FILES} for a submission")
        hidden = [f.filename for f in submission.files if f.filename.startswith(".")]
        if hidden:
            raise Rejection(f"jobbergate-sync does not write files whose names start with '.' ({', '.join(hidden)}): "
                            "they could replace the user's own start-up files, such as .bashrc")
        files = self.download_files(submission)
        try:
            script = script_text(read_whole(files[submission.entrypoint.filename]), submission.entrypoint.filename)
            environment = {"PATH": self.config.submit.job_path, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
            tag = submission_tag(self.cluster, submission.id, submission.script_created_at)
            request = self.slurm.job_request(script, submission.sbatch_arguments, submission.name, directory,
                                             environment, tag)
        except BaseException:
            close_all(files)
            raise
        return PreparedJob(submission.id, user, directory, request, tag, files)

    def download_files(self, submission: PendingSubmission) -> dict[str, int]:
        """A descriptor of each file's content (the entrypoint first), from the pass's download cache;
        no more than `[submit] max_total_size` bytes in all, counting the files under way."""
        files: dict[str, int] = {}
        limit, total = self.config.submit.max_total_size, 0
        try:
            for script_file in sorted(submission.files, key=lambda f: not f.is_entrypoint):
                try:
                    files[script_file.filename] = self.downloads.open_file(script_file, submission.id, limit - total)
                except TooLarge:
                    if limit - total >= self.config.submit.max_file_size:
                        raise  # past the file's own limit, which its message names
                    raise over_total_size(limit, total, script_file.filename) from None
                size = os.fstat(files[script_file.filename]).st_size
                if total + size > limit:
                    raise over_total_size(limit, total, script_file.filename)
                total += size
        except BaseException:
            close_all(files)
            raise
        return files

    def reject(self, submission_id: int, message: str) -> None:
        self.summary.count("rejected")
        self.context.changes.reject(submission_id, message)

    def reject_unsettled(self, exc: SubmitUnsettled) -> None:
        entry = exc.entry
        log.error("submission %d (tag %s): cannot tell whether the submit interrupted at %s reached Slurm (%s); "
                  "rejecting it rather than risk running it twice", entry.submission_id, entry.tag,
                  utc_text(entry.intent_at), exc.reason, **log_fields(submission_id=entry.submission_id))
        self.reject(entry.submission_id, str(exc))
        self.context.changes.forget(entry.submission_id)


def over_total_size(limit: int, held: int, filename: str) -> Rejection:
    return Rejection(f"the job script's files total more than the {limit}-byte limit of this cluster "
                     f"([submit] max_total_size): {filename} goes past it after {held} bytes of other files")


@dataclasses.dataclass
class PreparedJob:
    """A submission that passed every check, ready to be submitted exactly once."""

    submission_id: int
    user: LocalUser
    directory: str
    request: Union[JobRequest, SbatchRequest]
    tag: str
    files: dict[str, int]  # descriptors of the downloaded files, by name; written to `directory` as the user

    def close(self) -> None:
        close_all(self.files)


def close_all(descriptors: dict[str, int]) -> None:
    for descriptor in descriptors.values():
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------
# Changes: made by a live pass, printed by a dry run
# ---------------------------------------------------------------------------------------------


STALE_INTENT_SECONDS = 86400


def just_submitted(job_id: int) -> StateReport:
    """What agent/submitted reports for a job Slurm has just accepted: PENDING, the state every new
    job starts in. Reading the job back would only cost a request per submission; its reason and
    later states come with the update phase."""
    return StateReport(job_id, "PENDING", None, json.dumps({"job_id": job_id}))


def state_for_submitted(slurm: SlurmBackend, job_id: int) -> StateReport:
    """The state agent/submitted reports with a job an earlier pass submitted (it may have run since):
    PENDING when Slurm cannot say."""
    try:
        records = slurm.job(job_id)
    except (Unavailable, ItemError) as exc:
        log.warning("could not read Slurm job %d just after submitting it (%s); reporting PENDING", job_id, exc,
                    **log_fields(slurm_job_id=job_id))
        records = None
    report = report_from_records(job_id, records, report_from_slurmctld) if records else None
    return report or just_submitted(job_id)


def refused_report_standing(current: Mapping[str, Any], job_id: int) -> str:
    """Where a submission stands after the API answered 400 to agent/submitted for `job_id`:
    "reported" when it holds that job (an earlier report of ours landed, its answer was lost),
    "waiting" when it still waits for a job, "taken" when it holds another (so ours is a duplicate)."""
    status, recorded = current.get("status"), current.get("slurm_job_id")
    if status in ("SUBMITTED", "CANCELLED") and recorded == job_id:
        return "reported"
    if status == "CREATED" or (status == "CANCELLED" and recorded is None):
        return "waiting"
    return "taken"


class LiveChanges(PassPart):
    """The changes made: to the execution directory, the journal, Slurm and the API."""

    @property
    def download_dir(self) -> Optional[str]:
        return self.config.run.state_dir  # root's own (0700)

    def submit_exactly_once(self, job: PreparedJob) -> None:
        """The promise: the intent is on disk before the submit, the job id right after it, and the
        report follows. A pass killed anywhere in between is resumed from the journal by the next
        one (EarlierSubmit), which never submits a job twice."""
        self.write_files(job)
        crash_point(CrashPoint.AFTER_FILES_WRITTEN)
        self.journal.record_intent(job.submission_id, job.tag, job.user.name, job.request.name,
                                   job.request.working_directory)
        crash_point(CrashPoint.AFTER_JOURNAL_INTENT)
        job_id = self.submit(job)
        crash_point(CrashPoint.AFTER_SLURM_SUBMIT)
        self.journal.record_job(job.submission_id, job_id)
        log.info("submitted submission %d as Slurm job %d", job.submission_id, job_id,
                 **log_fields(submission_id=job.submission_id, slurm_job_id=job_id, user=job.user.name))
        crash_point(CrashPoint.AFTER_JOURNAL_JOB)
        self.context.report_submitted(job.submission_id, job_id, just_submitted(job_id))

    def write_files(self, job: PreparedJob) -> None:
        files = list(job.files.items()) if self.config.submit.write_files else []
        total_bytes = sum(os.fstat(source).st_size for _, source in files)
        self.context.writers.write(job.user, job.directory, files, int(self.config.submit.file_mode, 8),
                                   self.config.submit.replace_files, writer_timeout(total_bytes, self.deadline.remaining()))
        log.info("wrote %d file(s) to %s as %s", len(files), job.directory, job.user.name,
                 **log_fields(submission_id=job.submission_id, user=job.user.name))

    def submit(self, job: PreparedJob) -> int:
        """Submit to Slurm as the user; a refused submit leaves no intent behind."""
        try:
            return self.slurm.submit(job.request, job.user.name)
        except DroppedOptions as exc:
            self.journal.record_job(job.submission_id, exc.job_id)
            self.slurm.cancel(exc.job_id, job.user.name)
            log.warning("cancelled Slurm job %d: %s", exc.job_id, exc, **log_fields(submission_id=job.submission_id,
                                                                              slurm_job_id=exc.job_id,
                                                                              user=job.user.name))
            self.journal.forget(job.submission_id)
            raise
        except Rejection:
            self.journal.forget(job.submission_id)
            raise

    def report_submitted(self, submission_id: int, job_id: int, report: StateReport) -> None:
        """agent/submitted is not idempotent: a 400 is answered by reading the submission."""
        fields = log_fields(submission_id=submission_id, slurm_job_id=job_id)
        try:
            self.api.report_submitted(submission_id, report)
        except ApiConflict as exc:
            if exc.status == 404:
                self.slurm.cancel(job_id, owner_of(self.journal, submission_id, job_id))
                self.journal.forget(submission_id)
                raise ItemError(f"submission {submission_id} no longer exists; cancelled its Slurm job {job_id}") from None
            if exc.status != 400:
                raise
            self.settle_refused_report(submission_id, job_id, report, exc)
        crash_point(CrashPoint.AFTER_AGENT_SUBMITTED)
        if report.state in SLURM_FINAL_STATES:  # agent/submitted leaves it SUBMITTED; only an update closes it
            self.api.update(submission_id, report)
        self.journal.record_report(submission_id, report)
        self.context.reported_now.add(submission_id)
        self.summary.count("submitted")
        log.info("reported submission %d SUBMITTED with Slurm job %d (%s)", submission_id, job_id, report.state, **fields)

    def settle_refused_report(self, submission_id: int, job_id: int, report: StateReport, refusal: ApiConflict) -> None:
        """Resend the report the submission still waits for; cancel our job when it holds another."""
        current = self.api.get_submission(submission_id)
        standing = refused_report_standing(current, job_id)
        if standing == "waiting":
            self.api.report_submitted(submission_id, report)
        elif standing == "taken":
            self.slurm.cancel(job_id, owner_of(self.journal, submission_id, job_id))
            self.journal.forget(submission_id)
            raise ItemError(f"submission {submission_id} is {current.get('status')} with Slurm job "
                            f"{current.get('slurm_job_id')}, not ours ({job_id}): cancelled Slurm job {job_id} as a "
                            f"duplicate (API said: {refusal.detail})")

    def reject(self, submission_id: int, message: str) -> None:
        log.warning("rejecting submission %d: %s", submission_id, message, **log_fields(submission_id=submission_id))
        try:
            self.api.report_rejected(submission_id, message)
        except ApiConflict as exc:
            current = self.api.get_submission(submission_id)
            if current.get("status") != "REJECTED":
                raise ItemError(f"could not reject submission {submission_id} ({exc}); it is now {current.get('status')}") from None

    def forget(self, submission_id: int) -> None:
        self.journal.forget(submission_id)

    def cancel_job(self, submission_id: int, job_id: int, owner: str) -> Optional[StateReport]:
        """Cancel the Slurm job of a cancelled submission as its owner; the state after the cancel,
        or None when nothing was done. Counted only when Slurm cancelled it."""
        fields = log_fields(submission_id=submission_id, slurm_job_id=job_id, user=owner)
        outcome = self.slurm.cancel(job_id, owner)
        if outcome is False:
            log.info("Slurm job %d of cancelled submission %d had already ended", job_id, submission_id, **fields)
            return None
        after = state_for_update(self.slurm, job_id, self.slurm.job(job_id), owner)
        # A job being killed reads COMPLETING until its processes are gone (KillWait): on v0.0.38 that
        # is all a re-read right after the DELETE shows; its end state comes with a later update.
        if outcome is None and after.state not in ("CANCELLED", "COMPLETING"):
            log.warning("asked Slurm to cancel job %d of submission %d as %s, but it is %s", job_id, submission_id,
                        owner, after.state, **fields)
            return after
        self.summary.count("cancelled")
        log.info("cancelled Slurm job %d of cancelled submission %d as %s", job_id, submission_id, owner, **fields)
        return after

    def update(self, submission_id: int, report: StateReport) -> None:
        self.api.update(submission_id, report)
        self.journal.record_report(submission_id, report)
        self.summary.count("updated")
        log.info("updated submission %d: Slurm job %s is %s%s", submission_id, report.job_id, report.state,
                 f" ({report.reason})" if report.reason else "",
                 **log_fields(submission_id=submission_id, slurm_job_id=report.job_id))
        crash_point(CrashPoint.MID_UPDATE)

    def prune_journal(self, active_ids: set[int]) -> None:
        """Forget submissions Jobbergate has closed; keep unreported work unless it is long stale.
        An intent of a submission still pending is kept whatever its age: it alone stops a second submit."""
        pending_ids = self.context.pending_ids
        for entry in self.journal.entries():
            if entry.submission_id in active_ids or entry.submission_id in (pending_ids or ()):
                continue
            if entry.reported:
                self.journal.forget(entry.submission_id)
            elif pending_ids is not None and time.time() - entry.created_at > STALE_INTENT_SECONDS:
                log.warning("forgetting a day-old unreported record of submission %d (Slurm job %s)",
                            entry.submission_id, entry.slurm_job_id, **log_fields(submission_id=entry.submission_id))
                self.journal.forget(entry.submission_id)
        if pending_ids is not None:  # failures of submissions no longer listed are no one's concern
            for submission_id in set(self.context.failing) - active_ids - pending_ids:
                self.context.failing.pop(submission_id, None)
                self.journal.clear_failures(submission_id)

    def ping_health(self) -> None:
        self.api.ping_health(self.config.run.interval)


class DryRunChanges(PassPart):
    """The same changes, printed and not made: a dry run reads everything and changes nothing anywhere
    (its journal is a scratch copy)."""

    download_dir = None  # the state directory is left alone

    def submit_exactly_once(self, job: PreparedJob) -> None:
        self.context.say(f"would submit submission {job.submission_id} as {job.user.name} in {job.directory}: "
                         f"{job.request.shown()}")
        self.summary.count("submitted")

    def report_submitted(self, submission_id: int, job_id: int, report: StateReport) -> None:
        self.context.say(f"would report submission {submission_id} SUBMITTED as Slurm job {job_id}")

    def reject(self, submission_id: int, message: str) -> None:
        self.context.say(f"would reject submission {submission_id}: {message}")

    def forget(self, submission_id: int) -> None:
        pass

    def cancel_job(self, submission_id: int, job_id: int, owner: str) -> Optional[StateReport]:
        self.context.say(f"would cancel Slurm job {job_id} of cancelled submission {submission_id} as {owner}")
        return None

    def update(self, submission_id: int, report: StateReport) -> None:
        self.context.say(f"would update submission {submission_id}: {report.state} ({report.reason or 'no reason'})")
        self.summary.count("updated")

    def prune_journal(self, active_ids: set[int]) -> None:
        pass

    def ping_health(self) -> None:
        pass


Changes = Union[LiveChanges, DryRunChanges]


# ---------------------------------------------------------------------------------------------
# Resuming an earlier pass's submit, from the journal
# ---------------------------------------------------------------------------------------------


# How long a pass waits for slurmctld to hand slurmdbd the records it still holds, before it leaves
# what needs slurmdbd's whole answer to the next pass.
ACCOUNTING_BACKLOG_WAIT = 5.0
# Clock difference allowed for between this host and slurmctld when matching submit times.
CLOCK_SLACK_SECONDS = 60
# slurmdbd's name of a job whose record is not complete yet.
ACCOUNTING_PLACEHOLDER_NAME = "allocation"


def accounting_job_id(record: Mapping[str, Any]) -> int:
    """The id sbatch would have printed: an array task's record names its array's job."""
    array = record.get("array") if isinstance(record.get("array"), dict) else {}
    array_id = unwrap_number(array.get("job_id"))
    return array_id if array_id else record["job_id"]


def _accounting_comment(record: Mapping[str, Any]) -> str:
    comment = record.get("comment")
    comment = comment.get("job") if isinstance(comment, dict) else comment
    return comment if isinstance(comment, str) else ""


def accounting_submit_time(record: Mapping[str, Any]) -> Optional[int]:
    times = record.get("time")
    return unwrap_number(times.get("submission")) if isinstance(times, dict) else None


def _same_directory(recorded: Any, wanted: str) -> bool:
    return isinstance(recorded, str) and os.path.normpath(recorded or "/") == os.path.normpath(wanted)


def intent_window(entry: JournalEntry, timeout: float) -> tuple[float, float]:
    """When the job of an interrupted submit can have been submitted: from its intent to the end
    of the submit's exchange, with CLOCK_SLACK_SECONDS either side."""
    intent_at = entry.intent_at or 0.0
    return intent_at - CLOCK_SLACK_SECONDS, intent_at + timeout + CLOCK_SLACK_SECONDS


def tagged_job_standing(users: set[str], submitted: list[Optional[int]], entry: JournalEntry,
                        window: tuple[float, float]) -> tuple[Optional[bool], str]:
    """Whether a job carrying an interrupted submit's tag is that submit's job, from its records'
    users and submit times: (False, why) when it is another user's (a comment is anyone's to write)
    or was submitted outside the intent's window, (None, why) when Slurm does not say when it was
    submitted, (True, "") when it is the journal user's, submitted within the window."""
    others = users - {entry.username or ""}
    if others:
        return False, f"it belongs to {', '.join(sorted(user or '(no user)' for user in others))}"
    known = [when for when in submitted if when is not None]
    if not known or len(known) < len(submitted):
        return None, "Slurm does not say when it was submitted"
    outside = [when for when in known if not window[0] <= when <= window[1]]
    if outside:
        return False, (f"it was submitted at {utc_text(min(outside))}, outside the submit's window "
                       f"({utc_text(window[0])} to {utc_text(window[1])})")
    return True, ""


def accounting_candidates(records: Iterable[Mapping[str, Any]], entry: JournalEntry, window: tuple[float, float],
                          excluded: set[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The slurmdbd records that may be the job an interrupted submit created, one per job, oldest
    first: (those carrying its tag, whoever they belong to: the caller proves them, those that could
    be it without a comment: the journal user's, same name and directory, submitted within
    `window`). A record whose comment lacks the tag is never ours: the tag leads every comment this
    tool sends. Matching leans to "could be it": a false match only withholds a submit, a missed
    one would run the job twice."""
    tagged: dict[int, dict[str, Any]] = {}
    alike: dict[int, dict[str, Any]] = {}
    for record in records:
        if not isinstance(record.get("job_id"), int) or accounting_job_id(record) in excluded:
            continue
        comment = _accounting_comment(record)
        if comment:
            if comment_has_tag(comment, entry.tag):
                tagged.setdefault(accounting_job_id(record), dict(record))
            continue
        if entry.job_name is None or entry.working_directory is None:
            continue
        submitted = accounting_submit_time(record)
        if (record.get("user") == entry.username
                and record.get("name") in (entry.job_name, ACCOUNTING_PLACEHOLDER_NAME)
                and _same_directory(record.get("working_directory"), entry.working_directory)
                and (submitted is None or window[0] <= submitted <= window[1])):
            alike.setdefault(accounting_job_id(record), dict(record))
    return ([tagged[job_id] for job_id in sorted(tagged)], [alike[job_id] for job_id in sorted(alike)])


def comment_tag(comment: Any) -> str:
    """The tag a job's comment leads with (comment_has_tag's test), or ""."""
    return comment.split(" ", 1)[0] if isinstance(comment, str) else ""


@dataclasses.dataclass(frozen=True)
class TaggedJob:
    """A Slurm job carrying a pending submission's tag, found after a failover."""

    job_id: int
    user: Any  # its owner's name as Slurm records it
    where: str  # "slurmctld" or "slurmdbd"
    report: Optional[StateReport]


class EarlierSubmit(PassPart):
    """A submission the journal says an earlier pass began to submit: its job is reported, never
    submitted again. After a failover, the same for a submission another host's pass submitted."""

    tagged: Optional[dict[int, list[TaggedJob]]] = None  # submission id -> jobs with its tag (find_tagged_jobs)

    def find_tagged_jobs(self, pending: list[dict[str, Any]]) -> None:
        """Before anything is submitted on a host that has just become active (or has lost its
        journal): the Slurm jobs carrying a pending submission's tag, from one read of slurmctld, then,
        for the submissions it holds none of, one read of slurmdbd (their owners' jobs of the last
        STALE_INTENT_SECONDS, how long a journal keeps an unreported submit)."""
        by_tag = {self.tag_of(item): item["id"] for item in pending}
        found: dict[int, list[TaggedJob]] = {}
        for job_id, records in self.slurm.jobs().items():
            submission_id = next((by_tag[tag] for tag in (comment_tag(job.get("comment")) for job in records)
                                  if tag in by_tag), None)
            if submission_id is not None:
                found.setdefault(submission_id, []).append(TaggedJob(
                    job_id, records[0].get("user_name"), "slurmctld", report_from_records(job_id, records, report_from_slurmctld)))
        missing = [item for item in pending if item["id"] not in found]
        owners = sorted({name for name in map(self.owner_name, missing) if name}) if self.slurm.use_slurmdbd else []
        if owners:
            backlog = self.accounting_backlog()
            if backlog:
                raise Unavailable(f"slurmctld still holds {backlog} record(s) for slurmdbd; the pending submissions "
                                  "are settled against Slurm, and submitted, once slurmdbd has them")
            accounted: dict[int, list[dict[str, Any]]] = {}
            for record in self.slurm.accounting_jobs_since(",".join(owners), time.time() - STALE_INTENT_SECONDS):
                submission_id = by_tag.get(comment_tag(_accounting_comment(record)))
                if submission_id is not None and submission_id not in found and isinstance(record.get("job_id"), int):
                    accounted.setdefault(submission_id, []).append(record)
            for submission_id, records in accounted.items():
                for job_id in sorted({accounting_job_id(record) for record in records}):
                    newest = newest_accounting_records(records, job_id) or []
                    found.setdefault(submission_id, []).append(TaggedJob(
                        job_id, newest[0].get("user") if newest else None, "slurmdbd",
                        report_from_records(job_id, newest, report_from_slurmdbd) if newest else None))
        log.info("settled %d pending submission(s) against Slurm: %d have a job with their tag", len(pending), len(found))
        self.tagged = found

    def accounting_backlog(self) -> Optional[int]:
        """The records slurmctld still holds for slurmdbd, read again each second while there are some, for
        at most ACCOUNTING_BACKLOG_WAIT seconds of the pass's time: a healthy slurmctld sends them within
        a second or two, and only an empty backlog proves that slurmdbd has every job made before it."""
        waits_until = time.monotonic() + min(ACCOUNTING_BACKLOG_WAIT, max(self.deadline.remaining(), 0.0))
        backlog = self.slurm.accounting_backlog()
        while backlog and time.monotonic() + 1 <= waits_until:
            time.sleep(1)
            backlog = self.slurm.accounting_backlog()
        return backlog

    def owner_name(self, item: Mapping[str, Any]) -> Optional[str]:
        """The local account a pending submission's jobs run as; None when it maps to none (the
        submission is then rejected as it would be anyway)."""
        try:
            return self.mapper.user_for(parse_pending(item).owner_email).name
        except Rejection:
            return None

    def adopt_tagged(self, item: Mapping[str, Any]) -> bool:
        """True when find_tagged_jobs found a job with this submission's tag owned by the account its
        owner maps to: that job is adopted (journal, reported SUBMITTED), never submitted again. A job
        with its tag owned by anyone else is not its job: logged and ignored."""
        submission_id = item["id"]
        candidates = (self.tagged or {}).get(submission_id)
        if not candidates:
            return False
        owner = self.mapper.user_for(parse_pending(item).owner_email).name
        fields = log_fields(submission_id=submission_id)
        for job in candidates:
            if job.user != owner:
                log.error("Slurm job %d (in %s) carries the tag of submission %d but belongs to %s, not to %s, the "
                          "submission's owner; ignoring it", job.job_id, job.where, submission_id, job.user, owner,
                          **fields)
        ours = sorted((job for job in candidates if job.user == owner), key=lambda job: job.job_id)
        if not ours:
            return False
        kept, *duplicates = ours
        for duplicate in duplicates:
            log.error("submission %d has Slurm jobs %d and %d; keeping %d, cancelling %d", submission_id, kept.job_id,
                      duplicate.job_id, kept.job_id, duplicate.job_id, **fields)
            self.context.changes.cancel_duplicate(submission_id, duplicate.job_id, owner)
        log.info("submission %d: adopting Slurm job %d, found in %s with its tag: a pass on the head node active "
                 "before submitted it", submission_id, kept.job_id, kept.where, **log_fields(submission_id=submission_id,
                                                                                      slurm_job_id=kept.job_id))
        self.journal.record_adopted(submission_id, self.tag_of(item), owner, kept.job_id)
        self.context.report_submitted(submission_id, kept.job_id, kept.report)
        return True

    def tag_of(self, item: Mapping[str, Any]) -> str:
        """The tag of a pending item's job."""
        return submission_tag(self.cluster, item["id"], script_created_at(item))

    def journal_entry_of(self, item: Mapping[str, Any]) -> Optional[JournalEntry]:
        """The journal's record of a pending submission. A record with another tag is of an earlier
        submission with the same id, from before Jobbergate's database was recreated or restored: it
        is forgotten, never taken for this one's submit. A record with the tag as earlier versions
        wrote it, the id alone, is this submission's, as those versions took it."""
        submission_id = item["id"]
        entry = self.journal.get(submission_id)
        tag = self.tag_of(item)
        if entry is None or entry.tag in (tag, id_only_tag(self.cluster, submission_id)):
            return entry
        log.warning("submission %d: forgetting the journal's record of an earlier submission with the same id "
                    "(tag %r, Slurm job %s; this one's tag is %r): Jobbergate's database was recreated or restored",
                    submission_id, entry.tag, entry.slurm_job_id, tag, **log_fields(submission_id=submission_id))
        self.journal.forget(submission_id)
        return None

    def resume(self, entry: Optional[JournalEntry]) -> bool:
        """True when an earlier pass's submit of this submission is settled and now reported: its job
        id is in the journal, or its interrupted submit's job was found. False when there was none, or
        it provably never reached Slurm, so submitting is safe. Raises SubmitUnsettled when Slurm
        cannot tell, and Unavailable while slurmdbd does not answer: never a second submit in doubt."""
        if entry is None:
            return False
        if entry.slurm_job_id is not None:
            log.info("submission %d already has Slurm job %d from an earlier pass; reporting it", entry.submission_id,
                     entry.slurm_job_id, **log_fields(submission_id=entry.submission_id, slurm_job_id=entry.slurm_job_id))
            self.context.report_submitted(entry.submission_id, entry.slurm_job_id)
            return True
        return entry.intent_at is not None and self.recover_intent(entry)

    def recover_intent(self, entry: JournalEntry) -> bool:
        """An earlier pass stopped between recording its intent and recording the job id: find its
        job in slurmctld by its tag, else in slurmdbd (whatever the intent's age: a job may end and be
        purged from slurmctld within MinJobAge), else, without slurmdbd, trust slurmctld only while
        the intent is younger than the purge horizon. Only a job of the journal's user submitted
        within the submit's window is adopted; SubmitUnsettled where that is not proven."""
        fields = log_fields(submission_id=entry.submission_id)
        window = intent_window(entry, self.slurm.timeout)
        found = self.slurm.jobs_with_tag(entry.tag, entry.username or "")
        proven = self.proven_job(entry, window, "slurmctld", {
            job_id: (job_users(records), [unwrap_number(job.get("submit_time")) for job in records])
            for job_id, records in found.items()})
        if proven is not None:
            self.adopt_job(entry, proven, "slurmctld")
            return True
        if not self.slurm.use_slurmdbd:
            age = time.time() - (entry.intent_at or 0)
            if age >= self.slurm.purge_horizon:
                raise SubmitUnsettled(entry, "slurmctld purges finished jobs after the purge horizon and no slurmdbd "
                                             "is configured to remember them")
            # A job submitted after the intent cannot have ended and been purged yet (check compares
            # the purge horizon with slurmctld's MinJobAge).
            log.info("submission %d: the submit interrupted %d s ago left no job in slurmctld, which purges none "
                     "that young; submitting", entry.submission_id, age, **fields)
            return False
        record = self.find_in_accounting(entry, window)
        if record is None:
            log.info("submission %d: neither slurmctld nor slurmdbd has a job from the submit interrupted at %s; "
                     "submitting", entry.submission_id, utc_text(entry.intent_at), **fields)
            return False
        job_id = accounting_job_id(record)
        self.adopt_job(entry, job_id, "slurmdbd", report_from_slurmdbd({**record, "job_id": job_id}))
        return True

    @staticmethod
    def proven_job(entry: JournalEntry, window: tuple[float, float], where: str,
                   tagged: Mapping[int, tuple[set[str], list[Optional[int]]]]) -> Optional[int]:
        """The one job carrying the entry's tag that is its submit's (tagged: job id -> the users and
        submit times of its records), None when there is none. The others' jobs and those submitted
        outside the window are ignored with a warning; a doubt (several, or one with no submit time)
        is SubmitUnsettled: nothing is adopted or cancelled unless it is proven."""
        ours, unsure = [], []
        for job_id, (users, submitted) in tagged.items():
            standing, why = tagged_job_standing(users, submitted, entry, window)
            if standing is False:
                log.warning("submission %d: ignoring Slurm job %d of user %s in %s, which carries the tag %s: %s",
                            entry.submission_id, job_id, ", ".join(sorted(users)), where, entry.tag, why,
                            **log_fields(submission_id=entry.submission_id, slurm_job_id=job_id))
            else:
                (ours if standing else unsure).append(job_id)
        if unsure or len(ours) > 1:
            raise SubmitUnsettled(entry, f"{where} holds {len(ours) + len(unsure)} job(s) of {entry.username} with its "
                                         f"tag ({', '.join(map(str, sorted(ours + unsure)))})"
                                  + (": Slurm does not say when they were submitted" if unsure else ""))
        return ours[0] if ours else None

    def adopt_job(self, entry: JournalEntry, job_id: int, where: str, report: Optional[StateReport] = None) -> None:
        log.info("submission %d: found Slurm job %d from an interrupted pass in %s", entry.submission_id, job_id,
                 where, **log_fields(submission_id=entry.submission_id, slurm_job_id=job_id))
        self.journal.record_job(entry.submission_id, job_id)
        self.context.report_submitted(entry.submission_id, job_id, report)

    def find_in_accounting(self, entry: JournalEntry, window: tuple[float, float]) -> Optional[dict[str, Any]]:
        """The slurmdbd record of the job an interrupted submit created, None when slurmdbd proves
        there is none; SubmitUnsettled when it cannot tell."""
        intent_at = entry.intent_at or 0.0
        backlog = self.accounting_backlog()  # before the read, which then holds every record made before it
        records = self.slurm.accounting_jobs_since(entry.username or "", window[0])
        tagged, alike = accounting_candidates(records, entry, window, self.journal.job_ids_of_others(entry.submission_id))
        proven = self.proven_job(entry, window, "slurmdbd", {
            accounting_job_id(record): (job_users([record]), [accounting_submit_time(record)]) for record in tagged})
        if proven is not None:
            return next(record for record in tagged if accounting_job_id(record) == proven)
        if len(alike) == 1:
            return alike[0]
        if alike:
            raise SubmitUnsettled(entry, f"slurmdbd holds {len(alike)} jobs that could be it "
                                         f"({', '.join(str(accounting_job_id(r)) for r in alike)})")
        if entry.job_name is None or entry.working_directory is None:
            raise SubmitUnsettled(entry, "the journal entry predates the job name and directory that a search "
                                         "of slurmdbd needs")
        if backlog is None:
            raise SubmitUnsettled(entry, "slurmctld does not say whether slurmdbd has every job record yet")
        if backlog:
            raise Unavailable(f"slurmctld still holds {backlog} record(s) for slurmdbd; the submission of "
                              f"{utc_text(intent_at)} is settled once slurmdbd has them")
        return None


# ---------------------------------------------------------------------------------------------
# The update phase: states reported, cancelled submissions' jobs cancelled
# ---------------------------------------------------------------------------------------------


def state_for_update(slurm: SlurmBackend, job_id: int, records: Optional[list[dict[str, Any]]], owner: str) -> StateReport:
    """The state an update reports for a job being followed (every task of an array): from
    slurmctld's full `records` of it (None: slurmctld does not hold it), else slurmdbd, else UNKNOWN.
    ForeignJob when the records it would report are not all `owner`'s."""
    if records:
        require_job_owner(job_id, records, owner)
    report = report_from_records(job_id, records, report_from_slurmctld) if records else None
    finished_array = bool(records) and report is not None and report.state in SLURM_FINAL_STATES and any(
        array_job_id_of(job) for job in records or [])
    if (records is None or finished_array) and slurm.use_slurmdbd:
        # slurmdbd also knows the tasks slurmctld has already purged
        accounted = slurm.accounting_job(job_id)
        if accounted:
            require_job_owner(job_id, accounted, owner)
            records, report = accounted, report_from_records(job_id, accounted, report_from_slurmdbd)
    if records is None:
        return StateReport(job_id, "UNKNOWN", f"Slurm has no record of job {job_id}",
                           json.dumps({"job_id": job_id, "error": "Invalid job id specified"}))
    if report is None:
        raise ItemError(f"Slurm job {job_id} is in a state Jobbergate does not know: "
                        f"{[job.get('job_state') or job.get('state') for job in records]}")
    return report


class UpdatePhase(PassPart):
    """Each active submission: its Slurm job's state reported when it changed, the job of a
    submission its owner cancelled cancelled; then the journal pruned."""

    def run(self) -> None:
        active, complete = self.api.list_active()
        self.summary.active = len(active)
        self.context.active_listed = (active, complete)
        log.info("%d active submission(s) for cluster %s", len(active), self.cluster)
        jobs = self.slurm.states({item["slurm_job_id"] for item in active if isinstance(item.get("slurm_job_id"), int)})
        self.context.for_each_item(active, lambda item: self.update_one(item, jobs))
        if complete:
            self.context.changes.prune_journal({item["id"] for item in active})

    def update_one(self, item: Mapping[str, Any], jobs: Mapping[int, list[dict[str, Any]]]) -> None:
        submission_id, status, job_id = item["id"], item.get("status"), item.get("slurm_job_id")
        if not isinstance(job_id, int):
            if status == "CANCELLED":
                self.close_cancelled_without_job(submission_id)
            else:
                log.error("active submission %d is %s without a Slurm job id", submission_id, status,
                          **log_fields(submission_id=submission_id))
                self.summary.count("errors")
            return
        records = jobs.get(job_id)
        if not records or not all(is_full_record(job) for job in records):
            if records and status != "CANCELLED" and self.same_state_reported(submission_id, job_id, records):
                self.context.owned_jobs[submission_id] = job_id
                return
            # A changed state needs the reason, exit code and details; a job not listed is gone only
            # when Slurm says so for it (a list missing it is no proof).
            records = self.slurm.job(job_id)
        try:
            owner = self.owner(submission_id, job_id)
            report = state_for_update(self.slurm, job_id, records, owner)
        except ForeignJob as exc:
            self.end_foreign(submission_id, job_id, exc)
            return
        if report.state != "UNKNOWN":  # state_for_update reports a state only from records it found the owner's
            self.context.owned_jobs[submission_id] = job_id
        if status == "CANCELLED" and report.state not in SLURM_FINAL_STATES:
            report = self.context.changes.cancel_job(submission_id, job_id, owner) or report
        self.send_update(submission_id, report)

    def owner(self, submission_id: int, job_id: int) -> str:
        """The local account of the submission's owner, the only one whose job it may report or
        cancel: the user of this tool's own submit of that job (its journal row), else the API's
        owner_email mapped as a submit maps it (min_uid and all). One GET per submission and pass,
        and only for those the journal does not cover (submitted by another agent, or by their
        owner naming a job id). ForeignJob when the owner maps to no usable account."""
        entry = self.journal.get(submission_id)
        if entry and entry.username and entry.slurm_job_id == job_id:
            return entry.username
        email = self.api.get_submission(submission_id).get("owner_email")
        if not isinstance(email, str) or not email:
            raise ItemError(f"submission {submission_id} has no owner_email; not following Slurm job {job_id}")
        try:
            return self.mapper.user_for(email).name
        except Rejection as exc:
            raise ForeignJob(f"the submission's owner maps to no usable account here: {exc}",
                             f"this submission's owner maps to no usable account on this cluster ({exc}): "
                             f"jobbergate-sync neither reports nor cancels Slurm job {job_id}") from None

    def end_foreign(self, submission_id: int, job_id: int, exc: ForeignJob) -> None:
        """A submission naming a job that is not its owner's: an error for the admin, and the
        submission ended (ABORTED, as UNKNOWN with the reason) with nothing of the job in it."""
        self.summary.count("errors")
        log.error("submission %d names Slurm job %d: %s; neither reporting nor cancelling that job, ending the "
                  "submission", submission_id, job_id, exc, **log_fields(submission_id=submission_id, slurm_job_id=job_id))
        self.context.changes.update(submission_id, StateReport(job_id, "UNKNOWN", exc.message,
                                                               json.dumps({"job_id": job_id, "error": exc.message})))

    def close_cancelled_without_job(self, submission_id: int) -> None:
        """Cancelled before it reached Slurm, unless an interrupted pass did submit it: then record
        that job (agent/submitted is allowed on CANCELLED) so the next pass cancels it."""
        entry = self.journal.get(submission_id)
        try:
            if self.context.earlier.resume(entry):
                return
        except SubmitUnsettled as exc:
            log.warning("submission %d was cancelled; whether its interrupted submit reached Slurm is unknown "
                        "(%s)", exc.entry.submission_id, exc.reason, **log_fields(submission_id=exc.entry.submission_id))
        report = StateReport(None, "CANCELLED", "Job was cancelled by the user before a Slurm job was created",
                             "cancelled before submission to Slurm")
        self.send_update(submission_id, report)
        self.summary.count("cancelled")

    def same_state_reported(self, submission_id: int, job_id: int, light: list[dict[str, Any]]) -> bool:
        """Whether records holding only states (`light`) show what was reported lately for this very
        job: the same state, and the same reason where the states alone make one (an array's
        progress). Such a report was sent only once the job's records were found to be the owner's."""
        report = report_from_records(job_id, light, report_from_slurmctld)
        return (report is not None and report.state != "UNKNOWN"
                and self.reported_lately(submission_id, report, compare_reason=report.reason is not None))

    def reported_lately(self, submission_id: int, report: StateReport, compare_reason: bool = True) -> bool:
        """Whether this state of this job was the last one sent for the submission, not long ago."""
        entry = self.journal.get(submission_id)
        return (entry is not None and entry.reported and entry.slurm_job_id == report.job_id
                and entry.last_state == report.state
                and (not compare_reason or entry.last_reason == report.reason)
                and time.time() - (entry.last_reported_at or 0) < self.config.run.resend_after)

    def send_update(self, submission_id: int, report: StateReport) -> None:
        """Report the state unless the same one was reported lately. A job this pass has just
        reported SUBMITTED is updated only once its state moved on (it may already have ended): the
        reason slurmctld gives a new job moments later would cost a write per submission of a burst,
        and the next pass reports it."""
        new_this_pass = submission_id in self.context.reported_now
        if not self.reported_lately(submission_id, report, compare_reason=not new_this_pass):
            self.context.changes.update(submission_id, report)


# ---------------------------------------------------------------------------------------------
# Job metrics (InfluxDB → API): what each job used, from Slurm's InfluxDB profile to the API
# ---------------------------------------------------------------------------------------------

# The measurements Slurm's acct_gather_profile/influxdb plugin writes for a task, in the order of the
# API's row columns (cpu_frequency ... disk_write).
PROFILE_MEASUREMENTS = ("CPUFrequency", "CPUTime", "CPUUtilization", "GPUMemMB", "GPUUtilization", "Pages", "RSS",
                        "ReadMB", "VMSize", "WriteMB")
# PUT agent/metrics takes at most this many rows (14 columns each within PostgreSQL's 32,767 parameters).
METRICS_ROWS_PER_UPLOAD = 2340
# The plugin buffers a step's samples on each node and sends them when its 16 KB buffer is full (up
# to Slurm 24.11; 25.11 also sends every ProfileInfluxDBFrequency): about 21 samples of a lone task, 10.5 minutes
# at the default 30 s sampling. So series lag behind each other: a read starts at the oldest mark of
# the series that reported within this many seconds of the job's newest sample, and a series first
# seen with samples up to this far back is read from its start.
METRICS_LOOKBACK = 900
# Jobs whose read-back windows start within this many seconds of each other share one statement.
METRICS_WINDOW_BUCKET = 60
# Query URLs stay below this size (proxies and InfluxDB's own limit accept it); more jobs, more queries.
INFLUXDB_QUERY_URL_BYTES = 8000
# A job met for the first time is read whole (an hour of 4 tasks sampled every 10 s: 1,440 rows, about
# 1 MB in memory); at most this many of them are read at a time, whatever the number of workers, which
# bounds what the answers being worked on hold when many jobs are new.
NEW_JOBS_READ_AT_ONCE = 20
INFLUXDB_CHUNK_SIZE = 10000  # points per chunk of a chunked answer: bounds what one JSON line holds
INT64_MAX = 2 ** 63 - 1
EMPTY_ROW = [0.0] * len(PROFILE_MEASUREMENTS)

SeriesKey = tuple[str, int, int]  # (host, step, task), as the API's max_times name a series


def import_msgpack() -> Any:
    try:
        import msgpack
    except ImportError:
        raise ConfigError("[influxdb] url is set but the msgpack package is missing: install "
                          "jobbergate-sync[influxdb] (pip install 'jobbergate-sync[influxdb]')") from None
    return msgpack


def influxdb_problems(influxdb: Mapping[str, Any]) -> list[tuple[str, str]]:
    """[influxdb] values that parse but cannot work, as ("section.key", message)."""
    if not influxdb["url"]:
        return []
    problems = []
    if re.match(r"^https?://[^/]", influxdb["url"]) is None:
        problems.append(("influxdb.url", "must be an http(s) URL"))
    if not influxdb["database"]:
        problems.append(("influxdb.database", "is required when [influxdb] url is set"))
    if bool(influxdb["user"]) != bool(influxdb["password_file"]):
        problems.append(("influxdb.password_file", "set both user and password_file, or neither"))
    if influxdb["ca_file"] and not os.path.isfile(influxdb["ca_file"]):
        problems.append(("influxdb.ca_file", f"{influxdb['ca_file']} is not a file"))
    return problems


def influxdb_password(influxdb: Mapping[str, Any]) -> Optional[str]:
    """The InfluxDB password, read (0600) only when job metrics are on; msgpack checked then too."""
    if not influxdb["url"]:
        return None
    import_msgpack()
    if not influxdb["password_file"]:
        return None
    password = read_secret_file(influxdb["password_file"], "[influxdb] password_file").decode("utf-8").rstrip("\r\n")
    if not password:
        raise ConfigError(f"[influxdb] password_file {influxdb['password_file']} is empty")
    return password


class InfluxDB:
    """InfluxQL over InfluxDB 1.x's HTTP API (GET /query), read-only. Job ids and times are put
    into the query text as numbers (bind parameters are not served by every 1.x release nor by
    2.x's v1 compatibility API)."""

    def __init__(self, config: Config, http: Http):
        settings = config.influxdb
        self.url = settings.url.rstrip("/") + "/query"
        self.database = settings.database
        self.retention_policy = settings.retention_policy
        self.auth = (settings.user, config.influxdb_password or "") if settings.user else None
        self.verify: Union[bool, str] = settings.ca_file or settings.verify
        self.timeout = settings.timeout
        self.http = http
        self.counter_lock = threading.Lock()  # queries run side by side
        self.queries = 0
        self.bytes_read = 0

    def query(self, text: str, database: bool = True) -> list[dict[str, Any]]:
        """Each statement's series ({name, tags, columns, values}), chunked answers joined."""
        results: list[dict[str, Any]] = []
        self.stream(text, lambda statement, series: results.append({"statement_id": statement, **series}), database)
        return results

    def stream(self, text: str, on_series: Callable[[int, dict[str, Any]], None], database: bool = True) -> None:
        """Run the statements in `text`; hand each series piece of the answer to `on_series` as it
        arrives (a chunked answer: one JSON object a line), so a large answer is never held whole."""
        params = {"q": text, "epoch": "s", "chunked": "true", "chunk_size": str(INFLUXDB_CHUNK_SIZE)}
        if database:
            params["db"] = self.database
            if self.retention_policy:
                params["rp"] = self.retention_policy

        def attempt() -> None:
            with self.counter_lock:
                self.queries += 1
            response = self.http.send("influxdb", "GET", self.url, self.timeout, params=params, auth=self.auth,
                                      verify=self.verify, stream=True)
            with response:
                if response.status_code in (401, 403):
                    raise AuthError(f"GET {self.url}: InfluxDB refused [influxdb] user {self.auth[0] if self.auth else '(none)'} "
                                    f"(HTTP {response.status_code})")
                if response.status_code != 200:
                    raise Unavailable(f"GET {self.url}: HTTP {response.status_code} {response.text[:200].strip()}")
                received = 0
                try:
                    for line in response.iter_lines():
                        received += len(line)
                        if line.strip():
                            self._hand_over(json.loads(line), on_series)
                except requests.RequestException as exc:
                    raise Unavailable(f"GET {self.url}: answer interrupted ({type(exc).__name__})") from None
                except ValueError:
                    raise Unavailable(f"GET {self.url}: not an InfluxDB answer") from None
                finally:
                    with self.counter_lock:
                        self.bytes_read += received

        self.http.call("influxdb", attempt, idempotent=True)

    def _hand_over(self, body: Any, on_series: Callable[[int, dict[str, Any]], None]) -> None:
        if not isinstance(body, dict) or "error" in body:
            raise Unavailable(f"GET {self.url}: {body.get('error') if isinstance(body, dict) else body!r}")
        for result in body.get("results") or []:
            if "error" in result:
                raise Unavailable(f"GET {self.url}: statement {result.get('statement_id')}: {result['error']}")
            for series in result.get("series") or []:
                on_series(result.get("statement_id", 0), series)


def series_of(tags: Mapping[str, Any]) -> Optional[tuple[int, SeriesKey]]:
    """(Slurm job id, (host, step, task)) of a profile series' tags; None for a series not Slurm's."""
    try:
        return int(tags["job"]), (str(tags["host"]), int(tags["step"]), int(tags["task"]))
    except (KeyError, TypeError, ValueError):
        return None


def profile_statement(job_ids: Iterable[int], since: Optional[int]) -> str:
    """One InfluxQL statement for every profile measurement of these jobs, newer than `since`
    (epoch s; None: their whole profile), one series per (job, host, step, task)."""
    window = f" AND time > {since}s" if since is not None else ""
    measurements = ",".join(f'"{name}"' for name in PROFILE_MEASUREMENTS)
    return f'SELECT "value" FROM {measurements} WHERE {job_condition(job_ids)}{window} GROUP BY {SERIES_TAGS}'


def discovery_statement(job_ids: Iterable[int], since: int) -> str:
    """The first sample time newer than `since` of each series of these jobs: one point a series
    (every task sample holds a CPUTime)."""
    return f'SELECT first("value") FROM "CPUTime" WHERE {job_condition(job_ids)} AND time > {since}s GROUP BY {SERIES_TAGS}'


SERIES_TAGS = '"job","host","step","task"'


def job_condition(job_ids: Iterable[int]) -> str:
    return f'"job" =~ /^({"|".join(str(job_id) for job_id in sorted(job_ids))})$/'


def bucket_start(moment: int) -> int:
    return moment - moment % METRICS_WINDOW_BUCKET


@dataclasses.dataclass
class MetricsJob:
    """A submission whose profile is followed: its Slurm job and each series' newest uploaded sample."""

    submission_id: int
    slurm_job_id: int
    marks: dict[SeriesKey, int]

    def read_from(self) -> Optional[int]:
        """Where the next read starts: the oldest mark of the series that reported lately (within
        METRICS_LOOKBACK of the job's newest sample); None: the whole profile, nothing uploaded yet."""
        if not self.marks:
            return None
        newest = max(self.marks.values())
        return min(mark for mark in self.marks.values() if mark >= newest - METRICS_LOOKBACK)

    def discover_from(self) -> Optional[int]:
        """How far back a series first seen now may start and still be read in full."""
        return max(self.marks.values()) - METRICS_LOOKBACK if self.marks else None


@dataclasses.dataclass
class ProfileQuery:
    """One /query request: its statements, where each job's samples are read from (None: all of
    them), and which statement (if any) finds the series of the jobs already followed."""

    text: str
    since: dict[int, Optional[int]]  # Slurm job id -> the time after which its samples are read
    discovery: Optional[int] = None  # statement id of discovery_statement


def new_jobs_per_query(parts: int) -> int:
    """How many jobs met for the first time one query reads, when `parts` queries run at a time."""
    return max(1, NEW_JOBS_READ_AT_ONCE // parts)


def profile_queries(jobs: Collection[MetricsJob], url_bytes: int = INFLUXDB_QUERY_URL_BYTES,
                    parts: int = 1) -> list[ProfileQuery]:
    """The queries that read these jobs' new samples, in `parts` queries of about as many jobs each
    (run side by side, each by one worker). Jobs whose windows start close together share a
    statement (from the earliest start among them); a last statement finds the followed jobs'
    series. A part is split further only where its URL would grow too long or where it would read
    more than new_jobs_per_query(parts) jobs whole."""
    jobs_per_part = -(-len(jobs) // parts)
    new_per_query = new_jobs_per_query(parts)
    starts = {job.slurm_job_id: job.read_from() for job in jobs}
    discover = {job.slurm_job_id: job.discover_from() for job in jobs}
    order = sorted(starts, key=lambda job_id: (-1 if starts[job_id] is None else bucket_start(starts[job_id]), job_id))

    def plan(job_ids: list[int]) -> ProfileQuery:
        groups: dict[Optional[int], list[int]] = {}
        for job_id in job_ids:
            groups.setdefault(None if starts[job_id] is None else bucket_start(starts[job_id]), []).append(job_id)
        statements = [profile_statement(members, since) for since, members in groups.items()]
        followed = [job_id for job_id in job_ids if discover[job_id] is not None]
        discovery = None
        if followed:
            discovery = len(statements)
            statements.append(discovery_statement(followed, bucket_start(min(discover[job_id] for job_id in followed))))
        since = {job_id: group for group, members in groups.items() for job_id in members}
        return ProfileQuery(";".join(statements), since, discovery)

    queries: list[ProfileQuery] = []
    chunk: list[int] = []
    for job_id in order:
        new_jobs = sum(starts[member] is None for member in [*chunk, job_id])
        if chunk and (len(chunk) >= jobs_per_part or new_jobs > new_per_query
                      or len(urllib.parse.quote(plan([*chunk, job_id]).text)) > url_bytes):
            queries.append(plan(chunk))
            chunk = []
        chunk.append(job_id)
    if chunk:
        queries.append(plan(chunk))
    return queries


class ProfileRows:
    """The rows a query's answer makes: per Slurm job, (time, host, step, task) -> the ten values,
    summed per measurement as the upstream agent does; samples a series has already uploaded
    (at or before its mark) are dropped. The discovery statement's answer gives the first sample
    time of each series in the read-back window (`first_seen`)."""

    def __init__(self, query: ProfileQuery, marks_by_job: Mapping[int, Mapping[SeriesKey, int]]):
        self.query = query
        self.marks_by_job = marks_by_job
        self.rows: dict[int, dict[tuple[int, str, int, int], array.array]] = {}
        self.first_seen: dict[int, dict[SeriesKey, int]] = {}

    def add(self, statement_id: int, series: Mapping[str, Any]) -> None:
        found = series_of(series.get("tags") or {})
        if found is None or found[0] not in self.marks_by_job:
            return
        job_id, key = found
        if statement_id == self.query.discovery:
            for sample_time, _ in series.get("values") or []:
                if isinstance(sample_time, int):
                    self.first_seen.setdefault(job_id, {})[key] = sample_time
            return
        if series.get("name") not in PROFILE_MEASUREMENTS:
            return
        mark = self.marks_by_job[job_id].get(key, -1)
        column = PROFILE_MEASUREMENTS.index(series["name"])
        rows = self.rows.setdefault(job_id, {})
        for sample_time, value in series.get("values") or []:
            if not isinstance(sample_time, int) or sample_time <= mark or not isinstance(value, (int, float)):
                continue
            row = rows.get((sample_time, *key))
            if row is None:  # ten doubles: a third of a list of ten floats, when a pass holds many rows
                row = rows[(sample_time, *key)] = array.array("d", EMPTY_ROW)
            row[column] += 0.0 if abs(value) >= INT64_MAX else float(value)  # as upstream: no int64 overflow

    def late_series(self, job_id: int) -> dict[SeriesKey, int]:
        """Series first seen now whose first samples are older than this read's window (a step's
        buffer sent late): each gets a mark just before its first sample, and its rows wait for the
        next pass, which reads from there (uploading them now would put the mark past the older ones)."""
        since = self.query.since.get(job_id)
        if since is None:
            return {}
        marks = self.marks_by_job[job_id]
        late = {key: first - 1 for key, first in self.first_seen.get(job_id, {}).items()
                if key not in marks and first <= since}
        rows = self.rows.get(job_id, {})
        for row_key in [row_key for row_key in rows if tuple(row_key[1:]) in late]:
            del rows[row_key]
        return late


def upload_chunks(rows: Mapping[tuple[int, str, int, int], array.array]) -> Iterator[list[list[Any]]]:
    """The API's rows in time order, at most METRICS_ROWS_PER_UPLOAD a chunk: [time, host, step,
    task, the ten values] (step and task as text, as the upstream agent sends them)."""
    ordered = [[sample_time, host, str(step), str(task), *values]
               for (sample_time, host, step, task), values in sorted(rows.items())]
    for start in range(0, len(ordered), METRICS_ROWS_PER_UPLOAD):
        yield ordered[start:start + METRICS_ROWS_PER_UPLOAD]


def marks_of(chunk: Iterable[list[Any]]) -> dict[SeriesKey, int]:
    """The newest sample of each series in an uploaded chunk."""
    marks: dict[SeriesKey, int] = {}
    for row in chunk:
        key = (row[1], int(row[2]), int(row[3]))
        marks[key] = max(marks.get(key, row[0]), row[0])
    return marks


def api_marks(body: Any, submission_id: int) -> dict[SeriesKey, int]:
    """GET agent/metrics/{id}'s max_times as marks."""
    if not isinstance(body, dict) or not isinstance(body.get("max_times"), list):
        raise Unavailable(f"GET agent/metrics/{submission_id}: not a list of max_times ({str(body)[:200]!r})")
    marks: dict[SeriesKey, int] = {}
    for entry in body["max_times"]:
        try:
            marks[(str(entry["node_host"]), int(entry["step"]), int(entry["task"]))] = int(entry["max_time"])
        except (KeyError, TypeError, ValueError):
            raise Unavailable(f"GET agent/metrics/{submission_id}: malformed max_times entry {entry!r}") from None
    return marks


def get_metric_marks(api: JobbergateApi, submission_id: int) -> dict[SeriesKey, int]:
    path = f"/job-submissions/agent/metrics/{submission_id}"
    return api_marks(json_body(api._expect(api._request("GET", path, True), 200)), submission_id)


def put_metrics(api: JobbergateApi, submission_id: int, chunk: list[list[Any]], msgpack: Any) -> None:
    """Upload one chunk. The API refuses a whole chunk that holds one row it already has (400), as
    when a pass crashed between an upload and the journal's mark: then the rows the API's own marks
    cover are dropped and the rest sent once more."""
    path = f"/job-submissions/agent/metrics/{submission_id}"

    def put(rows: list[list[Any]]) -> requests.Response:
        return api._request("PUT", path, True, data=msgpack.packb(rows), headers={"Content-Type": "application/octet-stream"})

    response = put(chunk)
    if response.status_code == 400:
        stored = get_metric_marks(api, submission_id)
        missing = [row for row in chunk if row[0] > stored.get((row[1], int(row[2]), int(row[3])), -1)]
        if len(missing) < len(chunk):
            log.info("submission %d: the API already holds %d of these %d metric rows (an upload whose mark was not "
                     "written); sending the other %d", submission_id, len(chunk) - len(missing), len(chunk), len(missing),
                     **log_fields(submission_id=submission_id))
            if not missing:
                return
            response = put(missing)
    api._expect(response, 200, 201, 202, 204)


@dataclasses.dataclass
class UploadedMarks:
    """What one query's uploads leave to write to the journal, together: each submission's raised
    marks, and the submissions no longer followed."""

    marks: dict[int, dict[SeriesKey, int]] = dataclasses.field(default_factory=dict)
    forgotten: set[int] = dataclasses.field(default_factory=set)

    def raise_marks(self, job: MetricsJob, marks: Mapping[SeriesKey, int]) -> None:
        written = self.marks.setdefault(job.submission_id, {})
        for key, newest in marks.items():
            job.marks[key] = written[key] = max(job.marks.get(key, newest), newest)


class JobMetricsPhase(PassPart):
    """The profile samples of the jobs that ran since the last pass, and once more of those that
    left the active list (their last samples arrive at the end), from InfluxDB to the API. A fixed
    number of InfluxDB queries per pass for all these jobs, one per worker, each worker reading
    its share of the jobs and uploading their rows (more queries only when a URL would grow too
    long, or when many jobs are new); an InfluxDB outage delays the metrics and nothing else."""

    def run(self) -> None:
        if not self.config.influxdb.url or self.context.active_listed is None:
            return
        if isinstance(self.context.changes, DryRunChanges):
            log.info("dry run: job metrics are neither read nor uploaded")
            return
        self.summary.influxdb_failures = 0
        followed = self.journal.metric_jobs()
        active, complete = self.context.active_listed
        active_ids = {item["id"] for item in active}
        for item in active:
            self.drop_another_job(item, followed)
            if self.started(item) and item["id"] not in followed:
                self.context.contain_item(item["id"], lambda item=item: self.follow(item, followed))
        if not followed:
            return
        began = time.monotonic()
        # what the workers share while they collect: the reader, the packer, each job by its Slurm id, the ended ones
        self.influxdb, self.msgpack = InfluxDB(self.config, self.api.http), import_msgpack()
        self.by_job = {job.slurm_job_id: job for job in followed.values()}
        self.ended = {submission_id for submission_id in followed if complete and submission_id not in active_ids}
        workers = self.config.run.workers
        run_in_threads(profile_queries(followed.values(), parts=workers), lambda _, query: self.collect(query),
                       workers, self.deadline)
        log.info("job metrics: %d job(s) read with %d InfluxDB query request(s), %d bytes, in %.2f s", len(followed),
                 self.influxdb.queries, self.influxdb.bytes_read, time.monotonic() - began)

    def started(self, item: Mapping[str, Any]) -> bool:
        """Whether the submission's job may have samples to read: the update phase found it to be the
        owner's job (any user may name any job id), and it is not known to be pending."""
        if self.context.owned_jobs.get(item["id"]) != item.get("slurm_job_id"):
            return False
        entry = self.journal.get(item["id"])
        return entry is None or entry.last_state != "PENDING"

    def drop_another_job(self, item: Mapping[str, Any], followed: dict[int, MetricsJob]) -> None:
        """Stop following a job that is not the active submission's: it was an earlier submission's
        with the same id, before Jobbergate's database was recreated or restored."""
        job = followed.get(item["id"])
        if job is not None and job.slurm_job_id != item.get("slurm_job_id"):
            log.warning("submission %d: no longer following the job metrics of Slurm job %d, which is not its job "
                        "(%s): it was an earlier submission's with the same id", item["id"], job.slurm_job_id,
                        item.get("slurm_job_id"), **log_fields(submission_id=item["id"], slurm_job_id=job.slurm_job_id))
            self.journal.write_metric_marks({}, [item["id"]])
            del followed[item["id"]]

    def follow(self, item: Mapping[str, Any], followed: dict[int, MetricsJob]) -> None:
        """Start following a submission: its marks from the API, which may hold rows already (a lost
        journal, or another agent before this one)."""
        job = MetricsJob(item["id"], item["slurm_job_id"], get_metric_marks(self.api, item["id"]))
        self.journal.follow_metrics(job)
        followed[job.submission_id] = job

    def collect(self, query: ProfileQuery) -> None:
        """One query's jobs: their new samples read, uploaded, and their marks written to the journal
        in one transaction once the uploads are done (a crash before it re-sends those chunks, which
        put_metrics makes harmless), so a worker's share costs one journal commit, not one a chunk."""
        rows = ProfileRows(query, {job_id: self.by_job[job_id].marks for job_id in query.since})
        try:
            self.influxdb.stream(query.text, rows.add)
        except (Unavailable, AuthError) as exc:
            self.summary.count("influxdb_failures")
            log.warning("InfluxDB: %s; the metrics of %d job(s) wait for the next pass", exc, len(query.since))
            return
        uploaded = UploadedMarks()
        try:
            for job_id in query.since:
                job = self.by_job[job_id]
                self.context.contain_item(job.submission_id, lambda job=job: self.upload(job, rows, uploaded))
        finally:
            self.journal.write_metric_marks(uploaded.marks, uploaded.forgotten)

    def upload(self, job: MetricsJob, rows: ProfileRows, uploaded: UploadedMarks) -> None:
        """Chunks in time order. An ended job is forgotten after this last collection, unless a series
        reported late and waits for the next read."""
        late = rows.late_series(job.slurm_job_id)
        if late:
            log.info("submission %d: %d series of Slurm job %d first reported samples older than this read; they are "
                     "read from their start in the next pass", job.submission_id, len(late), job.slurm_job_id,
                     **log_fields(submission_id=job.submission_id, slurm_job_id=job.slurm_job_id))
            uploaded.raise_marks(job, late)
        new_rows = rows.rows.pop(job.slurm_job_id, {})  # not held once uploaded
        for chunk in upload_chunks(new_rows):
            try:
                put_metrics(self.api, job.submission_id, chunk, self.msgpack)
            except ApiConflict as exc:
                if exc.status != 404:
                    raise
                log.warning("submission %d no longer exists in Jobbergate (%s); its job metrics are no longer followed",
                            job.submission_id, exc, **log_fields(submission_id=job.submission_id))
                uploaded.forgotten.add(job.submission_id)
                return
            uploaded.raise_marks(job, marks_of(chunk))
        if new_rows:
            log.info("submission %d: %d metric row(s) of Slurm job %d uploaded", job.submission_id, len(new_rows),
                     job.slurm_job_id, **log_fields(submission_id=job.submission_id, slurm_job_id=job.slurm_job_id))
        if job.submission_id in self.ended and not late:
            uploaded.forgotten.add(job.submission_id)


# ---------------------------------------------------------------------------------------------
# Monitoring: a Prometheus textfile and healthchecks-style pings, never failing a pass
# ---------------------------------------------------------------------------------------------

METRIC_PREFIX = "jobbergate_sync_"
PING_TAIL_LINES = 20
PING_BODY_LIMIT = 10000  # bytes of log lines in a ping's body (healthchecks keeps up to 100 kB)
LAST_SUCCESS_RE = re.compile(rf"^{METRIC_PREFIX}last_success_timestamp_seconds\s+(\S+)\s*$", re.M)
PASS_OUTCOMES = ("submitted", "rejected", "updated", "cancelled", "errors")
# A run that stops at its command line or at the lock writes no textfile: those codes never show in it.
LAST_RUN_EXIT_CODE_HELP = "Exit code of the last pass ({}).".format(", ".join(
    f"{entry.code} {entry.name}" for entry in EXIT_CODES if entry.after_pass and entry.code not in (EX_USAGE, EX_TEMPFAIL)))


def metrics_problems(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """[metrics] values that parse but cannot work, as ("section.key", message)."""
    problems = []
    textfile = metrics["textfile"]
    if textfile and not (textfile.startswith("/") and textfile.endswith(".prom")):
        problems.append(("metrics.textfile", "must be an absolute path ending in .prom "
                                             "(node_exporter's textfile collector reads only *.prom files)"))
    if metrics["ping_url"] and re.match(r"^https?://[^/]", metrics["ping_url"]) is None:
        problems.append(("metrics.ping_url", "must be an http(s) URL"))
    return problems


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """A finished pass, as the monitoring outputs tell it."""

    exit_code: int
    summary: PassSummary
    ended_at: float  # Unix time
    duration: float
    journal_entries: Optional[int]


def previous_success(text: str) -> Optional[float]:
    """The last-success timestamp of an earlier textfile, None when it has none."""
    match = LAST_SUCCESS_RE.search(text)
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def metric_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(float(value), 3))


def metric_block(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    """One gauge in the Prometheus text format: HELP, TYPE and its samples ('' or '{label="…"}')."""
    return [f"# HELP {METRIC_PREFIX}{name} {help_text}", f"# TYPE {METRIC_PREFIX}{name} gauge",
            *(f"{METRIC_PREFIX}{name}{labels} {metric_value(value)}" for labels, value in samples)]


def exposition(record: PassRecord, last_success: Optional[float]) -> str:
    """The textfile's content for a finished pass. Counts the pass could not know (a list that
    failed, a journal it could not open) are left out rather than reported as 0."""
    summary = record.summary
    lines = [
        *metric_block("last_run_timestamp_seconds", "Unix time at which the last pass ended.",
                      [("", record.ended_at)]),
        *metric_block("last_success_timestamp_seconds", "Unix time at which the last pass that exited 0 "
                      "ended (0: none yet).", [("", last_success or 0)]),
        *metric_block("last_run_duration_seconds", "How long the last pass took.", [("", record.duration)]),
        *metric_block("last_run_exit_code", LAST_RUN_EXIT_CODE_HELP, [("", record.exit_code)]),
        *metric_block("last_run_items", "What the last pass did, by outcome (errors: items and phases that failed).",
                      [(f'{{outcome="{outcome}"}}', getattr(summary, outcome)) for outcome in PASS_OUTCOMES]),
        *metric_block("last_run_deadline_reached", "1 when the last pass stopped at its deadline, leaving work "
                      "for the next pass.", [("", int(summary.deadline_reached))]),
    ]
    for name, value, help_text in (
        ("pending_submissions", summary.pending, "Pending (CREATED) submissions the last pass listed."),
        ("active_submissions", summary.active, "Active submissions the last pass listed."),
        ("journal_entries", record.journal_entries, "Entries in the submission journal after the last pass."),
        ("last_run_influxdb_failures", summary.influxdb_failures, "InfluxDB queries of the last pass that failed: "
         "those jobs' metrics wait for the next pass (absent when [influxdb] is off)."),
    ):
        if value is not None:
            lines += metric_block(name, help_text, [("", value)])
    return "\n".join(lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace `path` atomically: a temporary file in its directory (not *.prom, so the collector
    never reads it half-written), mode 0644 for node_exporter, then a rename."""
    fd, temporary = tempfile.mkstemp(prefix=".jobbergate_sync.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ping_target(base_url: str, exit_code: Optional[int]) -> str:
    """healthchecks.io's protocol: <url>/start (exit_code None), <url> on success, <url>/<exit code>
    on failure (any code from 1 to 255 marks the check failed and is shown with the ping)."""
    base_url = base_url.rstrip("/")
    if exit_code is None:
        return f"{base_url}/start"
    return base_url if exit_code == EXIT_OK else f"{base_url}/{exit_code}"


def ping_body(exit_code: int, lines: list[str]) -> bytes:
    """The exit code, then the pass's last log lines (redacted again, capped at the end)."""
    text = REDACTOR.redact("\n".join(lines))
    tail = text.encode("utf-8", "replace")[-PING_BODY_LIMIT:].decode("utf-8", "ignore")
    return f"exit_code={exit_code}\n{tail}\n".encode("utf-8")


class Monitor:
    """The [metrics] outputs of one pass. A failed ping or textfile write is one WARNING line:
    it never fails the pass nor changes its exit code. Pings are sent once, never retried."""

    def __init__(self, metrics: Any, enabled: bool = True):
        self.textfile = metrics.textfile if enabled else ""
        self.ping_url = metrics.ping_url if enabled else ""
        self.timeout = metrics.ping_timeout
        REDACTOR.add(self.ping_url)  # the URL is the check's key: anyone holding it can ping

    def start(self) -> None:
        if self.ping_url:
            self._ping(ping_target(self.ping_url, None), b"")

    def finish(self, record: PassRecord, tail: list[str]) -> None:
        if self.textfile:
            self._write_textfile(record)
        if self.ping_url:
            self._ping(ping_target(self.ping_url, record.exit_code), ping_body(record.exit_code, tail))

    def _write_textfile(self, record: PassRecord) -> None:
        last_success = record.ended_at if record.exit_code == EXIT_OK else previous_success(
            read_text_or_empty(self.textfile))
        try:
            write_textfile(self.textfile, exposition(record, last_success))
        except OSError as exc:
            log.warning("[metrics] textfile %s: cannot write it: %s; the pass is not affected",
                        self.textfile, exc.strerror or exc)

    def _ping(self, url: str, body: bytes) -> None:
        host = requests.utils.urlparse(url).hostname
        try:
            response = requests.post(url, data=body, timeout=self.timeout,
                                     headers={"User-Agent": f"jobbergate-sync/{__version__}",
                                              "Content-Type": "text/plain; charset=utf-8"})
        except requests.RequestException as exc:
            log.warning("monitoring ping to %s failed (%s); the pass is not affected", host, type(exc).__name__)
            return
        if not response.ok:
            log.warning("monitoring ping to %s answered HTTP %d; the pass is not affected", host,
                        response.status_code)


# ---------------------------------------------------------------------------------------------
# Check: every peer visited once, read-only, one line per check
# ---------------------------------------------------------------------------------------------

# What the agent's routes need (each accepts jobbergate:admin too, except the cluster-status ping).
JOB_SUBMISSIONS_READ = "jobbergate:job-submissions:read"
AGENT_PERMISSIONS = (JOB_SUBMISSIONS_READ, "jobbergate:job-submissions:update", "jobbergate:job-scripts:read",
                     "jobbergate:clusters:update")
ADMIN_PERMISSION = "jobbergate:admin"
ADMIN_REFUSED = ("jobbergate:clusters:update",)

MAPPER_FIXES = {
    "email-local-part": "create that account (useradd -m), list the address's domain in [mapper] domains, or map "
                        "the address with [mapper] type = map-file",
    "map-file": "add a line 'email username' for it to [mapper] map_file, naming an existing account",
    "single-user": "set [mapper] user to an existing regular account",
    "ldap": "give that address exactly one entry in the LDAP directory, whose [mapper] ldap_attribute names an "
            "existing account (or fix ldap_filter)",
}


@dataclasses.dataclass(frozen=True)
class CheckLine:
    status: str  # "ok", "FAIL" or "skip"
    what: str
    detail: str
    exit_code: int = EXIT_OK


def check_passed(what: str, detail: str) -> CheckLine:
    return CheckLine("ok", what, detail)


def check_failed(what: str, problem: str, fix: str, exit_code: int) -> CheckLine:
    return CheckLine("FAIL", what, f"{problem}; {fix}", exit_code)


def check_skipped(what: str, needs: str) -> CheckLine:
    return CheckLine("skip", what, f"needs {needs}")


def check_line_text(line: CheckLine) -> str:
    return f"{line.status:<4} {line.what}: {line.detail}"


def check_exit_code(lines: Iterable[CheckLine]) -> int:
    """The exit code of the first failing check; 0 when none failed."""
    return next((line.exit_code for line in lines if line.status == "FAIL"), EXIT_OK)


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (only to show them); {} when it is not a JWT."""
    import jwt
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def missing_permissions(granted: Iterable[str]) -> list[str]:
    """The agent permissions a token's `permissions` claim does not cover."""
    granted = set(granted)
    return [permission for permission in AGENT_PERMISSIONS if permission not in granted
            and (ADMIN_PERMISSION not in granted or permission in ADMIN_REFUSED)]


# Debian gives package accounts uids 60000-64999 (Policy 9.2.2): its slurm is 64030, the owner of the
# JWT key even where this host's passwd lacks it (a key shared from a chroot or a file system).
DEBIAN_PACKAGE_UIDS = range(60000, 65000)


def is_system_account(uid: int, min_uid: int) -> bool:
    """An account no person logs in as: below min_uid, a Debian package account, or one without a
    login shell."""
    if uid in DEBIAN_PACKAGE_UIDS:
        return True
    try:
        shell = pwd.getpwuid(uid).pw_shell
    except KeyError:
        return False
    return uid < min_uid or os.path.basename(shell) in ("nologin", "false")


def secret_file_problem(key: str, path: str, info: os.stat_result, min_uid: int) -> Optional[str]:
    """Why a secret file is unsafe: others may read it, or an account other than root (or the one
    running the tool; for the Slurm key also a system account such as SlurmUser) owns it."""
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return f"{path} has mode {mode:04o}; chmod 0600 it"
    owners_allowed = info.st_uid in (0, os.geteuid()) or (key == "jwt_key_file" and is_system_account(info.st_uid, min_uid))
    if not owners_allowed:
        return (f"{path} is owned by {account_name(info.st_uid)}, who can read and replace it; "
                f"chown root: {path} (and chmod 0600)")
    return None


def executable_problem(path: str) -> Optional[str]:
    """Why `path` cannot be run as a command, or None."""
    if not os.path.isfile(path):
        return "no such file"
    return None if os.access(path, os.X_OK) else "not executable"


def failure_fix(exc: Exception, fixes: Mapping[type, str]) -> str:
    """The fix for `exc`: that of its most specific type in `fixes`."""
    for kind in type(exc).__mro__:
        if kind in fixes:
            return fixes[kind]
    return "run with -v to see the exchanges"


def influxdb_line(influxdb: InfluxDB) -> CheckLine:
    """InfluxDB answers, holds [influxdb] database, and which profile measurements are there (none:
    no job has been profiled yet)."""
    what = "InfluxDB"
    try:
        databases = {row[0] for series in influxdb.query("SHOW DATABASES", database=False) for row in series.get("values") or []}
        if influxdb.database not in databases:
            return check_failed(what, f"{influxdb.url} has no database {influxdb.database!r} (it has: "
                          f"{', '.join(sorted(map(str, databases))) or 'none'})",
                          "set [influxdb] database to acct_gather.conf's ProfileInfluxDBDatabase, or create it "
                          "(influx -execute 'CREATE DATABASE ...')", EX_CONFIG)
        present = {row[0] for series in influxdb.query("SHOW MEASUREMENTS") for row in series.get("values") or []}
    except SyncError as exc:
        return check_failed(what, str(exc), failure_fix(exc, {
            AuthError: "check [influxdb] user and password_file",
            Unavailable: "check [influxdb] url and that InfluxDB is running",
        }), exc.exit_code)
    found = [name for name in PROFILE_MEASUREMENTS if name in present]
    if not found:
        return check_passed(what, f"{influxdb.url} database {influxdb.database}: answers, but no job has been profiled yet "
                            "(none of the profile measurements is there): set ProfileInfluxDBDefault=Task in "
                            "acct_gather.conf, or users ask for --profile=task")
    return check_passed(what, f"{influxdb.url} database {influxdb.database}: {len(found)} of {len(PROFILE_MEASUREMENTS)} "
                        f"profile measurements ({', '.join(found)})")


class Check:
    """The check command: each peer visited once, read-only. Nothing is submitted, reported or
    written but what a pass would create anyway (the state directory and the lock file): no token
    cache, no journal, no remembered slurmrestd choice. Each step adds its lines; a step whose input
    an earlier one could not provide says skip."""

    def __init__(self, config_path: str, email: Optional[str], environ: Mapping[str, str]):
        self.config_path = config_path
        self.email = email
        self.environ = environ
        self.lines: list[CheckLine] = []

    def run(self) -> list[CheckLine]:
        config = self.configuration()
        if config is None:
            names = ["secret files", "OIDC token", "Jobbergate API", "slurmrestd", "slurmdbd", "slurmrestd token",
                     "head nodes", "state directory and lock"] + ([f"user mapping of {self.email}"] if self.email else [])
            self.lines += [check_skipped(name, "configuration") for name in names]
            return self.lines
        http = Http(Deadline(config.run.deadline), retries=1, backoff=0)  # one try each: a diagnosis, not a pass
        token = OidcToken(config, http, os.path.join(config.run.state_dir, "token.json"), write_cache=False)
        if self.oidc_token(token):
            self.api(JobbergateApi(config, http, token))
        else:
            self.lines.append(check_skipped("Jobbergate API", "OIDC token"))
        user = self.mapped_user(config, self.ldap_directory(config))
        slurm: SlurmBackend
        if config.slurm.backend == "sbatch":
            slurm = SlurmCommands(config)
            self.slurm_commands(slurm)
        else:
            slurm = SlurmRest(config, http, choice_path=None, remember=False)  # remembers nothing
            self.slurmrestd(slurm, user)
        self.lines.append(self.head_nodes(config, slurm))
        if config.influxdb.url:
            self.lines.append(influxdb_line(InfluxDB(config, http)))
        self.state_directory(config)
        if isinstance(user, CheckLine):
            self.lines.append(user)
        elif user is not None:
            self.lines.append(self.mapping_line(config, user))
        return self.lines

    def configuration(self) -> Optional[Config]:
        try:
            config = load_config(self.config_path, self.environ)
        except ConfigError as exc:
            self.lines.append(check_failed("configuration", str(exc), "config.example.ini documents every key", EX_CONFIG))
            return None
        self.lines.append(check_passed("configuration", f"{self.config_path} is valid"))
        shown, problems = [], []
        for section, key in config.secret_files:  # those this configuration reads, and load_config has just read
            path = config.sections[section][key]
            info = os.stat(secret_path(path))
            problem = secret_file_problem(key, secret_path(path), info, config.mapper.min_uid)
            if problem:
                problems.append(f"[{section}] {key} {problem}")
            shown.append(f"[{section}] {key} {path} ({stat.S_IMODE(info.st_mode):04o}, {account_name(info.st_uid)})")
        if problems:
            self.lines.append(CheckLine("FAIL", "secret files", "; ".join(problems), EX_CONFIG))
        else:
            self.lines.append(check_passed("secret files", ", ".join(shown) or "none (the client secret is in the file)"))
        return config

    def oidc_token(self, token: OidcToken) -> bool:
        what = "OIDC token"
        try:
            claims = token_claims(token.refresh())  # always fresh: the cache would not test the secret
        except SyncError as exc:
            self.lines.append(check_failed(what, str(exc), failure_fix(exc, {
                AuthError: f"check [oidc] client_id and the client secret against the issuer's client {token.client_id}",
                Unavailable: "check [oidc] issuer (the realm's URL) and that the issuer is running",
            }), exc.exit_code))
            return False
        if not claims:
            self.lines.append(check_passed(what, f"client {token.client_id}; not a JWT, so its permissions cannot be shown"))
            return True
        granted = claims.get("permissions") if isinstance(claims.get("permissions"), list) else []
        shown = f"client {token.client_id}, azp {claims.get('azp') or claims.get('client_id') or '(none)'}, " \
                f"permissions: {', '.join(map(str, granted)) or '(none)'}"
        missing = missing_permissions(map(str, granted))
        if missing:
            self.lines.append(check_failed(what, f"{shown}; missing {', '.join(missing)}",
                                     f"give client {token.client_id} those roles, mapped into the token's top-level "
                                     "permissions claim", EX_NOPERM))
        else:
            self.lines.append(check_passed(what, shown))
        return True

    def api(self, api: JobbergateApi) -> None:
        what = "Jobbergate API"
        totals = []
        try:
            for name in ("pending", "active"):
                body = api.page(f"/job-submissions/agent/{name}", 1, 1)
                totals.append(f"agent/{name} ({body.get('total', '?')} {name})")
        except SyncError as exc:
            self.lines.append(check_failed(what, str(exc), failure_fix(exc, {
                Forbidden: f"give client {api.token.client_id} {JOB_SUBMISSIONS_READ}",
                AuthError: "the API does not accept the issuer's tokens: check that it trusts [oidc] issuer",
                ConfigError: "fix [jobbergate] api_url",
                Unavailable: "check [jobbergate] api_url and that the API is running",
                ItemError: "check that the token carries azp (the cluster name) and that the API is Jobbergate's",
            }), exc.exit_code))
            return
        self.lines.append(check_passed(what, f"{api.base}: " + ", ".join(totals)))

    def slurmrestd(self, slurm: SlurmRest, user: Union[LocalUser, CheckLine, None]) -> None:
        what = "slurmrestd"
        users = [slurm.query_user] + ([user.name] if isinstance(user, LocalUser) else [])
        pings = [f"slurmrestd token for {name}" for name in users]
        if isinstance(user, CheckLine):
            pings.append(f"slurmrestd token for {self.email}")
        try:
            served = slurm.discover()
        except SyncError as exc:
            self.lines.append(check_failed(what, str(exc), failure_fix(exc, {
                AuthError: "check [slurmrestd] jwt_key_file (or token_file) and query_user",
                ConfigError: "run a slurmrestd that serves one of them (Slurm 22.05 or later)",
                Unavailable: "check [slurmrestd] url and that slurmrestd is running",
            }), exc.exit_code))
            self.lines += [check_skipped(name, what) for name in ["slurmdbd", *pings]]
            return
        setting = slurm.api_version_setting
        served_text = f"{slurm.base} serves {', '.join(served.versions)} (Slurm {served.release or 'release unknown'})"
        if setting != "auto" and setting not in served.versions:
            self.lines.append(check_failed(what, f"{served_text}, not the pinned api_version {setting}",
                                     "set [slurmrestd] api_version = auto or to a version it serves", EX_CONFIG))
            self.lines += [check_skipped(name, what) for name in ["slurmdbd", *pings]]
            return
        how = "pinned" if setting != "auto" else "chosen by api_version = auto"
        self.lines.append(check_passed(what, f"{served_text}; uses {slurm.version} ({how})"))
        self.lines.append(self.slurmdbd_line(slurm, served))
        first = self.ping_line(slurm, slurm.query_user)
        self.lines.append(first)
        for name in pings[1:]:
            if isinstance(user, LocalUser) and first.status == "ok":
                self.lines.append(self.ping_line(slurm, user.name))
            else:
                self.lines.append(check_skipped(name, first.what if first.status != "ok" else "user mapping"))

    @staticmethod
    def slurmdbd_line(slurm: SlurmRest, served: ServedApi) -> CheckLine:
        what = "slurmdbd"
        version = slurm.version
        present = version in served.slurmdb_versions
        where = f"/slurmdb/{version}/ paths" + ("" if present else " not")
        setting = slurm.slurmdbd_setting
        if setting is True and not present:
            return check_failed(what, f"{where} served, but slurmdbd = true", "start slurmrestd with its slurmdbd plugin "
                          "(and slurmdbd), or set [slurmrestd] slurmdbd = auto", EX_CONFIG)
        uses = ("used for the jobs slurmctld has forgotten" if slurm.use_slurmdbd
                else f"not used (a job slurmctld has forgotten is reported UNKNOWN; an interrupted submit is trusted "
                     f"to slurmctld for purge_horizon = {slurm.purge_horizon} s, which must not exceed slurmctld's "
                     "MinJobAge: slurmrestd does not serve it, compare with scontrol show config)")
        return check_passed(what, f"{where} served; slurmdbd = {str(setting).lower()}: {uses}")

    @staticmethod
    def ping_line(slurm: SlurmRest, user: str) -> CheckLine:
        what = f"slurmrestd token for {user}"
        signed = "a token signed with [slurmrestd] jwt_key_file" if slurm.credentials.jwt_key else "[slurmrestd] token_file"
        try:
            slurm.ping(user)
        except SyncError as exc:
            return check_failed(what, str(exc), failure_fix(exc, {
                AuthError: f"slurmrestd refused {signed}: it must hold slurmctld's key (AuthAltParameters jwt_key=)",
                Unavailable: f"slurmctld refused {signed} (it must hold the key named by AuthAltParameters "
                             "jwt_key=) or is down (scontrol ping)",
            }), exc.exit_code)
        return check_passed(what, f"{signed} accepted; slurmctld answered GET /slurm/{slurm.version}/ping")

    def slurm_commands(self, slurm: SlurmCommands) -> None:
        """The sbatch backend: each command present and executable, its release, then slurmctld
        (squeue) and slurmdbd (sacct) answering."""
        what = "Slurm commands"
        problems = [f"[slurm] {tool} = {path}: {problem}" for tool, path in slurm.tools.items()
                    for problem in [executable_problem(path)] if problem]
        if problems:
            self.lines.append(check_failed(what, "; ".join(problems), "install Slurm's client commands or fix the paths",
                                     EX_CONFIG))
            self.lines += [check_skipped(name, what) for name in ("slurmctld", "slurmdbd")]
            return
        try:
            releases = {tool: slurm.tool_release(tool) for tool in ("sbatch", "squeue", "sacct")}
        except SyncError as exc:
            self.lines.append(check_failed(what, str(exc), "check Slurm's installation on this host", exc.exit_code))
            self.lines += [check_skipped(name, what) for name in ("slurmctld", "slurmdbd")]
            return
        shown = ", ".join(f"{tool} {release}" for tool, release in releases.items())
        self.lines.append(check_passed(what, f"{', '.join(slurm.tools.values())} executable; {shown}"))
        unreachable = "check that slurmctld runs (scontrol ping), that munged runs, and this host's slurm.conf"
        try:
            jobs = slurm.jobs()
        except SyncError as exc:
            self.lines.append(check_failed("slurmctld", str(exc), failure_fix(exc, {Unavailable: unreachable}), exc.exit_code))
        else:
            self.lines.append(check_passed("slurmctld", f"squeue answered: it holds {len(jobs)} job(s)"))
        if not slurm.use_slurmdbd:
            self.lines.append(check_passed("slurmdbd", "not used ([slurm] slurmdbd = false): a job slurmctld has "
                                                 "forgotten is reported UNKNOWN"))
            self.lines.append(self.purge_horizon_line(slurm))
            return
        try:
            slurm.accounting_jobs_since("root", time.time())
        except SyncError as exc:
            self.lines.append(check_failed("slurmdbd", str(exc), failure_fix(exc, {
                Unavailable: "check that slurmdbd runs, or set [slurm] slurmdbd = false"}), exc.exit_code))
        else:
            self.lines.append(check_passed("slurmdbd", "sacct answered: used for the jobs slurmctld has forgotten"))

    @staticmethod
    def purge_horizon_line(slurm: SlurmCommands) -> CheckLine:
        """Without slurmdbd, an interrupted submit younger than purge_horizon that slurmctld does not
        hold is taken as never submitted: true only while slurmctld keeps a finished job that long."""
        what = "purge horizon"
        try:
            min_job_age = slurm.min_job_age()
        except SyncError as exc:
            return check_failed(what, str(exc), "check that scontrol runs ([slurm] scontrol)", exc.exit_code)
        if min_job_age is None:
            return check_failed(what, "scontrol show config does not give MinJobAge", "check [slurm] scontrol", EX_CONFIG)
        if slurm.purge_horizon > min_job_age:
            return check_failed(what, f"[slurm] purge_horizon = {slurm.purge_horizon} s exceeds slurmctld's MinJobAge "
                                f"({min_job_age} s): a job ending and purged before the next pass could run twice",
                          f"set [slurm] purge_horizon to at most {min_job_age}, or use slurmdbd", EX_CONFIG)
        return check_passed(what, f"[slurm] purge_horizon = {slurm.purge_horizon} s, within slurmctld's MinJobAge "
                            f"({min_job_age} s)")

    def head_nodes(self, config: Config, slurm: SlurmBackend) -> CheckLine:
        """Slurm's controllers, the one in charge, and this host's role in passes ([run] role)."""
        what = "head nodes"
        if config.run.role == "always":
            return check_passed(what, "[run] role = always: passes run on this host whichever controller is in charge")
        if any(line.what in ("slurmrestd", "Slurm commands", "slurmctld") and line.status != "ok" for line in self.lines):
            return check_skipped(what, "Slurm")
        try:
            controllers = slurm.controllers()
            active, in_charge = role_of_this_host(controllers, lambda: local_host_names(config.run.host_names))
        except SyncError as exc:
            return check_failed(what, str(exc), failure_fix(exc, {
                ConfigError: "set [run] host_names to this host's name in slurm.conf's SlurmctldHost",
                Unavailable: "start a slurmctld (scontrol ping shows them)",
            }), exc.exit_code)
        if len(controllers) <= 1:
            return check_passed(what, f"one controller, {controllers_text(controllers)}: passes run on this host")
        role = "active: passes run here" if active else "standby: passes do nothing while it is in charge"
        return check_passed(what, f"controllers {controllers_text(controllers)}; in charge: {in_charge.hostname if in_charge else '?'}; "
                            f"this host is {role}")

    def state_directory(self, config: Config) -> None:
        what = "state directory and lock"
        state_dir, lock_file = config.run.state_dir, config.run.lock_file
        try:
            prepare_state_dir(state_dir)  # as a pass would: created 0700 when missing
            with tempfile.TemporaryFile(dir=state_dir):  # unnamed on Linux, gone when closed
                pass
        except ConfigError as exc:
            self.lines.append(check_failed(what, str(exc), "a pass needs it owned by root with mode 0700, below directories "
                                     "only root can write to", EX_CONFIG))
            return
        except OSError as exc:
            self.lines.append(check_failed(what, f"[run] state_dir {state_dir}: not writable: {exc.strerror}",
                                     "make it writable by root (is its file system read-only?)", EX_CONFIG))
            return
        try:
            with RunLock(lock_file):
                held = "taken and released"
        except LockHeld:
            held = "held: a pass is running"
        except ConfigError as exc:
            self.lines.append(check_failed(what, str(exc), "[run] lock_file must be a file root can create and lock, "
                                     "in a directory only root can write to", EX_CONFIG))
            return
        self.lines.append(check_passed(what, f"{state_dir} (0700, writable); lock {lock_file} {held}"))

    def ldap_directory(self, config: Config) -> Optional[UserMapper]:
        """For the ldap mapper, its line (TLS, bind, the base entry read) and the mapper that has
        connected (None when it failed); for the other mappers, a new mapper and no line."""
        mapper = UserMapper(config)  # no LDAP cache: the directory itself is checked
        if mapper.directory is None:
            return mapper
        what = "LDAP directory"
        try:
            self.lines.append(check_passed(what, mapper.directory.probe()))
        except SyncError as exc:
            self.lines.append(check_failed(what, str(exc), failure_fix(exc, {
                AuthError: "check [mapper] ldap_bind_dn and the password in ldap_password_file",
                ConfigError: "fix the [mapper] ldap_* setting it names (ldap_ca_file must hold the CA that signed "
                             "the server's certificate)",
                Unavailable: "check [mapper] ldap_url and that the LDAP server is running",
            }), exc.exit_code))
            return None
        return mapper

    def mapped_user(self, config: Config, mapper: Optional[UserMapper]) -> Union[LocalUser, CheckLine, None]:
        """The account --email maps to, or the line saying why it maps to none; None without --email."""
        if not self.email:
            return None
        what = f"user mapping of {self.email}"
        if mapper is None:
            return check_skipped(what, "LDAP directory")
        try:
            return mapper.user_for(self.email)
        except Rejection as exc:
            return check_failed(what, str(exc), MAPPER_FIXES[config.mapper.type], EX_NOUSER)
        except SyncError as exc:
            return check_failed(what, str(exc), "fix the [mapper] settings it names", exc.exit_code)

    def mapping_line(self, config: Config, user: LocalUser) -> CheckLine:
        what = f"user mapping of {self.email}"
        try:
            directory = resolve_execution_directory(None, config.submit.execution_directory, user)
        except Rejection as exc:
            return check_failed(what, str(exc), "fix [submit] execution_directory", EX_CONFIG)
        return check_passed(what, f"user {user.name} (uid {user.uid}), home {user.home}, execution directory {directory} "
                            f"(unless the submission names one)")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def summary_line(summary: PassSummary, exit_code: int, duration: float, dry_run: bool) -> str:
    if summary.standby:
        return (f"pass finished{' (dry run)' if dry_run else ''}: standby: {summary.standby}; nothing done: "
                f"exit_code={exit_code} duration={duration:.2f}s")
    return (f"pass finished{' (dry run)' if dry_run else ''}: exit_code={exit_code} submitted={summary.submitted} "
            f"rejected={summary.rejected} updated={summary.updated} cancelled={summary.cancelled} "
            f"errors={summary.errors}"
            f"{'' if summary.influxdb_failures is None else f' influxdb_failures={summary.influxdb_failures}'}"
            f" duration={duration:.2f}s")


def pass_summary_record(summary: PassSummary, exit_code: int, duration: float, dry_run: bool,
                        entries: Optional[int]) -> logging.LogRecord:
    return log.makeRecord(
        log.name, logging.INFO if exit_code == EXIT_OK else logging.WARNING,  # -q still shows how a failed pass ended
        __file__, 0, "%s", (summary_line(summary, exit_code, duration, dry_run),), None,
        extra={"exit_code": exit_code, "submitted": summary.submitted, "rejected": summary.rejected,
               "updated": summary.updated, "cancelled": summary.cancelled, "errors": summary.errors,
               "influxdb_failures": summary.influxdb_failures, "journal_entries": entries,
               "duration_s": round(duration, 3), "dry_run": dry_run,
               **({"standby": summary.standby} if summary.standby else {})},
    )


def start_watchdog(config: Config, started: float, dry_run: bool, summary: Callable[[], PassSummary]) -> threading.Timer:
    """End the process WATCHDOG_GRACE_SECONDS after the deadline, whatever it is waiting for, so that the lock
    is never held longer: the summary line is logged and the exit code is EX_UNAVAILABLE (something did not
    answer). The monitoring outputs are not written (they could be what hangs): a missing ping alerts."""
    limit = config.run.deadline + WATCHDOG_GRACE_SECONDS

    def end_the_pass() -> None:
        log.error("the pass is still running %g s after it started, %g s past its %d s deadline; the watchdog ends it",
                  limit, WATCHDOG_GRACE_SECONDS, config.run.deadline)
        log.handle(pass_summary_record(summary(), EX_UNAVAILABLE, time.monotonic() - started, dry_run, None))
        os._exit(EX_UNAVAILABLE)

    watchdog = threading.Timer(limit - (time.monotonic() - started), end_the_pass)
    watchdog.name, watchdog.daemon = "watchdog", True
    watchdog.start()
    return watchdog


def run_once(config: Config, dry_run: bool) -> int:
    """One pass. Whatever happens in it, its last log line is the summary, with the exit code;
    the monitoring outputs (textfile, ping) are written just before it, never in a dry run."""
    started = time.monotonic()
    summary, journal = PassSummary(), None
    watchdog = start_watchdog(config, started, dry_run, lambda: summary)
    monitor, tail = Monitor(config.metrics, enabled=not dry_run), LogTail.attach(PING_TAIL_LINES)
    monitor.start()
    try:
        deadline = Deadline(config.run.deadline)
        http = Http(deadline, config.run.retries, config.run.backoff, config.run.workers)
        state_dir = config.run.state_dir
        journal_path = os.path.join(state_dir, "journal.sqlite3")
        token = OidcToken(config, http, os.path.join(state_dir, "token.json"), write_cache=not dry_run)
        slurm: SlurmBackend = (SlurmCommands(config) if config.slurm.backend == "sbatch" else
                               SlurmRest(config, http, os.path.join(state_dir, "slurmrestd.json"), remember=not dry_run,
                                         states_path=os.path.join(state_dir, "slurm-jobs.json")))
        role = HostRole(config, slurm, write=not dry_run)
        settle = role.take(journal_path)  # Standby: another head node's controller is in charge
        journal = Journal.scratch_copy_of(journal_path) if dry_run else Journal(journal_path)
        sync = SyncPass(config, JobbergateApi(config, http, token), slurm, journal,
                        UserMapper(config, ldap_cache=None if dry_run else os.path.join(state_dir, LDAP_CACHE_FILE)),
                        deadline, dry_run=dry_run, settle_created=role.settled if settle else None)
        summary = sync.summary
        exit_code = sync.run().exit_code()
    except Standby as exc:
        summary.standby, exit_code = str(exc), EXIT_OK
    except SyncError as exc:  # authentication or configuration: the pass ends here
        log.error("pass ended: %s", exc)
        exit_code = exc.exit_code
    except Exception:
        log.exception("internal error; please report it with this log")
        exit_code = EX_SOFTWARE
    except BaseException:  # an interrupt (or a test's stand-in for SIGKILL): the watchdog goes with the pass
        watchdog.cancel()
        raise
    entries = None
    with contextlib.suppress(sqlite3.Error, AttributeError):
        entries = journal.size()  # type: ignore[union-attr]
    duration = time.monotonic() - started
    summary_record = pass_summary_record(summary, exit_code, duration, dry_run, entries)
    try:
        monitor.finish(PassRecord(exit_code, summary, time.time(), duration, entries),
                       [*tail.lines, tail.format(summary_record)])
    except Exception:  # a bug in the monitoring still leaves the pass's exit code alone
        log.warning("monitoring failed; the pass is not affected", exc_info=True)
    finally:
        tail.detach()
    watchdog.cancel()
    if log.isEnabledFor(summary_record.levelno):
        log.handle(summary_record)
    return exit_code


@click.group(epilog=exit_codes_help("pass"), context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True, subcommand_metavar="[check [--email ADDRESS]]")
@click.option("--once", is_flag=True, help="Run one pass and exit (also the default; for readable crontabs).")
@click.option("--config", "config_path", envvar=ENV_CONFIG, default=DEFAULT_CONFIG_PATH, show_default=True,
              help=f"INI configuration file (or ${ENV_CONFIG}).")
@click.option("--dry-run", is_flag=True, help="Fetch and plan; print what would be done; change nothing anywhere.")
@click.option("--check-config", is_flag=True, help="Validate the configuration and secrets, then exit.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS),
              help="auto: text on a terminal, JSON lines elsewhere; or always json or text (default: [logging] format).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors: silent when all went well (for cron).")
@click.version_option(__version__, prog_name="jobbergate-sync")
@click.pass_context
def cli(context: click.Context, once: bool, config_path: str, dry_run: bool, check_config: bool,
        log_format: Optional[str], verbose: bool, quiet: bool) -> Optional[int]:
    """Submit this cluster's pending Jobbergate job submissions to Slurm (through slurmrestd or
    Slurm's own commands), report the state of active ones, and exit. Meant to run every minute from cron or a
    systemd timer. `jobbergate-sync check` tests the set-up instead (see its --help)."""
    if context.invoked_subcommand:
        if once or dry_run or check_config or quiet:
            raise click.UsageError(f"--once, --dry-run, --check-config and -q do not go with "
                                   f"{context.invoked_subcommand}")
        return None
    setup_logging(log_format or "auto", "warning" if quiet else "info")
    try:
        config = load_config(config_path, os.environ)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return EX_CONFIG
    level = "debug" if verbose else "warning" if quiet else config.logging.level
    try:
        setup_logging(log_format or config.logging.format, level, config.logging.file)
    except OSError as exc:
        log.error("bad configuration: [logging] file %s: %s", config.logging.file, exc.strerror)
        return EX_CONFIG
    if check_config:
        click.echo(f"{config_path}: configuration is valid")
        return EXIT_OK
    try:
        if dry_run:  # reads the state directory, when there is one, and creates nothing
            if os.path.lexists(config.run.state_dir):
                require_own_directory(config.run.state_dir, "[run] state_dir", 0o077, "chmod 0700 it")
            return run_once(config, dry_run=True)
        prepare_state_dir(config.run.state_dir)
        with RunLock(config.run.lock_file):
            return run_once(config, dry_run=False)
    except LockHeld as exc:
        log.info("%s", exc)
        return exc.exit_code
    except SyncError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("internal error; please report it with this log")
        return EX_SOFTWARE


@cli.command(epilog=exit_codes_help("check"), short_help="Test the set-up against every peer, changing nothing.")
@click.option("--config", "config_path", envvar=ENV_CONFIG, default=None,
              help=f"INI configuration file (or ${ENV_CONFIG}; default {DEFAULT_CONFIG_PATH}).")
@click.option("--email", help="Also show what this Jobbergate user maps to, and ping slurmrestd as that user.")
@click.option("-v", "--verbose", is_flag=True, help="Log every exchange on stderr.")
@click.pass_context
def check(context: click.Context, config_path: Optional[str], email: Optional[str], verbose: bool) -> int:
    """Check the set-up: the configuration and secrets, a token from the OIDC issuer and its
    permissions, the API's agent endpoints, slurmrestd and its API versions, slurmdbd, a Slurm token
    for the query user (and the --email user), the state directory and lock, and the user mapping.
    One line per check on stdout: ok, FAIL (with how to fix it) or skip. Nothing is submitted,
    reported or written but what a pass creates anyway (the state directory and lock file)."""
    parent = context.parent.params if context.parent else {}
    config_path = config_path or parent.get("config_path") or DEFAULT_CONFIG_PATH
    setup_logging(parent.get("log_format") or "text", "debug" if verbose or parent.get("verbose") else "critical")
    try:
        lines = Check(config_path, email, os.environ).run()
    except Exception:
        log.critical("internal error; please report it with this traceback", exc_info=True)
        return EX_SOFTWARE
    for line in lines:
        click.echo(check_line_text(line))
    return check_exit_code(lines)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="jobbergate-sync", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return EX_USAGE
    except click.Abort:
        return EX_SOFTWARE
    return result if isinstance(result, int) else EXIT_OK


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
