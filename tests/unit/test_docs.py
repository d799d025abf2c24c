"""The README and docs/ cannot go stale: every `metatrain` command in a bash block parses with the real
argument parser and the config or sweep file it names loads and validates with its overrides; every
`--set` key is a config key and every config key is documented; every relative link resolves; the
README stays short, keeps its headline-table markers and the quick start that the Makefile and CI run.
No Ray, no training: configs are validated as `metatrain submit` validates them (local=False: data
paths are checked where the run happens, so these checks do not need the data sets)."""
import argparse
import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import _placement, build_parser
from pipeline.config import Config, load_config
from pipeline.sweeps.spec import load_sweep
from pipeline.yaml_dataclasses import field_types

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: tests/unit/)
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 260
HEADLINE = ("<!-- headline:begin -->", "<!-- headline:end -->")
# Stand-ins for what an earlier command creates or the reader chooses (RUN_DIR, SWEEP_DIR, FILE, ...).
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|<[^>]*>")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SET_KEY = re.compile(r"--set[ =]['\"]?([a-z_][a-z0-9_.]*)=")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """(line number of the first line inside the fence, body) of every ```lang block of a page."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def shell_lines(body: str, first: int) -> list[tuple[int, str]]:
    """Logical lines of a shell block: backslash continuations joined, numbered by their first line."""
    out, pending, start = [], "", first
    for i, line in enumerate(body.splitlines(), first):
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def commands(lang: str = "bash") -> list[tuple[str, list[str]]]:
    """("page:line", argv after `metatrain`) of every line of a ```lang block that starts with `metatrain `."""
    found = []
    for page in PAGES:
        for first, body in blocks(page, lang):
            for n, line in shell_lines(body, first):
                if line.strip().startswith("metatrain "):
                    found.append((f"{rel(page)}:{n}", shlex.split(line.strip(), comments=True)[1:]))
    return found


COMMANDS = commands()


def parse(argv: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"metatrain {shlex.join(argv)}: the argument parser refuses it: {err.getvalue().strip()}")


def config_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the experiment schema (what `--set` and a config file accept)."""
    keys = []
    for name, tp in field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += config_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_the_docs_have_commands_to_check():
    """The checks below are not vacuous: the README shows each command a newcomer needs."""
    shown = {argv[0] for where, argv in COMMANDS if where.startswith("README.md")}
    assert {"train", "eval", "adapt", "export", "sweep", "report", "submit"} <= shown, shown
    assert len(COMMANDS) >= 30, len(COMMANDS)


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses_and_its_config_loads(where, argv):
    args = parse(argv)
    command = args.command if args.command != "submit" else args.kind
    if command not in ("train", "sweep"):
        return
    config = args.config if args.command != "sweep" else args.sweep
    if PLACEHOLDER.search(config):
        return
    if command == "train":  # as cmd_train loads it (--set, then --workers/--address/--local); submit: --set only
        placement = _placement(args) if args.command == "train" else []
        load_config(config, [*args.set, *placement], local=False)
    else:
        assert not getattr(args, "set", []), f"{where}: a sweep takes its overrides from the sweep file, not --set"
        load_sweep(config, local=False)


def test_the_command_synopsis_names_real_options():
    """The README's synopsis (a ```text block: it has [optional] parts) names only real subcommands and options."""
    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    lines = commands("text")
    assert {argv[0] for _, argv in lines} >= {"train", "eval", "adapt", "export", "resume", "sweep", "report",
                                               "data", "submit", "jobs"}
    for where, argv in lines:
        parser = subs.get(argv[0])
        assert parser is not None, f"{where}: no subcommand {argv[0]!r}"
        if argv[0] == "data":
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[1]]
        options = {s for a in parser._actions for s in a.option_strings}
        for word in argv:
            for option in re.findall(r"--[a-z][a-z-]*", word):
                assert option in options, f"{where}: metatrain {argv[0]} has no option {option}"


def test_every_set_key_in_the_docs_is_a_config_key():
    keys = set(config_keys())
    seen = []
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for key in SET_KEY.findall(line):
                seen.append(key)
                assert key in keys, f"{rel(page)}:{n}: --set {key}=...: not a config key (see pipeline/config.py)"
    assert len(seen) >= 10, seen


def test_every_config_key_is_documented():
    text = (ROOT / "docs" / "configs.md").read_text()
    missing = [k for k in config_keys() if f"`{k}`" not in text]
    assert not missing, f"docs/configs.md does not list these config keys: {missing}"


def test_the_sweep_file_example_loads(tmp_path):
    """The annotated sweep file in docs/sweeps.md is a valid sweep file."""
    examples = [body for _, body in blocks(ROOT / "docs" / "sweeps.md", "yaml") if "space:" in body]
    assert examples
    for i, body in enumerate(examples):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(body)
        load_sweep(path, local=False)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve()
            if not dest.exists():
                broken.append(f"{rel(page)}: {target} (no such file)")
            elif fragment and dest in PAGES and fragment not in anchors(dest):
                broken.append(f"{rel(page)}: {target} (no heading #{fragment} in {rel(dest)})")
    assert not broken, broken


def test_every_named_section_of_a_linked_page_exists():
    """`[benchmarks/RESULTS.md](../benchmarks/RESULTS.md), "Engine"` names a section of that file: a heading
    of it must start with the name (results are linked, not retyped, so the link must lead to them)."""
    stale = []
    for page in PAGES:
        text = re.sub(r"\s+", " ", FENCE.sub("", page.read_text()))
        for target, section in re.findall(r"\]\(([^)#\s]+\.md)\), \"([^\"]+)\"", text):
            dest = (page.parent / target).resolve()
            headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.M) if dest.is_file() else []
            if not any(h.strip().startswith(section) for h in headings):
                stale.append(f"{rel(page)}: {target}, \"{section}\"")
    assert not stale, f"no such section: {stale}"


def test_the_readme_is_short_and_keeps_its_headline_markers():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    begin, end = (text.find(m) for m in HEADLINE)
    assert 0 <= begin < end, "README.md: the headline table markers are missing or out of order"
    assert "(benchmarks/RESULTS.md)" in text[end:], "README.md: no link to benchmarks/RESULTS.md after the table"
    for page in DOCS:  # every docs page is on the README's map
        assert f"(docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


def test_the_quick_start_is_what_the_makefile_and_ci_run():
    """The README's first bash block is two make targets; CI (.ci/run) runs the test one."""
    _, body = blocks(README, "bash")[0]
    targets = [line.split("#")[0].split() for line in body.splitlines() if line.strip()]
    assert [t[0] for t in targets] == ["make", "make"] and [t[1] for t in targets] == ["run", "test"], targets
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile: no {target} target"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci, ".ci/run does not run the README's test command"


def test_the_readme_headline_table_is_generated_from_the_results_page():
    """README quotes benchmarks/RESULTS.md's headline table (benchmarks/headline.py), not a retyped copy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("headline", ROOT / "benchmarks" / "headline.py")
    headline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headline)
    assert headline.main(["--check"]) == 0, "run `python benchmarks/headline.py`"
