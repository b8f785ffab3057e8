"""Every code block of README.md and docs/*.md runs, so the docs cannot drift from the code.

A page runs as one script, its blocks in order, in a temporary folder of its own:
```python blocks share one namespace (a block can use what an earlier one made), ```bash
blocks run with bash -euo pipefail (``actstore`` is ``python -m actstore`` of this checkout,
``python`` this interpreter), and a block right after ``<!-- file: NAME -->`` is written to NAME
(a ```json pairs file that a later command reads). ```text blocks (output, trees, formats) are
not run. A bash block made only of plain ``actstore ...`` commands (no pipes, redirections,
variables or other programs) runs them in this process, ``actstore.cli.main(argv)`` one after
the other, stopping at the first non-zero exit, as bash -e would: the same program without a
Python start-up (torch, transformers) per command, which keeps the whole file near a minute.
A block that cannot run here (the hub, a GPU, a cluster launcher, the long set-up
commands) follows ``<!-- no-test: REASON -->``; the reason is required, and so is a language
on every fence.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "bash"}
NOT_RUN = {"text", "json", "yaml", "toml"}
MARKER = re.compile(r"^<!--\s*(no-test|file)\s*:?(.*?)-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    no_test: str | None = None  # the reason, when marked
    file: str | None = None  # write the block to this file instead of running it


def parse(text: str, name: str = "<page>") -> list[Block]:
    """The fenced blocks of a Markdown page, with the marker (if any) on the line before each.
    Raises ValueError for a fence without a language, an unknown language, a marker without a
    reason or a file name, a marker not followed by a block, or an unclosed fence."""
    lines = text.splitlines()
    blocks, marker, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = MARKER.match(line.strip())
        if m:
            kind, arg = m.group(1), m.group(2).strip()
            if not arg:
                raise ValueError(
                    f"{name}:{i + 1}: <!-- {kind}: ... --> needs a {'reason' if kind == 'no-test' else 'file name'}"
                )
            marker = (kind, arg, i + 1)
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            lang = f.group(1)
            if not lang:
                raise ValueError(
                    f"{name}:{i + 1}: a code block without a language; use ```python, ```bash or ```text"
                )
            if lang not in RUN | NOT_RUN:
                raise ValueError(
                    f"{name}:{i + 1}: unknown block language {lang!r}; expected one of {sorted(RUN | NOT_RUN)}"
                )
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"{name}:{i + 1}: unclosed code block")
            block = Block(lang, "\n".join(lines[i + 1 : end]) + "\n", i + 1)
            if marker:
                setattr(block, "no_test" if marker[0] == "no-test" else "file", marker[1])
                marker = None
            blocks.append(block)
            i = end + 1
            continue
        if marker and line.strip():
            raise ValueError(
                f"{name}:{marker[2]}: <!-- {marker[0]}: ... --> must come right before a code block"
            )
        i += 1
    if marker:
        raise ValueError(
            f"{name}:{marker[2]}: <!-- {marker[0]}: ... --> must come right before a code block"
        )
    return blocks


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


BASH_PRELUDE = f'actstore() {{ "{sys.executable}" -m actstore "$@"; }}\npython() {{ "{sys.executable}" "$@"; }}\n'


def actstore_commands(code: str) -> list[list[str]] | None:
    """The argv of each command when a bash block is only ``actstore ...`` commands (comments and
    backslash continuations allowed); None when anything else is in it."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        if not tokens:
            continue
        if tokens[0] != "actstore" or any(
            set(t) <= set("();<>|&") or "$" in t or "`" in t for t in tokens
        ):
            return None
        commands.append(tokens[1:])
    return commands


def _run_in_process(commands: list[list[str]]) -> tuple[int, str]:
    from actstore.cli import main

    out = io.StringIO()
    for argv in commands:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: a bad flag, --help
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if rc:
            return rc, f"actstore {shlex.join(argv)}\n" + out.getvalue()[-3000:]
    return 0, ""


def run_page(text: str, workdir: Path, name: str = "<page>") -> int:
    """Run every runnable block of a page in workdir, in order; returns how many ran.
    Raises AssertionError naming the page and line of the first block that fails."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    old = Path.cwd()
    os.chdir(workdir)
    try:
        for block in parse(text, name):
            if block.file:
                (workdir / block.file).write_text(block.code)
                continue
            if block.no_test or block.lang not in RUN:
                continue
            where = f"{name}:{block.line}"
            if block.lang == "python":
                try:
                    exec(compile(block.code, where, "exec"), namespace)
                except Exception as e:
                    raise AssertionError(
                        f"{where}: the python block failed: {type(e).__name__}: {e}\n{block.code}"
                    ) from e
            elif (commands := actstore_commands(block.code)) is not None:
                rc, output = _run_in_process(commands)
                if rc:
                    raise AssertionError(
                        f"{where}: the bash block exited {rc}\n{block.code}\n--- output\n{output}"
                    )
            else:
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", BASH_PRELUDE + block.code],
                    cwd=workdir,
                    env=_env(),
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if done.returncode:
                    raise AssertionError(
                        f"{where}: the bash block exited {done.returncode}\n{block.code}\n"
                        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
                    )
            ran += 1
    finally:
        os.chdir(old)
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_page(page.read_text(), tmp_path, str(page.relative_to(ROOT)))


def test_docs_exist_and_markers_are_few():
    assert (ROOT / "docs" / "index.md").exists() and (ROOT / "mkdocs.yml").exists()
    blocks = [(p, b) for p in PAGES for b in parse(p.read_text(), p.name)]
    runnable = [b for _, b in blocks if b.lang in RUN]
    skipped = [(p.name, b.line, b.no_test) for p, b in blocks if b.no_test]
    assert all(reason for _, _, reason in skipped)
    assert len(skipped) <= len(runnable) // 2, f"most blocks should run; skipped: {skipped}"


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in PAGES[1:] if p.name not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).is_file() for link in links), [
        link for link in links if not (ROOT / link).is_file()
    ]


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first = next(b for b in parse(text, "README.md") if b.lang == "bash")
    assert first.code.splitlines()[:2] == [
        "bash scripts/demo.sh     # the main job on the embedded default, then a short tour (under a minute once set up)",
        "bash scripts/test.sh     # the test suite (CPU, about 15 minutes on 2 cores with its 2 workers)",
    ]
    assert len(text.splitlines()) <= 330, (
        "the README is a landing page; the detail belongs in docs/"
    )


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        (tmp_path / "site" / "api" / "index.html")
        .read_text()
        .count('id="actstore.patching.get_act_patch_resid_pre"')
    )


# The runner itself must be able to fail.


def test_a_broken_python_block_fails(tmp_path):
    page = "# p\n\n```python\nx = 1\n```\n\n```python\nassert x == 2, 'x is not 2'\n```\n"
    with pytest.raises(
        AssertionError, match=r"<page>:7: the python block failed: AssertionError: x is not 2"
    ):
        run_page(page, tmp_path)


def test_a_broken_bash_block_fails(tmp_path):
    page = "```bash\nactstore info missing.zarr\n```\n"  # in this process
    with pytest.raises(
        AssertionError, match=r"<page>:1: the bash block exited 2(.|\n)*No store at 'missing.zarr'"
    ):
        run_page(page, tmp_path)
    with pytest.raises(
        AssertionError, match=r"<page>:1: the bash block exited 2(.|\n)*No store at 'missing.zarr'"
    ):
        run_page("```bash\nactstore info missing.zarr | cat\n```\n", tmp_path)  # with bash
    with pytest.raises(AssertionError, match=r"exited 2(.|\n)*invalid choice"):  # argparse's exit
        run_page("```bash\nactstore info --help\nactstore nonexistent-command\n```\n", tmp_path)
    # -e: a failing line in the middle fails the block
    with pytest.raises(AssertionError, match="exited"):
        run_page("```bash\nfalse\necho ok\n```\n", tmp_path)


def test_marked_and_text_blocks_are_not_run_and_files_are_written(tmp_path):
    page = (
        "<!-- no-test: needs the hub -->\n```bash\nexit 3\n```\n\n```text\nnot code\n```\n\n"
        '<!-- file: pairs.jsonl -->\n```json\n{"a": 1}\n```\n\n```bash\ntest -s pairs.jsonl\n```\n'
        "```python\nassert open('pairs.jsonl').read() == '{\"a\": 1}\\n'\n```\n"
    )
    assert run_page(page, tmp_path) == 2


def test_only_plain_actstore_commands_run_in_process():
    assert actstore_commands(
        "actstore cache a.zarr \\\n    --sites resid_post:0  # c\n\n# note\nactstore info a.zarr\n"
    ) == [["cache", "a.zarr", "--sites", "resid_post:0"], ["info", "a.zarr"]]
    assert actstore_commands(
        'actstore analyze dla t.zarr --target " Mary"  # optional: --pos P\n'
    ) == [["analyze", "dla", "t.zarr", "--target", " Mary"]]
    for code in [
        "actstore info a.zarr | head\n",
        "actstore info a.zarr > x\n",
        "actstore info $X\n",
        "python x.py\n",
        "actstore info a && ls\n",
        "if actstore info m; then exit 1; fi\n",
    ]:
        assert actstore_commands(code) is None, code


@pytest.mark.parametrize(
    "page, error",
    [
        ("<!-- no-test: -->\n```bash\nexit 3\n```\n", "needs a reason"),
        ("<!-- no-test -->\n```bash\nexit 3\n```\n", "needs a reason"),
        ("<!-- no-test: hub -->\n\ntext\n```bash\nexit 3\n```\n", "right before a code block"),
        ("```\nls\n```\n", "without a language"),
        ("```sh\nls\n```\n", "unknown block language"),
        ("```python\nx = 1\n", "unclosed"),
    ],
)
def test_bad_markup_is_refused(page, error):
    with pytest.raises(ValueError, match=error):
        parse(page)
