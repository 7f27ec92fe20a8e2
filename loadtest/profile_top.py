"""The heaviest frames of py-spy's collapsed stacks (``cost.py --profile``): self and total.

.venv/bin/python loadtest/profile_top.py loadtest/reports/<ts>/profile-this/post.posts.txt [-n 30]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")


def frames(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        stack, count = match.group(1).split(";"), int(match.group(2))
        samples += count
        own[stack[-1]] += count
        for frame in set(stack):
            total[frame] += count
    return own, total, samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("-n", type=int, default=25)
    args = parser.parse_args()
    for path in args.files:
        own, total, samples = frames(path)
        print(f"== {path.name}: {samples} samples")
        print("-- self")
        for frame, count in own.most_common(args.n):
            print(f"{100 * count / samples:6.1f}%  {frame[:150]}")
        print("-- total")
        for frame, count in total.most_common(args.n):
            print(f"{100 * count / samples:6.1f}%  {frame[:150]}")


if __name__ == "__main__":
    main()
