"""The user documents (README.md, docs/*.md) stay true to the code they describe.

- docs/configuration.md names every field of `default.get_config()`, and no other, with
  its default;
- docs/how_it_works.md names every module of the package;
- every relative link resolves to a file, and every `#anchor` into a markdown file to one
  of its headings (GitHub's slugs);
- every `--config=configs/X.py`, every backticked repository path and every
  `pix2seq_jax` module or name the documents mention exists;
- every `BENCHMARKS.md, "Section"` and `docs/x.md` the code's comments and messages cite
  exists.

Nothing here imports TensorFlow or starts JAX: the checks read files.
"""

from __future__ import annotations

import ast
import glob
import os
import re

import ml_collections

from pix2seq_jax.config import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _documents() -> list[str]:
  """README.md and docs/*.md, as paths relative to ROOT."""
  docs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
  return ['README.md', *docs]


def _read(relpath: str) -> str:
  with open(os.path.join(ROOT, relpath), encoding='utf-8') as f:
    return f.read()


def _prose_lines(text: str) -> list[str]:
  """The lines outside fenced code blocks."""
  lines, fenced = [], False
  for line in text.splitlines():
    if line.lstrip().startswith('```'):
      fenced = not fenced
      continue
    if not fenced:
      lines.append(line)
  return lines


# --- docs/configuration.md against config/default.py ---------------------------------


def config_leaves(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, object]:
  """{dotted path: default} of every leaf field, walking nested ConfigDicts."""
  leaves = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      leaves.update(config_leaves(value, f'{prefix}{key}.'))
    elif isinstance(value, ml_collections.ConfigDict):  # an empty group: config.tasks
      leaves[f'{prefix}{key}'] = {}
    else:
      leaves[f'{prefix}{key}'] = value
  return leaves


def _cells(row: str) -> list[str]:
  return [cell.strip() for cell in row.strip().strip('|').split('|')]


def field_rows(text: str) -> list[tuple[str, str, int]]:
  """(first cell, second cell, line number) of each body row of every table whose header's
  first cell is `field`."""
  rows, in_field_table = [], False
  lines = text.splitlines()
  for number, line in enumerate(lines, 1):
    if not line.lstrip().startswith('|'):
      in_field_table = False
      continue
    cells = _cells(line)
    if set(''.join(cells)) <= set('-: '):  # the header's separator row
      continue
    if not in_field_table:
      previous = lines[number - 2] if number > 1 else ''
      if not previous.lstrip().startswith('|'):  # a header row
        in_field_table = cells[0].lower() == 'field'
        continue
    if in_field_table:
      rows.append((cells[0], cells[1] if len(cells) > 1 else '', number))
  return rows


_FIELD_CELL = re.compile(r'^`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)`$')
_DEFAULT_CELL = re.compile(r'^`(.*)`$')


def documented_fields(text: str) -> dict[str, tuple[str, int]]:
  """{field name: (default cell, line)} from docs/configuration.md's field tables."""
  fields = {}
  for first, second, number in field_rows(text):
    match = _FIELD_CELL.match(first)
    assert match, (f'docs/configuration.md:{number}: the first cell of a field table must be '
                   f'one field name in backticks, e.g. `data.image_size`; found {first!r}')
    assert match.group(1) not in fields, (
        f'docs/configuration.md:{number}: {match.group(1)} is documented twice')
    fields[match.group(1)] = (second, number)
  return fields


def test_configuration_documents_every_field():
  fields = set(config_leaves(default.get_config()))
  documented = set(documented_fields(_read('docs/configuration.md')))
  missing, extra = sorted(fields - documented), sorted(documented - fields)
  assert not missing and not extra, (
      'docs/configuration.md and pix2seq_jax/config/default.py differ.\n'
      f'  fields of default.get_config() missing from the document: {missing}\n'
      f'  names documented that are not fields: {extra}')


def test_configuration_defaults_match():
  fields = config_leaves(default.get_config())
  wrong = []
  for name, (cell, number) in documented_fields(_read('docs/configuration.md')).items():
    if name not in fields:
      continue  # test_configuration_documents_every_field names it
    match = _DEFAULT_CELL.match(cell)
    try:
      value = ast.literal_eval(match.group(1)) if match else SyntaxError
    except (ValueError, SyntaxError):
      value = SyntaxError
    if value is SyntaxError:
      wrong.append(f'line {number}: {name}: the default cell {cell!r} is not a Python '
                   f'literal in backticks (the default is `{fields[name]!r}`)')
    elif type(value) is not type(fields[name]) or value != fields[name]:
      wrong.append(f'line {number}: {name}: documented {cell}, default.py has '
                   f'`{fields[name]!r}`')
  assert not wrong, 'docs/configuration.md: defaults that differ from default.py:\n  ' + (
      '\n  '.join(wrong))


# --- docs/how_it_works.md against the package ------------------------------------------


def test_how_it_works_names_every_module():
  text = _read('docs/how_it_works.md')
  package = os.path.join(ROOT, 'pix2seq_jax')
  missing = []
  for path in sorted(glob.glob(os.path.join(package, '*', '*.py'))):
    folder, module = os.path.basename(os.path.dirname(path)), os.path.basename(path)
    if module == '__init__.py':
      continue
    section = re.search(rf'^### `pix2seq_jax/{folder}/`\n(.*?)(?=^#|\Z)', text, re.M | re.S)
    if not section or f'| `{module}` |' not in section.group(1):
      missing.append(f'pix2seq_jax/{folder}/{module}')
  assert not missing, ('docs/how_it_works.md has no row for these modules (add one to the '
                       f'table of their folder): {missing}')


# --- links and anchors -------------------------------------------------------------------


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading: lowercase; punctuation dropped except hyphens,
  underscores and spaces; spaces become hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def heading_anchors(text: str) -> set[str]:
  """The anchors of a markdown file's headings, with GitHub's -1, -2 suffixes for repeats."""
  anchors, seen = set(), {}
  for line in _prose_lines(text):
    match = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
    if not match:
      continue
    slug = github_slug(match.group(1))
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    anchors.add(slug if count == 0 else f'{slug}-{count}')
  return anchors


_LINK = re.compile(r'(!?)\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def links(text: str) -> list[tuple[bool, str]]:
  """(is an image, target) of the markdown links and images outside code."""
  found = []
  for line in _prose_lines(text):
    found += [(bang == '!', target)
              for bang, target in _LINK.findall(re.sub(r'`[^`]*`', '', line))]
  return found


def _relative(target: str) -> bool:
  return not re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I)  # http:, https:, mailto:, ...


def _link_targets(document: str, images: bool = False) -> list[tuple[str, str, str]]:
  """(link as written, target file relative to ROOT, anchor) of each relative link, or
  with `images` of each relative image."""
  out = []
  for is_image, target in links(_read(document)):
    if is_image != images or not _relative(target):
      continue
    path, _, anchor = target.partition('#')
    resolved = document if not path else os.path.normpath(
        os.path.join(os.path.dirname(document), path))
    out.append((target, resolved, anchor))
  return out


def test_relative_links_resolve():
  broken = [f'{document}: ({target}) -> {resolved} does not exist'
            for document in _documents()
            for target, resolved, _ in _link_targets(document)
            if not os.path.exists(os.path.join(ROOT, resolved))]
  assert not broken, 'links to missing files:\n  ' + '\n  '.join(broken)


def test_images_exist():
  missing = [f'{document}: ({target}) -> {resolved} does not exist'
             for document in _documents()
             for target, resolved, _ in _link_targets(document, images=True)
             if not os.path.exists(os.path.join(ROOT, resolved))]
  assert not missing, 'images that do not exist:\n  ' + '\n  '.join(missing)


def test_anchors_match_headings():
  problems = []
  for document in _documents():
    for target, resolved, anchor in _link_targets(document):
      if not anchor or not resolved.endswith('.md'):
        continue
      if not os.path.exists(os.path.join(ROOT, resolved)):
        continue  # test_relative_links_resolve reports it
      if anchor not in heading_anchors(_read(resolved)):
        problems.append(f'{document}: ({target}): {resolved} has no heading with the anchor '
                        f'#{anchor}')
  assert not problems, 'anchors that match no heading:\n  ' + '\n  '.join(problems)


def code_references(text: str) -> list[tuple[str, str | None]]:
  """(document, quoted section or None) named in code text: `BENCHMARKS.md, "Section"`,
  `docs/x.md` (comments and strings may break a quoted name over lines)."""
  flat = re.sub(r'\s*\n\s*#?\s*', ' ', text)
  found = [('BENCHMARKS.md', section) for section in
           re.findall(r'BENCHMARKS\.md, "([^"]+)"', flat)]
  found += [(path, None) for path in re.findall(r'\b(docs/[\w-]+\.md)', flat)]
  return found


def test_code_names_existing_documents_and_sections():
  sources = sorted(glob.glob(os.path.join(ROOT, '*.py')) +
                   glob.glob(os.path.join(ROOT, '*', '**', '*.py'), recursive=True))
  problems = []
  for path in sources:
    if '.venv' in path or path == os.path.abspath(__file__):
      continue
    with open(path, encoding='utf-8') as f:
      text = f.read()
    for document, section in code_references(text):
      name = os.path.relpath(path, ROOT)
      if not os.path.exists(os.path.join(ROOT, document)):
        problems.append(f'{name}: {document} does not exist')
      elif section and github_slug(section) not in heading_anchors(_read(document)):
        problems.append(f'{name}: {document} has no heading "{section}"')
  assert not problems, '\n'.join(problems)


def test_code_references_are_read_across_lines():
  text = ('# as measured (BENCHMARKS.md, "Huge pages\n  # behind malloc"), see docs/deploy.md\n'
          "'(BENCHMARKS.md, \"Freed memory kept\")'")
  assert code_references(text) == [('BENCHMARKS.md', 'Huge pages behind malloc'),
                                   ('BENCHMARKS.md', 'Freed memory kept'),
                                   ('docs/deploy.md', None)]


# --- names of files, configs and modules -------------------------------------------------


def test_readme_configs_exist():
  missing = sorted({f'{document}: --config={path}' for document in _documents()
                    for path in re.findall(r'--config=(configs/[\w/.-]+?\.py)', _read(document))
                    if not os.path.isfile(os.path.join(ROOT, path))})
  assert not missing, 'config files named in commands that do not exist:\n  ' + (
      '\n  '.join(missing))


_REPO_PATH = re.compile(
    r'`((?:pix2seq_jax|configs|benchmarks|tests|notebooks)/[\w/.-]*?)(?::[\w,-]+)?`')


def test_named_paths_exist():
  """Backticked paths such as `pix2seq_jax/runtime/cpu.py` or `configs/shapes.py`."""
  missing = []
  for document in _documents():
    for path in _REPO_PATH.findall(_read(document)):
      placeholder = re.search(r'[*<]|\b[A-Z]+\b', path)  # a glob, <step>, configs/NAME.py
      if not placeholder and not os.path.exists(os.path.join(ROOT, path)):
        missing.append(f'{document}: {path}')
  assert not missing, 'paths named in the documents that do not exist:\n  ' + (
      '\n  '.join(sorted(set(missing))))


def _module_file(dotted: str) -> str | None:
  """The file of a pix2seq_jax module or package, or None."""
  base = os.path.join(ROOT, *dotted.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.isfile(candidate):
      return candidate
  return None


def _defines(module_file: str, name: str) -> bool:
  with open(module_file, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
      if node.name == name:
        return True
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      if any(isinstance(t, ast.Name) and t.id == name for t in targets):
        return True
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      if any((alias.asname or alias.name.split('.')[0]) == name for alias in node.names):
        return True
  return False


def test_named_modules_exist():
  """`python -m pix2seq_jax.X`, `from pix2seq_jax.X import Y` and `pix2seq_jax.X.Y`."""
  missing = []
  for document in _documents():
    text = _read(document)
    for module, names in re.findall(r'from (pix2seq_jax(?:\.\w+)*) import ([\w, ]+)', text):
      module_file = _module_file(module)
      if module_file is None:
        missing.append(f'{document}: from {module} import ...: no module {module}')
        continue
      for name in (n.strip() for n in names.split(',') if n.strip()):
        if not _module_file(f'{module}.{name}') and not _defines(module_file, name):
          missing.append(f'{document}: from {module} import {name}: not found')
    for dotted in re.findall(r'\bpix2seq_jax(?:\.\w+)+', text):
      if _module_file(dotted):
        continue
      parent, _, name = dotted.rpartition('.')
      parent_file = _module_file(parent)
      if parent_file is None or not _defines(parent_file, name):
        missing.append(f'{document}: {dotted}: no such module or name')
  assert not missing, 'modules and names in the documents that do not exist:\n  ' + (
      '\n  '.join(sorted(set(missing))))
