#!/usr/bin/env python3
"""Prints what one owner lookup of the ldap mapper costs against the integration stack's OpenLDAP
(LDAPS, the stack's test CA, the read-only bind DN). Figures, not asserts.

Needs the stack up (`bash tests/integration/stack.sh up`) and the package installed in .venv with
its test extra (which brings ldap3):

    .venv/bin/python bench/ldap_benchmark.py [--lookups 200]

It times the first lookup of a pass (TLS connect, bind, search), later lookups on the connection
the pass keeps open, and lookups answered from the cache a previous pass wrote.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import jobbergate_sync  # noqa: E402
import provenance  # noqa: E402
from config_files import write_secret  # noqa: E402
from helpers import get_stack  # noqa: E402

EMAIL = "alice@example.com"


def mapper(ldap: dict[str, str], password_file: str, cache: Optional[Path]) -> jobbergate_sync.UserMapper:
    settings = {key: setting.default for key, setting in jobbergate_sync.CONFIG_SCHEMA["mapper"].items()}
    settings.update(type="ldap", ldap_url=ldap["url"], ldap_ca_file=ldap["ca_file"], ldap_bind_dn=ldap["bind_dn"],
                    ldap_password_file=password_file, ldap_base_dn=ldap["base_dn"])
    config = jobbergate_sync.Config({"mapper": settings}, client_secret="", slurm_jwt_key=None,
                                    slurm_static_token=None, ldap_password=ldap["bind_password"])
    return jobbergate_sync.UserMapper(config, ldap_cache=str(cache) if cache else None)


def seconds_each(ask: jobbergate_sync.UserMapper, lookups: int) -> float:
    began = time.perf_counter()
    for _ in range(lookups):
        ask.username_for(EMAIL)
    return (time.perf_counter() - began) / lookups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=200)
    arguments = parser.parse_args()
    provenance.print_header()
    ldap = get_stack().ldap
    with tempfile.TemporaryDirectory() as directory:
        password_file = write_secret(Path(directory) / "ldap_password", ldap["bind_password"].encode())
        cache = Path(directory) / "ldap-cache.json"
        fresh = mapper(ldap, password_file, cache=None)
        first = seconds_each(fresh, 1)
        later = seconds_each(fresh, arguments.lookups)
        mapper(ldap, password_file, cache).username_for(EMAIL)  # a previous pass fills the cache
        cached = seconds_each(mapper(ldap, password_file, cache), arguments.lookups)
    print(f"ldap mapper, {ldap['url']}: first lookup of a pass (TLS connect, bind, search) {first * 1000:.1f} ms; "
          f"later lookups on its connection {later * 1000:.2f} ms each; from the cache {cached * 1000:.3f} ms each "
          f"({arguments.lookups} lookups each)")


if __name__ == "__main__":
    main()
