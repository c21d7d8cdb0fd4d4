"""The configuration file of a benchmark run against the fakes of tests/fakes.py (no servers): the
fakes' URLs and client, a client secret and a slurmrestd JWT key written beside it, and the state
directory and lock in the same directory. `extra` adds sections ([submit], [influxdb], ...) and may
repeat one of these to add keys to it."""

from __future__ import annotations

import configparser
from pathlib import Path

from fakes import API, CLIENT_ID, CLIENT_SECRET, ISSUER, SLURM

JWT_KEY = b"benchmark-key-of-thirty-two-byte"


def write_fake_stack_config(directory: Path, extra: dict[str, dict[str, object]]) -> str:
    for name, data in (("secret", CLIENT_SECRET.encode()), ("key", JWT_KEY)):
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({
        "jobbergate": {"api_url": API},
        "oidc": {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret_file": str(directory / "secret")},
        "slurmrestd": {"url": SLURM, "jwt_key_file": str(directory / "key")},
        "mapper": {"min_uid": "1", "domains": "example.com"},
        "run": {"state_dir": str(directory / "state"), "lock_file": str(directory / "lock")},
    })
    parser.read_dict({section: {key: str(value) for key, value in keys.items()} for section, keys in extra.items()})
    config = directory / "config.ini"
    with open(config, "w") as handle:
        parser.write(handle)
    config.chmod(0o600)
    (directory / "state").mkdir(mode=0o700, exist_ok=True)
    return str(config)
