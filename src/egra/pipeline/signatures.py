"""Constructor signatures read from source, without importing the class.

A config names classes by ``_target_`` (``egra.models.EGRA``, ``torch.optim.Adam``,
``lightning.Trainer``). Checking its keys against the constructor must not import torch or
Lightning (seconds of CPU before a typo is reported), so :func:`signature` finds the class in
the source files (``importlib.util.find_spec`` on the top-level package only, which imports
nothing), follows re-exports (``from x import Y`` in a package's ``__init__``) and, for a
constructor that passes ``**kwargs`` on, its base classes. Only a class this cannot find
(built at run time, a compiled module) is imported, through Hydra, as a last resort.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A parameter without a default value.
REQUIRED = object()
# Classes whose own constructor arguments are not a subclass's (nn.Module's **kwargs, object).
_OPAQUE_BASES = {"Module", "object", "Callback", "LightningDataModule", "LightningModule"}


@dataclass
class Param:
    name: str
    default: Any = REQUIRED  # a literal default, REQUIRED, or None for a non-literal default
    annotation: str | None = None  # source text, e.g. "float", "Sequence[str] | None"


@dataclass
class Signature:
    """What a class's constructor accepts (``self`` excluded)."""

    qualname: str
    params: dict[str, Param] = field(default_factory=dict)
    open: bool = False  # **kwargs that reach no known signature: any name is accepted
    attributes: dict[str, Any] = field(default_factory=dict)  # literal class attributes (e.g. VIEWS)

    @property
    def name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]


class NotFound(LookupError):
    """The class is not where the name says (the message says what is missing)."""


@functools.lru_cache(maxsize=256)
def module_file(module: str) -> Path | None:
    """The source file of ``module`` (a package's ``__init__.py``), found without importing it."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        found = None
        for d in dirs:
            if (d / part / "__init__.py").is_file():
                found = d / part / "__init__.py"
                next_dirs = [d / part]
                break
            if (d / part).is_dir():  # namespace package
                found, next_dirs = None, [d / part]
                break
            if last and (d / f"{part}.py").is_file():
                return d / f"{part}.py"
        else:
            return None
        if last:
            return found
        dirs = next_dirs
    return None


@functools.lru_cache(maxsize=128)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module, path).split(".")
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, *([node.module] if node.module else [])])


def _top_statements(body: list[ast.stmt]):
    """Module-level statements, including those under ``if``/``try`` (optional imports)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_statements(node.body)
            yield from _top_statements(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_statements(node.body)
            for h in node.handlers:
                yield from _top_statements(h.body)


def find_class(module: str, name: str, depth: int = 0) -> tuple[str, Path, ast.ClassDef]:
    """(defining module, its file, the class node) of ``module.name``, following re-exports."""
    if depth > 12:
        raise NotFound(f"{module}.{name}: too many re-exports")
    path = module_file(module)
    if path is None:
        raise NotFound(f"no module {module}")
    tree = _tree(path)
    for node in _top_statements(tree.body):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, path, node
    for node in _top_statements(tree.body):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    src = _absolute(module, path, node)
                    if module_file(f"{src}.{alias.name}") is not None and module_file(src) is None:
                        raise NotFound(f"{module}.{name} is a module, not a class")
                    return find_class(src, alias.name, depth + 1)
    if module_file(f"{module}.{name}") is not None:
        raise NotFound(f"{module}.{name} is a module, not a class")
    raise NotFound(f"{module} has no class {name}")


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return REQUIRED
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None  # a default computed at run time: its type is unknown


def _init_params(fn: ast.FunctionDef) -> tuple[dict[str, Param], bool]:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params: dict[str, Param] = {}
    for arg, d in zip(positional[1:], defaults[1:]):  # without self
        params[arg.arg] = Param(arg.arg, _literal(d), ast.unparse(arg.annotation) if arg.annotation else None)
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        params[arg.arg] = Param(arg.arg, _literal(d), ast.unparse(arg.annotation) if arg.annotation else None)
    return params, a.kwarg is not None


def _class_attributes(node: ast.ClassDef) -> dict[str, Any]:
    out = {}
    for stmt in node.body:
        targets = (
            stmt.targets
            if isinstance(stmt, ast.Assign)
            else [stmt.target]
            if isinstance(stmt, ast.AnnAssign)
            else []
        )
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        for t in targets:
            if isinstance(t, ast.Name) and value is not None:
                v = _literal(value)
                if v is not REQUIRED and v is not None:
                    out[t.id] = v
    return out


def _base_ref(module: str, path: Path, base: ast.expr) -> tuple[str, str] | None:
    """(module, class name) a base-class expression refers to, or None."""
    if isinstance(base, ast.Name):
        tree = _tree(path)
        for node in _top_statements(tree.body):
            if isinstance(node, ast.ClassDef) and node.name == base.id:
                return module, base.id
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == base.id:
                        return _absolute(module, path, node), alias.name
        return None
    if isinstance(base, ast.Attribute):
        parts = ast.unparse(base).split(".")
        head, cls = parts[:-1], parts[-1]
        tree = _tree(path)
        for node in _top_statements(tree.body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name) == head[0]:
                        return ".".join([alias.name, *head[1:]]), cls
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == head[0]:
                        return ".".join([_absolute(module, path, node), alias.name, *head[1:]]), cls
    return None


def _from_source(module: str, name: str, depth: int = 0) -> Signature:
    where, path, node = find_class(module, name)
    sig = Signature(f"{where}.{name}", attributes=_class_attributes(node))
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    own_kwargs = True
    if init is not None:
        sig.params, own_kwargs = _init_params(init)
    if own_kwargs:
        # **kwargs (or no __init__ at all): the first base class that we can read says the rest.
        sig.open = True
        for base in node.bases:
            ref = _base_ref(where, path, base)
            if ref is None or ref[1] in _OPAQUE_BASES or depth > 8:
                continue
            try:
                parent = _from_source(*ref, depth=depth + 1)
            except NotFound:
                continue
            for k, p in parent.params.items():
                sig.params.setdefault(k, p)
            for k, v in parent.attributes.items():
                sig.attributes.setdefault(k, v)
            sig.open = parent.open
            break
    else:
        # A class attribute may still come from a base (EGRA's VIEWS are MGCN's).
        for base in node.bases:
            ref = _base_ref(where, path, base)
            if ref is None or ref[1] in _OPAQUE_BASES or depth > 8:
                continue
            try:
                parent = _from_source(*ref, depth=depth + 1)
            except NotFound:
                continue
            for k, v in parent.attributes.items():
                sig.attributes.setdefault(k, v)
            break
    return sig


def _from_import(target: str) -> Signature:
    """The slow path: import the class and read its signature (follows ``**kwargs`` up the MRO)."""
    from hydra.utils import get_class

    cls = get_class(target)
    sig = Signature(target, attributes={k: v for k, v in vars(cls).items() if isinstance(v, tuple)})
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters
        for pname, p in params.items():
            if pname != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                default = REQUIRED if p.default is p.empty else p.default
                sig.params.setdefault(pname, Param(pname, default))
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return sig
        if klass.__name__ in _OPAQUE_BASES:
            break
    sig.open = True
    return sig


def class_names(module: str) -> list[str]:
    """Names of the classes ``module`` defines or imports (for "did you mean")."""
    path = module_file(module)
    if path is None:
        return []
    names = []
    for node in _top_statements(_tree(path).body):
        if isinstance(node, ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname or a.name for a in node.names if (a.asname or a.name)[:1].isupper()]
    return sorted(set(names))


def _installed(top: str) -> bool:
    """Whether a top-level module exists at all (with or without Python source)."""
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _lazy(module: str) -> bool:
    """Whether ``module`` makes names at run time (a module-level ``__getattr__``)."""
    path = module_file(module)
    return path is not None and any(
        isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in _tree(path).body
    )


@functools.lru_cache(maxsize=128)
def signature(target: str) -> Signature:
    """The constructor of the class ``target`` names (a dotted path). Raises :class:`NotFound`
    when no such class exists."""
    module, _, name = target.rpartition(".")
    if not module:
        raise NotFound(f"{target!r} is not a dotted path module.Class")
    try:
        return _from_source(module, name)
    except NotFound:
        if module_file(module) is None and not _installed(module.split(".")[0]):
            raise  # not even the package is installed
        if module_file(module) is not None and not _lazy(module):
            raise
        # A compiled module or names made at run time: only importing tells.
        try:
            return _from_import(target)
        except Exception:
            raise NotFound(f"cannot import {target}") from None
    except (OSError, SyntaxError, UnicodeDecodeError):
        return _from_import(target)


@functools.lru_cache(maxsize=64)
def constant(module: str, name: str) -> Any:
    """The value of the module-level constant ``module.name``, read from source (a literal,
    or the keys of a dict literal whose values are not), e.g. the choices a model accepts."""
    path = module_file(module)
    if path is None:
        raise NotFound(f"no module {module}")
    for node in _top_statements(_tree(path).body):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            try:
                return ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                if isinstance(node.value, ast.Dict):
                    return tuple(ast.literal_eval(k) for k in node.value.keys if k is not None)
                raise NotFound(f"{module}.{name} is not a literal") from None
    raise NotFound(f"{module} has no constant {name}")
