"""What decides a cell's result besides its definition, for its key: the source of the
plugins installed from a directory, and the result-affecting switches
(:data:`l2obench.env.RESULT_SWITCHES`).

A released plugin is named by its version, which changes whenever its code does.  A
plugin installed from a directory (``pip install -e DIR`` or ``pip install DIR``:
its ``direct_url.json`` has ``dir_info``) keeps its version while its code is edited,
so its cells are keyed by a fingerprint of its source files too; editing the code
reruns them instead of reusing results the old code computed."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import importlib.util
import json
from pathlib import Path
from typing import Any

from .env import result_switches

#: The source files a fingerprint reads.
SOURCE_SUFFIXES = (".py", ".cpp")


def distribution_of(origin: str) -> str:
    """``"l2obench 0.1.0"`` (an :attr:`~l2obench.registry.Entry.origin`) -> ``"l2obench"``."""
    return origin.rsplit(" ", 1)[0] if " " in origin else origin


@functools.cache
def source_fingerprint(distribution: str) -> str | None:
    """A sha256 of the source files of ``distribution``'s packages when it is installed from
    a directory, else ``None``; computed once per process."""
    found = None
    # every copy on sys.path, not the first: a source tree's own *.egg-info has no direct_url.json
    for dist in md.distributions(name=distribution):
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "{}")
        except (ValueError, OSError):
            continue
        if isinstance(direct, dict) and "dir_info" in direct:
            found = dist
            break
    if found is None:
        return None
    dist = found
    if direct["dir_info"].get("editable"):
        files = _editable_sources(dist)
    else:
        files = {str(f): Path(dist.locate_file(f)) for f in dist.files or () if f.suffix in SOURCE_SUFFIXES}
    digest = hashlib.sha256()
    for name in sorted(files):
        try:
            data = files[name].read_bytes()
        except OSError:
            continue
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def _editable_sources(dist: md.Distribution) -> dict[str, Path]:
    """The source files of an editable install, by a name that does not depend on where the
    project is: those of its top-level packages and of the packages its entry points name."""
    modules = set((dist.read_text("top_level.txt") or "").split())
    modules |= {ep.module for ep in dist.entry_points if ep.group == "l2obench"}
    roots: dict[str, Path] = {}
    for module in sorted(modules):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            for i, location in enumerate(spec.submodule_search_locations):
                roots[f"{module}#{i}"] = Path(location)
        elif spec.origin and "." in module:  # a module of a package: the package's files
            package = module.rsplit(".", 1)[0]
            roots.setdefault(f"{package}#0", Path(spec.origin).parent)
        elif spec.origin:
            roots[module] = Path(spec.origin)
    files: dict[str, Path] = {}
    seen: set[Path] = set()
    for label, root in sorted(roots.items()):
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            rel = path.relative_to(root) if path != root else Path(path.name)
            if (path.suffix in SOURCE_SUFFIXES and path.is_file() and path.resolve() not in seen
                    and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts)):
                seen.add(path.resolve())
                files[f"{label}/{rel.as_posix()}"] = path
    return files


def current() -> dict[str, Any]:
    """What decides results here besides the suite, for the cells' keys
    (:func:`l2obench.cells.with_provenance`): ``sources``, the fingerprint of every
    registered plugin's distribution installed from a directory, and ``switches``, the
    result-affecting switches turned off."""
    from .registry import get_registry

    distributions = sorted({e.distribution for e in get_registry().all_entries()})
    return {"sources": {d: fp for d in distributions if (fp := source_fingerprint(d))},
            "switches": result_switches()}
