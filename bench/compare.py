"""Compare the pipeline's end-to-end rate at two git revisions, in alternating runs against one broker.

    .venv/bin/python -m bench.compare BASE [HEAD] [--rounds 3] [--events 200000]

On a shared machine a run's rate drifts by a third within minutes, so two runs made at different
times compare nothing. Each round runs both revisions back to back (A B, then B A, ...) with the same
events against one broker, and the medians and the per-round ratios are printed. A revision is run
from a temporary git worktree with this checkout's virtualenv; HEAD defaults to the working tree.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import uuid
from pathlib import Path
from statistics import median

from bench.pipeline import events, spendstream_rate
from spendstream.broker import EmbeddedBroker
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def checkout(revision: str, into: Path) -> Path:
    """A detached git worktree of ``revision`` at ``into`` (``-m spendstream.cli`` run there imports it)."""
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), revision],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(
            f"cannot check out {revision!r}: {done.stderr.strip()}. Give a commit, branch or tag of this repository."
        )
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the revision to compare against (a commit, a branch, HEAD~1)")
    parser.add_argument("head", nargs="?", help="the revision to measure (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    payloads = events(args.events)
    rates: dict[str, list[float]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": checkout(args.base, Path(tmp) / "base"), "head": ROOT}
        broker = EmbeddedBroker(free_port(), Path(tmp) / "broker.log")
        try:
            if args.head:
                trees["head"] = checkout(args.head, Path(tmp) / "head")
            broker.start()
            for number in range(args.rounds):
                for name in ("base", "head") if number % 2 == 0 else ("head", "base"):
                    home = Path(tmp) / f"home-{name}-{number}"
                    _, rate, cpu, _ = spendstream_rate(
                        broker.bootstrap, f"cmp{uuid.uuid4().hex[:6]}.", payloads, home, cwd=trees[name]
                    )
                    rates[name].append(rate)
                    print(f"round {number + 1} {name}: {rate:,.0f} events/s, {cpu:.0f} µs CPU per event", flush=True)
        finally:
            broker.stop()
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    ratios = [head / base for base, head in zip(rates["base"], rates["head"], strict=True)]
    print(f"base {args.base}: median {median(rates['base']):,.0f} events/s")
    print(f"head {args.head or 'working tree'}: median {median(rates['head']):,.0f} events/s")
    print(f"head / base per round: {', '.join(f'{r:.2f}' for r in ratios)} (median {median(ratios):.2f})")


if __name__ == "__main__":
    main()
