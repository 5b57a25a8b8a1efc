"""Prints the pip requirements that pin every runtime dependency at its declared floor.

`python .ci/floors.py` reads `[project].dependencies` of pyproject.toml and
prints e.g. ``jax==0.5.3 jaxlib==0.5.3 ...``; every dependency must have a
``>=`` floor. With ``--test-tools`` it prints instead the test extra's pytest and
hypothesis requirements, which the floors run needs besides the runtime ones.
With ``--extra NAME`` it pins the floors of that optional-dependency group
instead (e.g. ``--extra demo``: ``flax==0.11.0 ...``).
"""

import pathlib
import re
import sys

import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
TEST_TOOLS = ("pytest", "hypothesis")


def main(argv):
  project = tomllib.loads(PYPROJECT.read_text())["project"]
  if argv == ["--test-tools"]:
    test = project["optional-dependencies"]["test"]
    picked = [r for r in test if re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0] in TEST_TOOLS]
    print(" ".join(picked))
    return 0
  requirements = project["dependencies"]
  if len(argv) == 2 and argv[0] == "--extra":
    requirements = project["optional-dependencies"][argv[1]]
  elif argv:
    sys.exit(f"floors.py: unknown arguments {argv}; use --test-tools or --extra NAME")
  pins = []
  for requirement in requirements:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
    if match is None:
      sys.exit(f"floors.py: {requirement!r} in pyproject.toml has no plain '>=' floor")
    pins.append(f"{match[1]}=={match[2]}")
  print(" ".join(pins))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
