"""Long fuzzing runs: each atheris harness in turn, for a share of `--minutes`, on one core,
niced, from a working corpus under .cache/fuzz/<harness>/ seeded by fuzz/corpus/<harness>/
(new inputs stay out of the repo; copy a finding's input into the corpus with its fix).
Prints per harness the executions, the seconds and what was found (crash files under
.cache/fuzz/artifacts/). Run: python -m fuzz.run --minutes 30 [--harness decode]"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESSES = ("decode", "options")


@dataclass
class Outcome:
    harness: str
    executions: int
    seconds: float
    exit_code: int
    findings: list[Path]


def command(harness: str, work: Path, *flags: str) -> list[str]:
    """The harness over a writable corpus `work` and the committed seeds, with libFuzzer `flags`."""
    seeds = ROOT / "fuzz" / "corpus" / harness
    return [sys.executable, "-m", f"fuzz.{harness}", str(work), str(seeds), *flags]


def run(harness: str, seconds: int, cache: Path, *, nice: int = 10, extra: tuple[str, ...] = ()) -> Outcome:
    """Fuzzes `harness` for `seconds`, starting again after each finding (libFuzzer stops at
    the first; its fork mode does not work with `python -m`), so one run reports them all."""
    work = cache / harness
    artifacts = cache / "artifacts" / harness
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    log = cache / f"{harness}.log"
    started = time.monotonic()
    executions, exit_code = 0, 0
    with log.open("w") as out:
        while (left := round(seconds - (time.monotonic() - started))) >= 5:
            flags = (
                f"-max_total_time={left}",
                f"-artifact_prefix={artifacts}/",
                "-timeout=20",  # seconds for one input: a hang is a finding
                "-rss_limit_mb=3072",
                "-print_final_stats=1",
                *extra,
            )
            mark = out.tell()
            done = subprocess.run(
                ["nice", "-n", str(nice), *command(harness, work, *flags)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.flush()
            text = log.read_text(errors="replace")[mark:]
            # "stat::number_of_executed_units: N" (print_final_stats) is printed on a finding too.
            runs = re.findall(r"stat::number_of_executed_units: (\d+)", text)
            executions += int(runs[-1]) if runs else 0
            exit_code = exit_code or done.returncode
            if done.returncode == 0:
                break
    found = sorted(set(artifacts.iterdir()) - before)
    return Outcome(harness, executions, time.monotonic() - started, exit_code, found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="in all, shared between the harnesses")
    parser.add_argument("--harness", choices=HARNESSES, action="append", help="only these (default: all)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "fuzz")
    args = parser.parse_args()
    harnesses = args.harness or list(HARNESSES)
    share = max(10, round(args.minutes * 60 / len(harnesses)))
    total = 0
    for harness in harnesses:
        outcome = run(harness, share, args.cache)
        total += outcome.executions
        print(
            f"{harness}: {outcome.executions} executions in {outcome.seconds:.0f} s, "
            f"{len(outcome.findings)} findings, exit {outcome.exit_code} (log {args.cache / (harness + '.log')})"
        )
        for path in outcome.findings:
            print(f"  {path}")
    print(f"total: {total} executions")


if __name__ == "__main__":
    main()
