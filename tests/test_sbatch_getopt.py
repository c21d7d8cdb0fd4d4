"""sbatch's own option parsing, reproduced by the sbatch backend: the getopt_long table each release's
sbatch holds (tests/fixtures/sbatch/<version>/getopt.json, read from the real sbatch of the
integration stack by tests/fixtures/sbatch/getopt/probe_getopt.py, and Slurm's development head in
sbatch_opts_head.h), glibc's getopt_long itself as an oracle (sbatch_getopt.c, built here when a C
compiler and glibc are present), and every spelling of a refused option."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobbergate_sync import (
    SBATCH_CHECKED_OPTIONS,
    SBATCH_LONG_OPTIONS,
    SBATCH_SHORT_OPTIONS,
    Rejection,
    build_sbatch_request,
    canonical_sbatch_word,
    sbatch_getopt,
    sbatch_options,
)
from properties import examples

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sbatch"
RELEASES = ("22.05", "24.11", "25.11")
KINDS = ("none", "required", "optional")
Parse = Optional[tuple[list[tuple[str, Optional[str]]], list[str]]]  # None: getopt reported an error


def release_table(version: str) -> dict[str, dict[str, str]]:
    return json.loads((FIXTURES / version / "getopt.json").read_text())


def head_entries() -> list[tuple[str, str, int]]:
    """(name, kind, getopt value) of each option in Slurm's development head."""
    text = (FIXTURES / "getopt" / "sbatch_opts_head.h").read_text()
    return [(name, KINDS[int(kind)], int(value)) for name, kind, value in re.findall(r'\{"([a-z-]+)", (\d), 0, (\d+)\}', text)]


# ------------------------------------------------------------------------------------------ the table

@pytest.mark.parametrize("version", RELEASES)
def test_every_long_option_of_each_release_is_known_with_what_it_takes(version):
    for name, kind in release_table(version)["long"].items():
        ours = SBATCH_LONG_OPTIONS.get(name)
        # none and optional differ only in whether --name=value is an error: neither takes the next word
        assert ours == kind or (ours == "optional" and kind == "none"), (name, kind, ours)


def test_an_option_taking_a_value_on_some_release_only_is_optional_here():
    kinds: dict[str, set[str]] = {}
    for version in RELEASES:
        for name, kind in release_table(version)["long"].items():
            kinds.setdefault(name, set()).add(kind)
    changed = {name for name, seen in kinds.items() if len(seen) > 1}
    assert changed == {"requeue", "get-user-env"}
    assert all(SBATCH_LONG_OPTIONS[name] == "optional" for name in changed)


def test_the_table_holds_every_option_of_the_releases_and_of_slurms_head_and_nothing_else():
    known = {name for name, _, _ in head_entries()}.union(*(release_table(version)["long"] for version in RELEASES))
    assert set(SBATCH_LONG_OPTIONS) == known
    assert all(SBATCH_LONG_OPTIONS[name] == kind for name, kind, _ in head_entries() if name != "get-user-env")


@pytest.mark.parametrize("version", RELEASES)
def test_the_short_letters_are_each_releases(version):
    letters = release_table(version)["short"]
    assert set(letters) == set(SBATCH_SHORT_OPTIONS)
    for letter, kind in letters.items():
        ours = SBATCH_LONG_OPTIONS[SBATCH_SHORT_OPTIONS[letter]]
        assert ours == kind or (kind == "optional or exits at once" and ours != "required"), letter


def test_each_short_letter_is_the_same_option_as_in_slurms_table():
    assert SBATCH_SHORT_OPTIONS == {chr(value): name for name, _, value in head_entries() if value < 128}


# ------------------------------------------------------------------------ glibc's getopt_long as oracle

def header_of_the_tools_table() -> str:
    """sbatch_opts.h for sbatch_getopt.c, made of this tool's table: glibc then parses with it."""
    letters = {name: letter for letter, name in SBATCH_SHORT_OPTIONS.items()}
    optstring = "+" + "".join(letter + ":" * KINDS.index(SBATCH_LONG_OPTIONS[name]) for letter, name in SBATCH_SHORT_OPTIONS.items())
    entries = [f'  {{"{name}", {KINDS.index(kind)}, 0, {ord(letters[name]) if name in letters else 1000 + index}}},'
               for index, (name, kind) in enumerate(SBATCH_LONG_OPTIONS.items())]
    return (f'static const char *OPTSTRING = "{optstring}";\nstatic struct option LONGS[] = {{\n'
            + "\n".join(entries) + "\n  {0, 0, 0, 0}\n};\n")


@pytest.fixture(scope="module")
def glibc_getopt(tmp_path_factory) -> Callable[[list[str]], Parse]:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's getopt_long needs a C compiler and glibc")
    directory = tmp_path_factory.mktemp("getopt")
    shutil.copy(FIXTURES / "getopt" / "sbatch_getopt.c", directory)
    (directory / "sbatch_opts.h").write_text(header_of_the_tools_table())
    subprocess.run([compiler, "-o", str(directory / "sbatch_getopt"), str(directory / "sbatch_getopt.c")], check=True)

    def parse(words: list[str]) -> Parse:
        lines = subprocess.run([str(directory / "sbatch_getopt"), *words], capture_output=True, text=True, check=True).stdout
        options: list[tuple[str, Optional[str]]] = []
        rest: list[str] = []
        for line in lines.split("\n")[:-1]:
            if line.startswith("  option --?"):
                return None
            if line.startswith("  option --"):
                name, equals, value = line[len("  option --"):].partition("=")
                options.append((name, value if equals else None))
            else:
                rest.append(line.split(": ", 1)[1])
        return options, rest
    return parse


def tools_getopt(words: list[str]) -> Parse:
    try:
        return sbatch_getopt(words, "sbatch_arguments")
    except Rejection:
        return None


@pytest.mark.parametrize("words", [
    ["-vW"], ["-sW"], ["-vMother"], ["-QD/tmp/elsewhere"], ["-vM", "other"], ["-HJname", "-t5"], ["-k"], ["-k5", "-v"],
    ["-kv"], ["-vk"], ["--no-kill", "x"], ["--no-kill=x"], ["--wa"], ["--wai"], ["--wait"], ["--test"], ["--clu=x"],
    ["--cluster=x"], ["--clusters", "x"], ["--us"], ["--usa"], ["--u"], ["--ui=0"], ["--exp=ALL"], ["--export-f=x"],
    ["--chdir"], ["--chdir", "--wait"], ["--job-name=", "-v"], ["--", "--wait"], ["-", "--wait"], ["x", "--wait"],
    ["--=x"], ["--"], ["-u"], ["-v-W"], ["-:"], ["-+"], ["--hold=1"], ["--requeue"], ["--requeue=1"], ["--get-user-env=5"],
    ["--extra=x"], ["--ext"], ["-J"], ["--mem", "1G", "--mem-p=2G"], ["--nice", "5"], ["-W", "-M"], [""], ["-Q", ""],
])
def test_the_parse_is_glibcs(glibc_getopt, words):
    assert tools_getopt(words) == glibc_getopt(words)


WORD_PIECES = st.one_of(
    st.sampled_from(["-", "--", "=", "", "x", "/tmp/x", "5", ":", "ALL", *SBATCH_SHORT_OPTIONS, "u", "y", "+"]),
    st.sampled_from(sorted(SBATCH_LONG_OPTIONS)).flatmap(lambda name: st.integers(1, len(name)).map(lambda end: name[:end])),
)
WORDS = st.lists(st.lists(WORD_PIECES, max_size=5).map("".join), max_size=6)


@settings(max_examples=examples(300), deadline=None)
@given(WORDS)
def test_any_words_parse_as_glibcs(glibc_getopt, words):
    assert tools_getopt(words) == glibc_getopt(words)


@settings(max_examples=examples(300), deadline=None)
@given(WORDS)
def test_the_canonical_words_read_back_as_the_same_options(words):
    try:
        options = sbatch_options(words, "sbatch_arguments")
    except Rejection:
        return
    canonical = [canonical_sbatch_word(option) for option in options]
    assert sbatch_getopt(canonical, "sbatch_arguments") == ([(o.spec.name, o.value) for o in options], [])


# ------------------------------------------------------------------------ refused however spelled

REFUSED = [name for name in SBATCH_CHECKED_OPTIONS if name != "export"]  # --export is checked, not refused


def spellings(name: str) -> list[list[str]]:
    """Every way getopt_long reaches option `name`: its unique abbreviations, with the value
    attached or apart, and its short letter, alone or at the end of a cluster."""
    kind = SBATCH_LONG_OPTIONS[name]
    found = []
    for end in range(1, len(name) + 1):
        prefix = name[:end]
        if prefix != name and len([option for option in SBATCH_LONG_OPTIONS if option.startswith(prefix)]) != 1:
            continue
        found += [[f"--{prefix}", "x"]] if kind == "required" else [[f"--{prefix}"]]
        found += [[f"--{prefix}=x"]] if kind != "none" else []
    for letter in (letter for letter, option in SBATCH_SHORT_OPTIONS.items() if option == name):
        found += [[f"-{letter}x"], [f"-v{letter}x"], [f"-s{letter}", "x"]] if kind == "required" else [[f"-{letter}"], [f"-sv{letter}"]]
    return found


@pytest.mark.parametrize("name", REFUSED)
def test_a_refused_option_is_refused_however_spelled_on_the_command_line_and_in_the_block(name):
    assert spellings(name)
    for words in spellings(name):
        with pytest.raises(Rejection, match=f"--{name} is not "):
            build_sbatch_request("#!/bin/bash\ntrue\n", words, "n", "/home/alice", {}, "tag")
        with pytest.raises(Rejection, match=f"--{name} is not "):
            build_sbatch_request(f"#!/bin/bash\n#SBATCH{' '.join(words)}\ntrue\n", (), "n", "/home/alice", {}, "tag")
