"""The first start of team mode in docs/deployment.md, run as written in a fresh copy of the checkout:
its ``.venv/bin/python -m engine users add ada --role admin`` and ``settings`` lines in a plain shell (no
SEGWB_* variables, an empty HOME), then the preflight exactly as ``make serve`` runs it (its recipe line,
in make's own environment). The CLI, ``make`` and the app must agree on one workspace, one store and one
install secret."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "first-start-Passphrase-2024!"


def _copy_checkout(dest: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (a fresh clone with today's edits)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if not src.is_file():
            continue  # deleted in the working tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)  # `make` finds it installed


def _shell_env(home: Path) -> dict[str, str]:
    """A login shell's environment: no SEGWB_* (the tests' own workspace included), a fresh HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGWB_") and k not in ("PYTHONPATH", "MAKEFLAGS",
                                                                                           "MAKELEVEL", "MFLAGS")}
    env["HOME"] = str(home)
    return env


def _make_env(checkout: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment make gives its recipes (its exports included)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "segwb-print-env: ; @env -0",
                          "segwb-print-env"], cwd=checkout, env=env, capture_output=True, check=True, timeout=60)
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def _docs_first_start(checkout: Path) -> list[str]:
    """The commands of the first-start block in docs/deployment.md, comments removed."""
    text = (checkout / "docs" / "deployment.md").read_text(encoding="utf-8")
    block = text[text.index("First start of team mode"):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.split("#", 1)[0].strip()]


def _python(checkout: Path, code: str, env: dict[str, str]) -> str:
    r = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", code], cwd=checkout, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / "bin" / "python").exists(),
                    reason="needs make and the checkout's .venv")
def test_docs_first_start_verbatim_from_a_fresh_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "segwb"
    home = tmp_path / "home"
    home.mkdir()
    _copy_checkout(checkout)
    shell = _shell_env(home)

    def sh(line: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", line], cwd=checkout, env=shell, input=stdin, capture_output=True,
                              text=True, timeout=120)

    workspace = (checkout / ".workspace").resolve()
    store = f"sqlite:///{workspace / 'segwb.sqlite'}"
    steps = _docs_first_start(checkout)
    assert [ln.split()[:1] for ln in steps] == [["make"], [".venv/bin/python"], [".venv/bin/python"], ["make"]]
    assert steps[0] == "make install" and steps[3] == "make serve"  # make install: the venv is already there

    # 1. .venv/bin/python -m engine users add ada --role admin   (password: one line on stdin)
    assert steps[1] == ".venv/bin/python -m engine users add ada --role admin"
    r = sh(steps[1], stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("segwb: ")]
    assert len(said) == 1, r.stderr
    assert f"store {store} (default)" in said[0] and f"workspace {workspace} (checkout)" in said[0]
    assert f"secret {workspace / 'secret.key'}" in said[0] and PASSWORD not in r.stderr + r.stdout

    # 2. .venv/bin/python -m engine settings --data-roots /data/… --export-roots /data/exports (under tmp here)
    settings = steps[2].replace(" /data/", f" {tmp_path}/data/")
    for word in settings.split():
        if word.startswith(f"{tmp_path}/data/"):
            Path(word).mkdir(parents=True, exist_ok=True)
    r = sh(settings)
    assert r.returncode == 0, r.stderr
    assert f"store {store}" in r.stderr
    data = tmp_path / "data" / "us"

    # 3. make serve: its serve-check line, run as make runs it
    recipe = subprocess.run(["make", "-n", "serve"], cwd=checkout, env=shell, capture_output=True, text=True,
                            check=True, timeout=60).stdout
    line = next(ln for ln in recipe.splitlines() if "engine serve-check" in ln)
    assert "SEGWB_MODE=team" in line
    menv = _make_env(checkout, shell)
    r = subprocess.run(["bash", "-c", line], cwd=checkout, env=menv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "team mode can start" in r.stdout and "ada" in r.stdout
    assert f"workspace: {workspace} (install secret {workspace / 'secret.key'})" in r.stdout
    assert f"store {store}" in r.stderr and str(data.resolve()) in r.stdout

    # the same install secret (and so the same patient keys) for the CLI's shell, make and the app
    code = ("import json; from engine.phi import secret_id; from engine.store import default_store_url; "
            "from ui.state import workspace; ws = workspace().root; "
            "print(json.dumps([str(ws), default_store_url(ws), secret_id()]))")
    from_shell = _python(checkout, code, shell)
    from_make = _python(checkout, code, {**menv, "SEGWB_MODE": "team"})
    assert from_shell == from_make
    assert f'"{workspace}"' in from_shell and store in from_shell
    assert (workspace / "secret.key").is_file() and (workspace / "segwb.sqlite").is_file()
    assert not (home / ".cache").exists()  # nothing went to ~/.cache/segwb
