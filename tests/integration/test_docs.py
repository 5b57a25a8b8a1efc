"""README, CHANGELOG and docs/: every ```python block runs, every relative link resolves.

Each block runs in a fresh interpreter (its own jax, its own flags), in an empty
working directory, with the test's environment (so ``PYTHONPATH`` picks the
checkout under test). Links and images with a relative target must name a file
of the repository; a ``#fragment`` into a Markdown file must name one of its
headings (GitHub's anchors).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
GUIDES = ["keras.md", "migration.md", "distributed.md", "performance.md", "reliability.md"]


def _name(path: pathlib.Path) -> str:
  return path.relative_to(ROOT).as_posix()


def _blocks(path: pathlib.Path):
  return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


EXAMPLES = [(doc, i, code) for doc in DOCS for i, code in enumerate(_blocks(doc))]
# The README's examples run in the README's test command; the guides' (5-8 s each, mostly
# importing the peers in a fresh interpreter) in the slow step (`-m slow`), in CI both.
EXAMPLE_PARAMS = [
    pytest.param(doc, i, code, id=f"{_name(doc)}-{i}",
                 marks=() if doc.name == "README.md" else pytest.mark.slow)
    for doc, i, code in EXAMPLES]


def _prose(text: str) -> str:
  """The text without fenced code blocks and inline code (no links live there)."""
  text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
  return re.sub(r"`[^`\n]*`", "", text)


def _targets(text: str):
  """Targets of Markdown links/images ``](target)`` and HTML ``src=``/``href=``."""
  prose = _prose(text)
  found = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
  found += re.findall(r"(?:src|href)=\"([^\"]+)\"", prose)
  return found


def _anchors(path: pathlib.Path):
  """GitHub's anchors of the headings of a Markdown file."""
  anchors, seen = set(), {}
  for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M).splitlines():
    heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not heading:
      continue
    slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
    anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


def test_docs_have_examples_and_guides():
  assert [g for g in GUIDES if not (ROOT / "docs" / g).is_file()] == []
  assert len(_blocks(ROOT / "README.md")) >= 1
  # The block pattern finds what a reader sees: every ```python fence is collected.
  for doc in DOCS:
    assert len(_blocks(doc)) == doc.read_text().count("```python\n"), _name(doc)


@pytest.mark.parametrize("doc, index, code", EXAMPLE_PARAMS)
def test_example_runs(doc, index, code, tmp_path):
  env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, (
      f"{_name(doc)} example {index} failed:\n{code}\n{result.stderr[-3000:]}")


def _broken_links(doc: pathlib.Path):
  """The relative targets in ``doc`` that name no file, or no heading of a Markdown file."""
  broken = []
  for target in _targets(doc.read_text()):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
      continue
    path, _, fragment = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    if not file.exists():
      broken.append(f"{target} (no file {file})")
    elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
      broken.append(f"{target} (no heading #{fragment} in {file.name})")
  return broken


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_relative_links_resolve(doc):
  assert _broken_links(doc) == [], _name(doc)


def test_link_check_can_fail(tmp_path):
  (tmp_path / "other.md").write_text("# Other\n")
  page = tmp_path / "page.md"
  page.write_text(
      "# A `title`: here\n[ok](#a-title-here) [bad](#nope) ![img](missing.png)\n"
      "[a](other.md#other) [b](other.md#gone) [web](https://example.com/x.png)\n"
      "```python\nx[0](1)\n```\n")
  assert [b.split(" ")[0] for b in _broken_links(page)] == [
      "#nope", "missing.png", "other.md#gone"]
