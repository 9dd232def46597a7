"""One line for a mistyped option or a bad value of ``lit-unlearn fit/validate/test``, with a "did you mean".

A model and a data module are ``X | None`` in LightningCLI's parser, so jsonargparse reports ``--model.lrr=1e-3`` as
a Union that "does not validate": ten lines of subtypes and namespaces around the one that matters, "Option 'lrr' is
not accepted". :func:`condense_parse_error` finds that line and says it as argparse says a bad option; a message it
does not recognise is returned whole, so nothing is ever hidden.
"""

import difflib
import inspect
import re
from importlib import import_module

_SECTION = re.compile(r'^Parser key "(?P<section>[\w.]+)":')
_CLASS = re.compile(r"Problem with given class_path '(?P<class_path>[\w.]+)':")
_UNKNOWN = re.compile(r"Option '(?P<key>\w+)' is not accepted")
_INNER_KEY = re.compile(r'^\s+Parser key "(?P<key>[\w.]+)":', re.MULTILINE)
_SINGLE = re.compile(r"Expected a (?P<what>.+?)\. Got value: (?P<value>.*)")
_LITERAL = re.compile(r"typing\.Literal\[(?P<choices>[^\]]*)\]")
_EXPECTED = re.compile(r"^\s+- Expected a <class '(?P<type>[\w.]+)'>", re.MULTILINE)
_GIVEN = re.compile(r"^\s+Given value: (?P<value>.*)$", re.MULTILINE)
_NEXT_ALTERNATIVE = re.compile(r"\n    - ")


def condense_parse_error(message: str) -> str:
    """The culprit of a jsonargparse Union error on ``--section.key``, in one line; any other message unchanged.

    >>> condense_parse_error("unrecognized arguments: --foo=1")
    'unrecognized arguments: --foo=1'
    """
    section = _SECTION.match(message)
    if section is None:
        return message
    option = f"--{section['section']}"
    klass = _CLASS.search(message)
    if klass is None:  # a plain option such as --trainer.max_epochs: a value of the wrong type
        return _wrong_value(option, message[section.end() :]) or message
    # The given class's own alternative only: the next bullet is another subtype's (a callback list also tries
    # lightning.Callback, which accepts no option at all).
    rest = message[klass.end() :]
    bullet = _NEXT_ALTERNATIVE.search(rest)
    detail = rest[: bullet.start()] if bullet else rest
    class_path = klass["class_path"]
    if unknown := _UNKNOWN.search(detail):
        key = unknown["key"]
        return f"{option}.{key}: {class_path} has no option '{key}'{_did_you_mean(key, _options(class_path), option)}"
    inner = _INNER_KEY.search(detail)
    if inner is None:
        return message
    return _wrong_value(f"{option}.{inner['key']}", detail[inner.end() :]) or message


def _wrong_value(option: str, block: str) -> str | None:
    """``--option=value: expected ...`` from the lines under a ``Parser key`` (None when they are of another shape)."""
    if single := _SINGLE.search(block):  # one expected type or set of values
        value = single["value"].strip()
        if literal := _LITERAL.fullmatch(single["what"]):
            choices = [c.strip().strip("'\"") for c in literal["choices"].split(",")]
            return f"{option}={value}: expected one of {', '.join(choices)}{_did_you_mean(value, choices, option, '=')}"
        return f"{option}={value}: expected {_type_name(single['what'])}"
    types = [m["type"] for m in _EXPECTED.finditer(block)]  # a Union of types, e.g. float | None
    given = _GIVEN.search(block)
    if not types or given is None:
        return None
    return f"{option}={given['value'].strip()}: expected {' or '.join(map(_type_name, types))}"


def _type_name(expected: str) -> str:
    """``<class 'float'>`` or ``float`` → ``float``, ``NoneType`` → ``None``; any other spelling as it is."""
    name = expected.removeprefix("<class '").removesuffix("'>")
    return "None" if name == "NoneType" else name


def _options(class_path: str) -> list[str]:
    """The init parameters of ``class_path`` and, through ``**kwargs``, of its bases (as jsonargparse resolves them)."""
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        params = inspect.signature(base.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _did_you_mean(word: str, candidates: list[str], prefix: str, joiner: str = ".") -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {prefix}{joiner}{close[0]}?)" if close else ""
