"""The README's first command and its tour, then the API step of docs/api.md, run as written.

The commands are read out of README.md and docs/api.md, not copied here, so the docs cannot
drift from what works. The tour runs in a copy of the repository (its own ``.venv`` made by the
README's install command) and in a network namespace of its own, so the fixed ports the docs
name (2525, 8025) are free and nothing leaves loopback.
"""

from __future__ import annotations

import email
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def section(markdown: Path, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## ``."""
    text = markdown.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def commands(block: str) -> list[str]:
    """Shell lines of a block, comments dropped, backslash continuations joined."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


class Namespace:
    """A network namespace with only loopback, removed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.servers: list[Server] = []
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.run("ip link set lo up", cwd=Path("/"))

    def argv(self, command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, "bash", "-c", command]

    def run(
        self, command: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result

    def wait_for_port(self, port: int, cwd: Path) -> None:
        probe = (
            "import socket, time\n"
            "deadline = time.monotonic() + 30\n"
            "while True:\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).close(); break\n"
            "    except OSError:\n"
            "        assert time.monotonic() < deadline, 'nothing listens'\n"
            "        time.sleep(0.05)\n"
        )
        self.run(f"python3 -c {shlex.quote(probe)}", cwd=cwd)

    def remove(self) -> None:
        for server in self.servers:
            server.kill()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The repository's tracked files, as a fresh clone has them."""
    target = tmp_path / "checkout"
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, names):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    return target


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    ns = Namespace(f"gwtour-{os.getpid()}")
    try:
        yield ns
    finally:
        ns.remove()


class Server:
    """``gateway serve`` in the namespace, stopped by its own PID."""

    def __init__(self, ns: Namespace, command: str, cwd: Path) -> None:
        self.log = (cwd / "serve.log").open("ab")
        self.process = subprocess.Popen(
            ns.argv(f"exec {command}"), cwd=cwd, stdout=subprocess.DEVNULL, stderr=self.log
        )
        ns.servers.append(self)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0
        self.log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


def test_the_readme_tour_and_the_api_step_work_as_written(
    checkout: Path, namespace: Namespace
) -> None:
    readme = ROOT / "README.md"
    install_and_serve = commands(code_blocks(readme.read_text(), "sh")[0])[0]
    install, serve = install_and_serve.split(" && ")
    assert install == "bash scripts/install.sh" and serve == ".venv/bin/gateway serve"
    installed = subprocess.run(
        install, shell=True, cwd=checkout, capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr

    tour = section(readme, "A five-minute tour")
    send_block, look_block = code_blocks(tour, "sh")[:2]  # the third relays: needs a smarthost
    (snippet,) = code_blocks(tour, "python")

    server = Server(namespace, serve, checkout)
    namespace.wait_for_port(2525, checkout)
    (send,) = commands(send_block)
    queue_id = namespace.run(send, cwd=checkout).stdout.split()[-1]
    said = namespace.run(f".venv/bin/python -c {shlex.quote(snippet)}", cwd=checkout).stdout
    assert re.fullmatch(r"2\.0\.0 OK queued as \w+\n", said), said
    for command in commands(look_block):
        shown = namespace.run(command.replace("QUEUE_ID", queue_id), cwd=checkout).stdout
        if "queue show" in command:
            assert "to <you@example.org>: delivered" in shown
    server.stop()

    # docs/api.md, "Turning it on": the config block, a key from `gateway api-key`, a restart.
    api = section(ROOT / "docs" / "api.md", "Turning it on")
    toml = code_blocks(api, "toml")[0]
    make_key = re.search(r"Make a key with `(gateway api-key [^`]+)`", api)
    assert make_key is not None
    made = namespace.run(f".venv/bin/{make_key.group(1)}", cwd=checkout)
    key = re.search(r"\bgwk_\S+", made.stderr)
    assert key is not None
    config = toml[: toml.index("[[tenants.acme.api_keys]]")] + made.stdout
    (checkout / "gateway.toml").write_text(config)
    checked = namespace.run(".venv/bin/gateway check-config gateway.toml", cwd=checkout)
    assert "warning" not in checked.stderr

    server = Server(namespace, serve, checkout)
    namespace.wait_for_port(2525, checkout)
    namespace.wait_for_port(8025, checkout)
    env = {**os.environ, "KEY": key.group(0)}
    smtp_send, curl = commands(code_blocks(api, "sh")[0])
    namespace.run(smtp_send, cwd=checkout, env=env)
    accepted = namespace.run(curl, cwd=checkout, env=env).stdout
    assert '"status"' in accepted or '"id"' in accepted, accepted
    server.stop()

    captured = sorted((checkout / "var" / "outbox").glob("*.eml"))
    assert len(captured) == 4, captured
    for path in captured:
        message = email.message_from_bytes(path.read_bytes())
        assert message["Date"] and message["Message-ID"], path.name
        assert message["Date"].endswith("+0000") and "-0000" not in str(message["Date"])
        assert message["Received"].endswith("+0000"), message["Received"]
