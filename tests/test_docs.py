"""The documentation is correct where a machine can tell: README.md stays a front door (<= 12 KB), every
relative link and image in README.md, docs/*.md and the package READMEs points at a file of the
repository, every `vsr ...` command line in their bash blocks names a real subcommand and parses with its
real argparse parser (unknown or abbreviated flags, bad choices and missing required arguments fail),
every Python block compiles, every YAML block parses (the demo and engine examples through their typed
configs), and the README's vsr_index example runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 12_288
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "packages").glob("*/README.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with a list item's indentation removed."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: unclosed code fence")
        blocks.append(Block(path, i + 1, j + 1, lang, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def blocks_of(paths: list[Path], *langs: str) -> list[Block]:
    return [b for p in paths for b in fenced_blocks(p) if b.lang in langs]


def prose(path: Path) -> str:
    """The text of a markdown file without its code blocks and inline code spans."""
    lines = path.read_text().splitlines()
    for block in fenced_blocks(path):
        lines[block.line - 1 : block.end] = [""] * (block.end - block.line + 1)
    return re.sub(r"`[^`\n]*`", "", "\n".join(lines))


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path: Path) -> list[str]:
    targets = [m.group(1) for m in _LINK.finditer(prose(path))]
    targets += re.findall(r"<img[^>]+src=\"([^\"]+)\"", prose(path))
    return [t for t in targets if not re.match(r"^[a-zA-Z][\w+.-]*:", t) and not t.startswith("#")]


# ----------------------------------------------------------------------------------------------------------
# README size and links
# ----------------------------------------------------------------------------------------------------------


def test_readme_is_at_most_12_kb():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material into docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves_to_a_file(path):
    missing = []
    for target in relative_links(path):
        file = (path.parent / target.split("#", 1)[0]).resolve()
        if not file.exists() or not file.is_relative_to(ROOT):
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)}: links to nothing in the repository: {missing}"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert pages, "docs/ holds no pages"
    assert not pages - linked, (
        f"docs pages missing from README's list: {sorted(p.name for p in pages - linked)}"
    )


def test_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](page.md#top) and ![gone](img/none.png), `[code](not/a/link)`, [web](https://x.org)\n"
    )
    assert relative_links(page) == ["page.md#top", "img/none.png"]


# ----------------------------------------------------------------------------------------------------------
# `vsr` command lines in bash blocks
# ----------------------------------------------------------------------------------------------------------

_SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}


def shell_commands(script: str) -> list[tuple[int, list[str]]]:
    """Simple commands of a shell script with the 0-based line each starts on: continuation lines
    joined, comments dropped, split at `&&`, `||`, `;`, `|` and `&`."""
    commands = []
    lines = script.splitlines()
    start = 0
    while start < len(lines):
        end = start
        while lines[end].endswith("\\") and end + 1 < len(lines):
            end += 1
        line = " ".join(part.removesuffix("\\") for part in lines[start : end + 1])
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in _SEPARATORS:
                if current:
                    commands.append((start, current))
                current = []
            else:
                current.append(token)
        start = end + 1
    return commands


def vsr_arguments(command: list[str]) -> list[str] | None:
    """The arguments `vsr` gets from a command: `vsr ARGS`, or `... -m/--module vsr_train ARGS` under a
    launcher (the same subcommands); None for any other command."""
    if command[0] == "vsr":
        return command[1:]
    for i, token in enumerate(command[:-1]):
        if token in ("-m", "--module") and command[i + 1] == "vsr_train":
            return command[i + 2 :]
    return None


def doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for block in blocks_of(DOCS, "bash", "sh", "shell", "console"):
        for offset, command in shell_commands(block.text):
            args = vsr_arguments(command)
            if args is not None:
                found.append((f"{block.path.relative_to(ROOT)}:{block.line + 1 + offset}", args))
    return found


DOC_COMMANDS = doc_commands()


@pytest.fixture(scope="module")
def vsr_parser() -> argparse.ArgumentParser:
    from vsr_index.cli import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def command_problem(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """Why `vsr ARGS` is wrong (no such subcommand, a flag the subcommand lacks, arguments its parser
    rejects), or None when it parses."""
    leaf, path = parser, ["vsr"]
    rest = list(args)
    while (choices := _subcommands(leaf)) is not None:
        if not rest or rest[0] not in choices:
            got = rest[0] if rest else "nothing"
            return f"`{' '.join(path)}` needs a subcommand ({', '.join(sorted(choices))}), got {got!r}"
        path.append(rest.pop(0))
        leaf = choices[path[-1]]
    accepted = {s for action in leaf._actions for s in action.option_strings}
    for token in rest:
        if token.startswith("-") and token != "-" and not _is_number(token):
            flag = token.split("=", 1)[0]
            if flag not in accepted:
                return f"`{' '.join(path)}` has no option {flag!r} (it accepts {sorted(accepted)})"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            _, unknown = parser.parse_known_args(args)
    except SystemExit:
        return f"`{' '.join(path)}` rejects its arguments: {stderr.getvalue().strip().splitlines()[-1]}"
    if unknown:
        return f"`{' '.join(path)}` does not accept {unknown}"
    return None


def test_docs_hold_vsr_command_lines():
    files = {where.split(":")[0] for where, _ in DOC_COMMANDS}
    assert len(DOC_COMMANDS) >= 20 and {"README.md", "docs/demo.md", "docs/training.md"} <= files, files


@pytest.mark.parametrize(
    ("where", "args"), DOC_COMMANDS, ids=[f"{w} vsr {' '.join(a)[:60]}" for w, a in DOC_COMMANDS]
)
def test_vsr_command_line_names_a_subcommand_and_only_its_flags(vsr_parser, where, args):
    problem = command_problem(vsr_parser, args)
    assert problem is None, f"{where}: vsr {shlex.join(args)}: {problem}"


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--sise", "cpu"],  # unknown flag
        ["demo", "--siz", "cpu"],  # abbreviation argparse would accept
        ["demo", "--size", "huge"],  # bad choice
        ["train"],  # no subcommand
        ["train", "pretrain", "--config", "x.yaml"],  # no such subcommand
        ["fly"],
        ["train", "build-data", "--annotations", "a", "--engine", "e", "--out", "o", "--per-class", "9"],
        ["train", "sft"],  # missing required --config
        ["report"],  # missing positional
    ],
)
def test_command_check_rejects_wrong_lines(vsr_parser, args):
    assert command_problem(vsr_parser, args) is not None


def test_shell_commands_split_chains_and_drop_comments():
    script = "pip install x && vsr demo --out runs/demo   # --size tiny\nvsr report a \\\n  --max-cards 3 | tee log\n"
    assert shell_commands(script) == [
        (0, ["pip", "install", "x"]),
        (0, ["vsr", "demo", "--out", "runs/demo"]),
        (1, ["vsr", "report", "a", "--max-cards", "3"]),
        (1, ["tee", "log"]),
    ]
    launcher = [
        "deepspeed",
        "--num_gpus",
        "8",
        "--module",
        "vsr_train",
        "train",
        "grpo",
        "--config",
        "g.yaml",
    ]
    assert vsr_arguments(launcher) == ["train", "grpo", "--config", "g.yaml"]


# ----------------------------------------------------------------------------------------------------------
# Python and YAML blocks
# ----------------------------------------------------------------------------------------------------------

PYTHON_BLOCKS = blocks_of(DOCS, "python", "py")


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_block_compiles(block):
    compile(block.text, block.where, "exec")


def _only_block(path: Path, needle: str) -> Block:
    found = [b for b in blocks_of([path], "python") if needle in b.text]
    assert len(found) == 1, f"{path.relative_to(ROOT)}: expected one Python block with {needle!r}"
    return found[0]


def test_readme_vsr_index_example_runs(tmp_path, monkeypatch):
    block = _only_block(README, "import vsr_index")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.text, block.where, "exec"), namespace)
    assert namespace["ids"].shape == (10,) and namespace["info"]["path"] in {"pool", "warm", "cold"}
    assert len(namespace["graph"]) == len(namespace["vectors"]) <= 20_000
    assert (tmp_path / "videos.vsr").is_file()


def test_vsr_index_package_readme_example_runs():
    block = _only_block(ROOT / "packages" / "vsr-index" / "README.md", "import vsr_index")
    namespace: dict = {}
    exec(compile(block.text, block.where, "exec"), namespace)
    assert namespace["ids"].tolist() == [[10, 11]]


YAML_BLOCKS = blocks_of(DOCS, "yaml", "yml")


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[b.where for b in YAML_BLOCKS])
def test_yaml_block_parses_and_fits_its_config(block, tmp_path):
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), f"{block.where}: not a mapping"
    if "overrides" in data:  # a `vsr demo --config` file: every stage config must accept its overrides
        from vsr_train.demo import Demo, DemoSettings

        path = tmp_path / "demo.yaml"
        path.write_text(block.text)
        demo = Demo(DemoSettings.from_yaml(path, tmp_path / "out"))
        demo.sft_config(), demo.grpo_config(), demo.eval_config()
    if "family" in data:  # a `vsr engine init --config` file
        from vsr_model.config import config_from_dict
        from vsr_model.engine import DualEncoderConfig, VLMEmbeddingConfig

        kinds = {"vlm_embedding": VLMEmbeddingConfig, "dual_encoder": DualEncoderConfig}
        assert data["family"] in kinds, f"{block.where}: unknown engine family {data['family']!r}"
        config_from_dict(kinds[data["family"]], data.get("engine") or {}, block.where)
