"""Notebook parameters: what a notebook declares, how command-line values are read, what is accepted.

A suite notebook declares its parameters in a cell tagged ``parameters`` (papermill's convention).
:func:`notebook_parameters` reads them; :func:`parse_parameter_value` and
:func:`load_parameter_file` read ``-p KEY VALUE`` and ``-f params.yaml`` values; and
:func:`check_parameters` refuses, before any kernel starts, a value of the wrong type or out of
range (:data:`PARAMETER_RULES`), with one line naming the parameter. Nothing is converted or clamped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RESERVED", "PARAMETER_RULES", "notebook_parameters", "parse_parameter_value", "load_parameter_file",
           "check_parameters"]

#: Set by the runner itself (``--out``), never by a user.
RESERVED = ("results_dir",)


def notebook_parameters(notebook: Any) -> dict[str, dict[str, Any]]:
    """The parameters ``notebook`` (a :class:`~probelib.runner.Notebook` or a path) declares in its
    ``parameters`` cell (papermill's ``inspect_notebook``).

    Maps each name to ``{"name", "inferred_type_name", "default", "help"}`` (``default`` is source text).
    """
    import papermill

    path = Path(getattr(notebook, "path", notebook))
    return papermill.inspect_notebook(str(path))


def parse_parameter_value(value: str) -> Any:
    """Convert a ``-p KEY VALUE`` string as papermill's command line does, and more strictly.

    ``True``/``False``/``None`` (any case: ``-p smoke false`` means False) become those values,
    integers and floats become numbers, anything else stays a string (use ``-r`` for a raw
    string, or ``-f params.yaml`` for lists and dicts). The value's type is then checked
    against the notebook's parameter by :func:`check_parameters`.
    """
    word = value.strip().lower()
    if word in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[word]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# What each notebook parameter may hold: (types, check or None, what the check demands). A value
# of another type, or one the check refuses, stops the run before any kernel starts; nothing is
# clamped. Parameters not listed here must have the type of their default in the notebook.
_LIST = (list, tuple)


def _finite_pos(v) -> bool:
    return math.isfinite(v) and v > 0


def _ints(lo: int, hi: int | None = None) -> Callable[[Any], bool]:
    return lambda v: all(lo <= i and (hi is None or i <= hi) for i in (v if isinstance(v, _LIST) else [v]))


def _names(valid: Callable[[], Iterable[str]]) -> Callable[[Any], bool]:
    return lambda v: all(n in set(valid()) for n in (v if isinstance(v, _LIST) else [v]))


def _corruption_names() -> list[str]:
    from probelib.corruptions import corruption_names
    return corruption_names(extra=True)


def _methods() -> list[str]:
    from probelib.training import METHODS
    return list(METHODS)


_ARMS = ("source", "adabn", "adabn+aug")
_ALL_ARMS = (*_ARMS, "norm", "tent")  # a study's arms: Burns & Steinhardt's and TENT's
PARAMETER_RULES: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None, str]] = {
    "smoke": ((bool,), None, "True or False"),
    "adabn": ((bool,), None, "True or False"),
    "dataset": ((str,), None, "a dataset name such as 'mnist5kwo9'"),
    "device": ((str, type(None)), None, "None, 'cpu', 'cuda', 'cuda:<index>' or 'mps'"),
    "eps": ((float, int), _finite_pos, "a finite number > 0"),
    "alpha": ((float,), lambda v: 0 < v < 1, "a number in (0, 1)"),
    "momentum": ((float, int, type(None)), lambda v: v is None or 0 < v <= 1, "None or a number in (0, 1]"),
    "severity": ((int,), _ints(1, 5), "an integer in 1..5"),
    "bn_severity": ((int,), _ints(1, 5), "an integer in 1..5"),
    "severities": (_LIST, lambda v: len(v) > 0 and _ints(1, 5)(v), "a non-empty list of integers in 1..5"),
    "tent_severities": (_LIST + (type(None),), lambda v: v is None or (len(v) > 0 and _ints(1, 5)(v)),
                        "None (every setting) or a non-empty list of integers in 1..5"),
    "n_images": ((int, type(None)), lambda v: v is None or v >= 1, "None (all) or an integer >= 1"),
    "n_points": ((int,), _ints(1), "an integer >= 1"),
    "n_bins": ((int,), _ints(1), "an integer >= 1"),
    "n_examples": ((int,), _ints(1), "an integer >= 1"),
    "n_show": ((int,), _ints(1), "an integer >= 1"),
    "attack_steps": ((int, type(None)), lambda v: v is None or v >= 1, "None or an integer >= 1"),
    "size": ((int, type(None)), lambda v: v is None or v >= 1, "None or an integer >= 1"),
    "seed": ((int,), _ints(0), "an integer >= 0"),
    "image_index": ((int,), _ints(0), "an integer >= 0"),
    "held_out": ((int, type(None)) + _LIST, lambda v: v is None or _ints(0)(v), "None, a class index >= 0 or a list of them"),
    "ks": (_LIST + (type(None),), lambda v: v is None or (len(v) > 0 and _ints(1)(v)), "None or a non-empty list of integers >= 1"),
    "ms": (_LIST, lambda v: len(v) > 0 and _ints(0)(v), "a non-empty list of integers >= 0"),
    "methods": (_LIST, lambda v: len(v) > 0 and _names(_methods)(v), "a non-empty list of training methods"),
    "feature_methods": (_LIST, lambda v: len(v) > 0 and _names(_methods)(v), "a non-empty list of training methods"),
    "chance_methods": (_LIST, lambda v: len(v) > 0 and _names(_methods)(v), "a non-empty list of training methods"),
    "corruption": ((str,), _names(_corruption_names), "a corruption name"),
    "bn_corruption": ((str,), _names(_corruption_names), "a corruption name"),
    "corruptions": (_LIST + (type(None),), lambda v: v is None or (len(v) > 0 and _names(_corruption_names)(v)),
                    "None (all) or a non-empty list of corruption names"),
    "arm": ((str,), _names(lambda: _ARMS), f"one of {', '.join(_ARMS)}"),
    "arms": (_LIST, lambda v: len(v) > 0 and _names(lambda: _ALL_ARMS)(v), f"a non-empty list of {', '.join(_ALL_ARMS)}"),
    "exclude": (_LIST, lambda v: len(v) > 0 and _names(lambda: ("last", "first"))(v), "a list of 'last', 'first'"),
    "spaces": (_LIST, lambda v: len(v) > 0 and _names(lambda: ("pixel", "feature"))(v),
               "a non-empty list of 'pixel', 'feature'"),
    "borders": (_LIST, lambda v: len(v) > 0 and _names(lambda: ("none", "black", "white"))(v),
                "a list of 'none', 'black', 'white'"),
}
_TYPE_WORDS = {bool: "True/False", int: "an integer", float: "a number", str: "a string", list: "a list",
               tuple: "a list", type(None): "None", dict: "a mapping"}


def _literal(default_text: str) -> tuple[bool, Any]:
    """``(True, value)`` when a parameters-cell default is a plain literal, else ``(False, None)``."""
    import ast
    try:
        return True, ast.literal_eval(default_text)
    except (ValueError, SyntaxError):
        return False, None


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a notebook parameter
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


_ELEMENTS = {**{k: int for k in ("severities", "tent_severities", "ms", "ks", "held_out")},
             **{k: str for k in ("methods", "feature_methods", "chance_methods", "corruptions", "arms", "exclude",
                                 "borders", "spaces")}}


def _rule_holds(key: str, value: Any) -> bool:
    """Whether ``value`` satisfies :data:`PARAMETER_RULES` ``[key]`` (type, element type, range, finite)."""
    types, check, _ = PARAMETER_RULES[key]
    if not _type_ok(value, types):
        return False
    if isinstance(value, _LIST) and key in _ELEMENTS:
        kind = _ELEMENTS[key]
        if not all(isinstance(i, kind) and not isinstance(i, bool) for i in value):
            return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    try:
        return check is None or bool(check(value))
    except (TypeError, ValueError):
        return False


def check_parameters(values: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, with one line naming the parameter, a value of the wrong type or out of range.

    ``values``: the overrides (``-p``/``-r``/``-f``); ``declared``: per notebook stem, its
    parameters cell (:func:`notebook_parameters`). For each notebook declaring the name, the
    rule of :data:`PARAMETER_RULES` applies when the notebook's own default satisfies it (so a
    notebook that means something else by the name is not held to it); otherwise the value must
    have the type of the default (an int is accepted for a float; a None default takes anything).
    Non-finite floats are always refused. Nothing is converted or clamped.
    """
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"parameter {key}={value!r} is refused: it must be a finite number; nothing was run")
        for stem, params in declared.items():
            if key not in params:
                continue
            default_text = str(params[key].get("default", "None"))
            literal, default = _literal(default_text)
            if key in PARAMETER_RULES and (not literal or _rule_holds(key, default)):
                if not _rule_holds(key, value):
                    raise ValueError(f"parameter {key}={value!r} is refused: {key} must be "
                                     f"{PARAMETER_RULES[key][2]} (notebook {stem}); nothing was run")
                continue
            if not literal or default is None:
                continue
            expected = type(default)
            types = (float, int) if expected is float else _LIST if expected in _LIST else (expected,)
            if not _type_ok(value, types):
                raise ValueError(f"parameter {key}={value!r} is refused: notebook {stem} expects "
                                 f"{_TYPE_WORDS.get(expected, expected.__name__)} (its default is "
                                 f"{default_text}); nothing was run")
        if key == "device" and value is not None:
            from probelib._util import default_device
            try:
                default_device(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"parameter device={value!r} is refused: {err}; nothing was run") from None
        if key == "dataset" and isinstance(value, str):
            from probelib.data import parse_name
            parse_name(value)



def load_parameter_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a papermill-style YAML (or JSON) parameter file: a mapping of parameter name to value."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {str(path)!r} does not exist; -f expects a YAML file "
                                "such as 'epochs: 3' one parameter per line")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # includes Python tags (!!python/...), which safe_load never constructs
        raise ValueError(f"parameter file {str(path)!r} is not plain YAML ({str(err).splitlines()[0]}); write one "
                         "'name: value' per line with plain values (numbers, strings, lists; no !!python tags)") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"parameter file {str(path)!r} must hold a mapping of parameter names to values "
                         f"(e.g. 'epochs: 3'), got {type(data).__name__}")
    return data


