"""`parity bisect --good REV --bad REV [--repo PATH] -- <parity check args>`.

Finds the first commit at which `parity check <args>` turns bad: `git bisect start`, `good`,
`bad`, then `git bisect run python -m parity check <args>` with the candidate imported from
the checked-out tree (cwd = the repo, PYTHONPATH = the repo first). `check` exits 125 where a
commit cannot be tested (it does not import, no GPU, ...), so such commits are skipped, never
blamed. `git bisect reset` always runs at the end.

Exit 0 the first bad commit was found (its sha and subject are printed), 1 the bisect failed or
was ambiguous (skipped commits next to the answer), 2 usage (bad revisions, not a repository,
bad check arguments, a bisect already in progress).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

FOUND_RE = re.compile(r"^([0-9a-f]{7,64}) is the first bad commit", re.M)


def add_parser(sub):
    p = sub.add_parser(
        "bisect",
        help="git bisect with `parity check` as the test",
        description="parity bisect --good REV --bad REV [--repo PATH] -- <parity check args>",
    )
    p.add_argument("--good", required=True, help="a revision where the check passes")
    p.add_argument("--bad", required=True, help="a revision where the check fails")
    p.add_argument("--repo", default=".", help="the git work tree to bisect (default: .)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="first run the check at --good and --bad and stop unless 0 and 1",
    )
    p.add_argument(
        "check_args", nargs=argparse.REMAINDER, help="arguments of `parity check`, after --"
    )
    return p


def _git(repo: Path, *args, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=check
    )


def _check_args(argv: list[str]) -> list[str] | None:
    """Validate the check arguments with check's own parser (None if invalid); make the
    golden folder and the ledger absolute, since the check runs in the repository."""
    from parity.tools import check_cmd

    parser = argparse.ArgumentParser(prog="parity bisect -- ", add_help=False)
    check_cmd.add_parser(parser.add_subparsers(dest="cmd"))
    try:
        ns = parser.parse_args(["check", *argv])
    except SystemExit:
        return None
    out = list(argv)
    for flag, value in (("--golden", ns.golden), ("--ledger", ns.ledger)):
        if not value:
            continue
        absolute = str(Path(value).resolve())
        for i, a in enumerate(out):
            if a == flag and i + 1 < len(out):
                out[i + 1] = absolute
            elif a.startswith(flag + "="):
                out[i] = f"{flag}={absolute}"
    return out


def _env(repo: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale .pyc across checkouts, no litter
    return env


def _run_check(repo: Path, cmd: list[str], rev: str) -> int:
    co = _git(repo, "checkout", "-q", "--detach", rev)
    if co.returncode != 0:
        print(co.stderr, file=sys.stderr)
        return -1
    return subprocess.run(cmd, cwd=repo, env=_env(repo)).returncode


def run(args) -> int:
    argv = list(args.check_args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(
            "parity bisect: give the check arguments after --, e.g. "
            "-- --op swiglu --impl mykernel:swiglu --golden DIR",
            file=sys.stderr,
        )
        return 2
    check_argv = _check_args(argv)
    if check_argv is None:
        print(
            "parity bisect: the arguments after -- are not valid `parity check` arguments",
            file=sys.stderr,
        )
        return 2
    repo = Path(args.repo).resolve()
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        print(
            f"parity bisect: {repo} is not a git work tree: {top.stderr.strip()}", file=sys.stderr
        )
        return 2
    repo = Path(top.stdout.strip())
    shas = {}
    for name, rev in (("good", args.good), ("bad", args.bad)):
        r = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if r.returncode != 0:
            print(f"parity bisect: --{name} {rev!r} is not a commit in {repo}", file=sys.stderr)
            return 2
        shas[name] = r.stdout.strip()
    if _git(repo, "bisect", "log").returncode == 0:
        print(
            "parity bisect: a bisect is already in progress in this repository "
            "(finish it or run `git bisect reset`)",
            file=sys.stderr,
        )
        return 2
    cmd = [sys.executable, "-m", "parity", "check", *check_argv]
    print(f"parity bisect: {repo}: good {shas['good'][:12]}, bad {shas['bad'][:12]}")
    print(f"  test: cd {repo} && PYTHONPATH={repo} {' '.join(cmd)}")

    head = (
        _git(repo, "symbolic-ref", "-q", "--short", "HEAD").stdout.strip()
        or _git(repo, "rev-parse", "HEAD").stdout.strip()
    )
    if args.verify:
        try:
            for name, want in (("good", 0), ("bad", 1)):
                rc = _run_check(repo, cmd, shas[name])
                if rc != want:
                    print(
                        f"parity bisect: the check exits {rc} at --{name} "
                        f"{shas[name][:12]}, expected {want}",
                        file=sys.stderr,
                    )
                    return 1
        finally:
            _git(repo, "checkout", "-q", head)

    try:
        start = _git(repo, "bisect", "start", shas["bad"], shas["good"])
        if start.returncode != 0:
            print(
                f"parity bisect: git bisect start failed:\n{start.stdout}{start.stderr}",
                file=sys.stderr,
            )
            return 1
        proc = subprocess.Popen(
            ["git", "-C", str(repo), "bisect", "run", *cmd],
            cwd=repo,
            env=_env(repo),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        lines = []
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write("  | " + line.rstrip("\n") + "\n")
        rc = proc.wait()
        output = "".join(lines)
        log = _git(repo, "bisect", "log").stdout
    finally:
        reset = _git(repo, "bisect", "reset")
        if reset.returncode != 0:
            print(f"parity bisect: git bisect reset failed: {reset.stderr}", file=sys.stderr)

    _print_steps(repo, log)
    m = FOUND_RE.search(output)
    if rc != 0 or m is None:
        tail = "\n".join(output.strip().splitlines()[-8:])
        print(f"parity bisect: no single first bad commit (git bisect run exit {rc}):\n{tail}")
        return 1
    sha = _git(repo, "rev-parse", m.group(1)).stdout.strip()
    subject = _git(repo, "log", "-1", "--format=%s", sha).stdout.strip()
    print(f"first bad commit: {sha} {subject}")
    return 0


def _print_steps(repo: Path, log: str) -> None:
    """One line per tested commit: what the check said there."""
    steps = re.findall(r"^git bisect (good|bad|skip) ([0-9a-f]{40})", log, re.M)
    if not steps:
        return
    print("bisect steps:")
    for verdict, sha in steps:
        subject = _git(repo, "log", "-1", "--format=%s", sha).stdout.strip()
        print(f"  {verdict:<5} {sha[:12]} {subject}")
