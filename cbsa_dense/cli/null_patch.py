"""A process-wide fix of one jsonargparse behaviour: ``null`` given on the command line two or more subclass
levels deep parses as None (:func:`read_nested_null_as_yaml`). It wraps a private jsonargparse function
(listed in :mod:`cbsa_dense.cli.private_api`) after checking that it is the function it was written for."""

from __future__ import annotations

import functools
import inspect
import json

from jsonargparse import Namespace

from cbsa_dense.errors import UserError

__all__ = ["read_nested_null_as_yaml"]


def read_nested_null_as_yaml() -> None:
    """Make ``null`` given on the command line two or more subclass levels deep parse as None, for every argument.

    ``--model.init_args.encoder.init_args.pretrained null`` reached the encoder as the string ``'None'`` (and an
    ``int | None`` argument there failed with "expected int or null"), while the same ``null`` in a config file, in
    a top-level ``--x null`` or one level deep (``--model.init_args.weights null``) is None. The cause is in
    jsonargparse (4.53 and earlier; ``_typehints.adapt_class_type``): the outer subclass reads the value as YAML
    (``'null'`` -> None) and hands it to the inner class's parser as the text ``f"--{key}={value}"``, i.e.
    ``--encoder.init_args.pretrained=None``, and YAML reads ``None`` as a string. This wraps that function once
    (idempotent) so that a value holding None is handed on as its YAML text (``null``, ``[1, null]``); every
    other value is handed on exactly as before.

    It wraps a private jsonargparse function (:mod:`cbsa_dense.cli.private_api`), so it first checks that the
    function is the one it was written for (:func:`_not_the_patched_function`: its name and module, its first
    parameter ``value``, ``NestedArg``'s fields, and the line that hands the value on as text); a jsonargparse
    release where any of that differs is refused with one line naming the installed version (a
    :class:`~cbsa_dense.errors.UserError`: the environment), instead of being patched blindly or left silently
    unpatched. ``tests/test_cli_null.py`` then says whether that release still needs the patch.
    """
    import jsonargparse
    from jsonargparse import _typehints

    original = getattr(_typehints, "adapt_class_type", None)
    nested_arg = getattr(_typehints, "NestedArg", None)
    if getattr(original, "_yaml_nested_null", False):
        return
    mismatch = _not_the_patched_function(original, nested_arg)
    if mismatch is not None:
        raise UserError(f"jsonargparse {getattr(jsonargparse, '__version__', '(unknown version)')} is not supported: "
                        f"{mismatch}; cbsa_dense patches jsonargparse._typehints.adapt_class_type of jsonargparse "
                        "4.53 so that a nested `null` on the command line parses as None (see "
                        "cbsa_dense.cli.null_patch.read_nested_null_as_yaml); install jsonargparse 4.53")

    @functools.wraps(original)
    def adapt_class_type(value, *args, **kwargs):
        init_args = value.get("init_args") if isinstance(value, dict | Namespace) else None
        if isinstance(init_args, nested_arg) and _holds_none(init_args.val):
            try:
                value["init_args"] = init_args._replace(val=json.dumps(init_args.val))
            except (TypeError, ValueError):     # not JSON-representable: handed on unchanged
                pass
        return original(value, *args, **kwargs)

    adapt_class_type._yaml_nested_null = True
    _typehints.adapt_class_type = adapt_class_type


#: The line of jsonargparse's ``adapt_class_type`` that :func:`read_nested_null_as_yaml` works around.
_PATCHED_LINE = 'f"--{init_args.key}={init_args.val}"'


def _not_the_patched_function(function, nested_arg) -> str | None:
    """Why ``function`` (with ``nested_arg``) is not the jsonargparse ``adapt_class_type`` that
    :func:`read_nested_null_as_yaml` wraps, in a few words; None when it is."""
    if function is None or nested_arg is None:
        return "jsonargparse._typehints has no adapt_class_type or NestedArg"
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"
    if name != "jsonargparse._typehints.adapt_class_type":
        return f"jsonargparse._typehints.adapt_class_type is {name}"
    try:
        parameters = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        parameters = []
    if parameters[:1] != ["value"]:
        return f"adapt_class_type takes ({', '.join(parameters)}), not (value, ...)"
    if tuple(getattr(nested_arg, "_fields", ())) != ("key", "val"):
        return f"NestedArg has the fields {getattr(nested_arg, '_fields', None)}, not (key, val)"
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):            # no source installed: the checks above are all there is
        return None
    if _PATCHED_LINE not in source:
        return f"adapt_class_type no longer hands a nested value on as {_PATCHED_LINE}"
    return None


def _holds_none(value) -> bool:
    """``value`` is None or a list/dict holding None at any depth."""
    if isinstance(value, dict):
        return any(_holds_none(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_none(v) for v in value)
    return value is None
