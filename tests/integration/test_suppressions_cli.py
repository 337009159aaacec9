"""``gateway suppressions``: list, add and remove entries with their scope, as a real process."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_cli import gateway_cli, write_config


def test_suppressions_cli_shows_and_accepts_scopes(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, ""))

    def run(*args: str) -> str:
        done = gateway_cli("-c", config, "suppressions", *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("add", "Ann@Example.org", "--tenant", "default", "--scope", "stream:news",
        "--reason", "unsubscribe")  # fmt: skip
    run("add", "ann@example.org", "--tenant", "default", "--reason", "complaint")
    rows = [line.split("\t") for line in run("list", "--tenant", "default").splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("ann@example.org", "tenant", "complaint"),
        ("ann@example.org", "stream:news", "unsubscribe"),
    ]
    only = run("list", "--tenant", "default", "--scope", "stream:news").splitlines()
    assert [line.split("\t")[1] for line in only] == ["stream:news"]
    assert "removed" in run("remove", "ann@example.org", "--tenant", "default", "--scope", "tenant")
    rows = [line.split("\t") for line in run("list", "--tenant", "default").splitlines()]
    assert [r[1] for r in rows] == ["stream:news"]
    bad = gateway_cli("-c", config, "suppressions", "add", "x@example.org", "--tenant",
                      "default", "--scope", "not a scope", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "stream:<name>" in bad.stderr
    run("remove", "ann@example.org", "--tenant", "default")
    assert run("list", "--tenant", "default") == ""
    gone = gateway_cli("-c", config, "suppressions", "remove", "ann@example.org", "--tenant",
                       "default", cwd=tmp_path)  # fmt: skip
    assert gone.returncode == 1
