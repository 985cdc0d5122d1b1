"""dyno's data files: versioned JSON, read strictly, written atomically. Never pickle.

A file type is a frozen dataclass that inherits ``DataFile`` and names its format, version and error::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Profile(DataFile):
        FORMAT: ClassVar[str] = "dyno-profile"
        VERSION: ClassVar[int] = 1
        ERROR: ClassVar[type[DynoError]] = PlanError
        ...

    profile.save("device.json")                 # atomic: a unique temporary file, fsync, rename
    Profile.load("device.json")                 # strict: the schema is the dataclass's type hints

Reading checks the ``format`` and ``version`` header, refuses unknown and missing fields, converts every
value to its annotated type (lists to tuples, string keys of ``dict[int, ...]`` to ints, nested
dataclasses recursively) and refuses NaN, infinity and nesting too deep to parse; the dataclass's own
``__post_init__`` then checks what types cannot say. Every failure is one ``ERROR`` naming the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

from dyno.errors import DynoError

__all__ = ["DataFile", "atomic_write", "atomic_path", "build", "dumps", "finite"]

T = TypeVar("T", bound="DataFile")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once (reading it means setting it, which is not thread-safe).
_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that want a path (``savefig``, ``torch.save``): yields a unique temporary path in
    ``path``'s directory, with the same suffix; when the block ends without an error, the file is
    flushed to disk and renamed over ``path``, so readers see the old file or the new one, never a mixture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes it 0600; the file gets what open() would give it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dumps(document: Any) -> str:
    """The on-disk form: indented JSON with a final newline; NaN and infinity refused."""
    return json.dumps(document, indent=1, allow_nan=False) + "\n"


def finite(x: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class DataFile:
    """Base of dyno's versioned JSON files (see the module docstring). Subclasses are dataclasses."""

    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    ERROR: ClassVar[type[DynoError]]
    #: What to tell a user whose file is missing, old or corrupt, e.g. "run `dyno analyze` again".
    REMAKE: ClassVar[str] = "make it again"

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "version": self.VERSION, **_plain(dataclasses.asdict(self))}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        kind = cls.FORMAT.removeprefix("dyno-")
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise cls.ERROR(f"not a dyno {kind} (the 'format' field is missing or wrong)")
        if data.get("version") != cls.VERSION:
            raise cls.ERROR(f"{kind} version {data.get('version')!r} is not supported (this dyno reads "
                            f"version {cls.VERSION}); {cls.REMAKE}")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            return build(cls, fields, kind, cls.ERROR)
        except DynoError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise cls.ERROR(f"malformed {kind}: {type(error).__name__}: {error}") from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file atomically (creating its directory); returns the path."""
        return atomic_write(path, dumps(self.to_dict()))

    @classmethod
    def read(cls: type[T], path: str | os.PathLike) -> T:
        """Read and validate ``path``; every failure is ``ERROR`` naming the path."""
        path = Path(path)
        kind = cls.FORMAT.removeprefix("dyno-")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise cls.ERROR(f"no {kind} at {path}; {cls.REMAKE}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise cls.ERROR(f"cannot read {kind} {path}: {error}") from error
        try:
            return cls.from_dict(parse(text, cls.ERROR))
        except DynoError as error:
            raise cls.ERROR(f"{path}: {error}") from None


def parse(text: str, error: type[DynoError]) -> Any:
    """Strict JSON: NaN and infinity are refused, and so is nesting too deep to parse."""

    def reject(name: str) -> Any:
        raise error(f"the file contains {name}, which is not a valid number")

    try:
        return json.loads(text, parse_constant=reject)
    except json.JSONDecodeError as problem:
        raise error(f"the file is not valid JSON ({problem}); it is corrupt or truncated") from None
    except RecursionError:
        raise error("the file nests too deeply to be a dyno file") from None


# ------------------------------------------------------------------------------------- the schema


def build(cls: type, data: Any, where: str, error: type[DynoError], *, top: bool = True) -> Any:
    """Instantiate dataclass ``cls`` from JSON ``data``, checking field names and converting types.

    Messages name the culprit: ``plan samples``, ``cut 3 option 5``, ``cut 3 option 5 bytes``."""
    if not isinstance(data, dict):
        raise error(f"{where} must be a JSON object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise error(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    kwargs = {}
    for name, value in data.items():
        item = name.removesuffix("s") if top else f"{where} {name.removesuffix('s')}"  # cut 3, cut 3 option 5
        kwargs[name] = _convert(value, hints[name], f"{where} {name}", error, item)
    return cls(**kwargs)


def _convert(value: Any, hint: Any, where: str, error: type[DynoError], item: str = "") -> Any:
    """A JSON value as the annotated type ``hint``; ``item`` names the entries of a list of objects."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(h for h in options if h is not type(None))
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, error, top=False)  # type: ignore[arg-type]
    if origin is tuple:
        return _tuple(value, typing.get_args(hint), where, error, item)
    if origin is dict or hint is dict:
        return _mapping(value, typing.get_args(hint), where, error)
    return _scalar(value, hint, where, error)


def _scalar(value: Any, hint: Any, where: str, error: type[DynoError]) -> Any:
    if hint is float:
        if not finite(value):
            raise error(f"{where} must be a finite number, not {value!r}")
        return float(value)
    if hint is int:
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise error(f"{where} must be an integer, not {value!r}")
        return value
    if hint in (str, bool) and not isinstance(value, hint):
        raise error(f"{where} must be a {hint.__name__}, not {value!r}")
    return value


def _tuple(value: Any, args: tuple, where: str, error: type[DynoError], item: str) -> tuple:
    items = _list(value, where, error)
    if len(args) == 2 and args[1] is Ellipsis:
        name = f"{item} {{}}" if dataclasses.is_dataclass(args[0]) and item else f"{where}[{{}}]"
        return tuple(_convert(v, args[0], name.format(i), error) for i, v in enumerate(items))
    if len(items) != len(args):
        raise error(f"{where} must have {len(args)} entries, not {len(items)}")
    return tuple(_convert(v, a, f"{where}[{i}]", error) for i, (v, a) in enumerate(zip(items, args)))


def _mapping(value: Any, args: tuple, where: str, error: type[DynoError]) -> dict:
    if not isinstance(value, dict):
        raise error(f"{where} must be a JSON object")
    if not args:
        return value
    key_type, value_type = args
    out = {}
    for key, item in value.items():
        if key_type is int:
            try:
                key = int(key)
            except ValueError:
                raise error(f"{where}: keys must be integers, not {key!r}") from None
        out[key] = _convert(item, value_type, f"{where}[{key}]", error)
    return out


def _list(value: Any, where: str, error: type[DynoError]) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise error(f"{where} must be a list")
    return value


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and every mapping key a string: what JSON stores."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
