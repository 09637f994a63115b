"""Command lines into configs: absl flags and ml_collections.config_flags, one-line errors.

Entry points load a config file with `--config=path/to/file.py[:arg] --config.a.b=v`. A typo in
a config file or in an override is a `UserError` naming the key and listing the valid ones, and
a value of the wrong type one naming the key and the type expected.
"""

from __future__ import annotations

import pathlib
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from gfm_jax.config import ConfigDict
from gfm_jax.errors import UserError

# Command lines. Entry points define `--config` with config_flags.DEFINE_config_file, which loads
# `path[:arg]` (arg goes to get_config) and applies `--config.a.b=v` overrides, each parsed to the
# type of the value it replaces. `parse_flags` runs absl's parser and turns whatever it raises
# into one UserError line that names the flag, key or file.
CONFIG_FLAG = "config"
CONFIG_EXAMPLE = "configs/pretrain/tiny.py"


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str], usage: str = "") -> list[str]:
    """Parses `argv` (program name first) into `flag_values`; returns the positional arguments.

    With `usage`, `-h` / `--help` prints it and the flags, then exits. A parse error (an unknown
    flag or config key, a value of the wrong type, a missing config file, a config file that
    raises) is a one-line UserError.
    """
    argv = list(argv)
    if usage and any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(f"{usage.strip()}\n\n{flag_values.get_help()}")
        raise SystemExit(0)
    try:
        rest = _run_parser(flag_values, argv)
    except Exception as e:  # absl, config_flags and the config file itself raise many types
        raise _user_error(e, argv, CONFIG_FLAG in flag_values) from None
    spec = _flag_text(argv, CONFIG_FLAG)
    if CONFIG_FLAG in flag_values and spec is not None:
        _check_loaded(flag_values[CONFIG_FLAG].value, spec)
        _check_tuple_overrides(flag_values[CONFIG_FLAG].value, spec, argv)
    return rest


def _check_tuple_overrides(config: ConfigDict, spec: str, argv: Sequence[str]) -> None:
    """config_flags takes any text for a tuple key, as a tuple of one string: refuses that
    where the file's default holds numbers or tuples (`--config.seeds=x`)."""
    keys = _override_keys(argv)
    defaults = _load_file(spec) if keys else None
    for key in keys:
        default, value = _get(defaults, key), _get(config, key)
        if not (isinstance(default, tuple) and default and isinstance(value, tuple)):
            continue
        if all(not isinstance(d, str) for d in default) and any(isinstance(v, str) for v in value):
            raise UserError(_bad_value(defaults, key, _flag_text(argv, f"{CONFIG_FLAG}.{key}")))


def _get(config: ConfigDict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def parse_mode(
    prog: str,
    modes: Sequence[str],
    argv: Sequence[str],
    define: Callable[[str, flags.FlagValues, list[str]], None],
    usage: str,
) -> tuple[str, flags.FlagValues, list[str]]:
    """(mode, its parsed flags, positional arguments) of `prog MODE --flag ...` (`argv`
    without the program): `define(mode, flag_values, command)` declares the mode's flags."""
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        raise SystemExit(0)
    mode = argv[0] if argv else ""
    if mode not in modes:
        given = f"unknown mode {mode!r}" if mode else "no mode given"
        raise UserError(f"{given}; choose one of {', '.join(modes)} (see --help)")
    command = [f"{prog} {mode}", *argv[1:]]
    flag_values = flags.FlagValues()
    define(mode, flag_values, command)
    return mode, flag_values, parse_flags(flag_values, command, usage=usage)[1:]


def _run_parser(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    # config_flags loads every config file as the module `config_config`; a fresh one each time,
    # so that in one process a file never sees names left by the file loaded before it.
    sys.modules.pop(f"{CONFIG_FLAG}_config", None)
    with warnings.catch_warnings():  # config_flags' loader; nothing a user can change
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        return flag_values(argv)


def _config_flag(argv: list[str]) -> tuple[flags.FlagValues, flags.FlagHolder]:
    """A fresh FlagValues with only `--config`, for the command line `argv`."""
    flag_values = flags.FlagValues()
    # lock_config (the default): config files and overrides change values, never add keys.
    holder = config_flags.DEFINE_config_file(CONFIG_FLAG, flag_values=flag_values, sys_argv=argv)
    return flag_values, holder


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads `path[:arg]` with `--config.a.b=v` overrides as a command line does; locked."""
    items = [f"--{CONFIG_FLAG}.{o.removeprefix('--').removeprefix('config.')}" for o in overrides]
    argv = ["load_config", f"--{CONFIG_FLAG}={spec}", *items]
    flag_values, holder = _config_flag(argv)
    parse_flags(flag_values, argv)
    return holder.value


def _load_file(spec: str) -> ConfigDict:
    """The config file alone, without overrides (to find which part of a command line failed)."""
    argv = ["load_config", f"--{CONFIG_FLAG}={spec}"]
    flag_values, holder = _config_flag(argv)
    _run_parser(flag_values, argv)
    _check_loaded(holder.value, spec)
    return holder.value


def _check_loaded(config: Any, spec: str) -> None:
    path = spec.partition(":")[0]
    if not pathlib.Path(path).is_file():
        raise UserError(f"config file {path!r} not found; pass e.g. --config={CONFIG_EXAMPLE}")
    if not isinstance(config, ConfigDict):  # config_flags holds a file it could not read, too
        raise UserError(f"config file {path}: get_config() must return a ConfigDict")


def _user_error(error: Exception, argv: Sequence[str], has_config: bool) -> UserError:
    """One line naming what in `argv` made absl's parser raise `error`, and the fix."""
    if isinstance(error, UserError):  # raised by a config file or a flag validator: already one
        return error
    spec = _flag_text(argv, CONFIG_FLAG) if has_config else None
    if spec is not None:
        try:
            config = _load_file(spec)  # is the file at fault, or what the command line adds?
        except UserError as e:
            return e
        except Exception as e:
            return UserError(f"config file {spec.partition(':')[0]}: {_describe(e)}")
        for key in _override_keys(argv):
            if unknown := _unknown_key(config, key):
                return UserError(unknown)
            if str(error).startswith(f"flag --{CONFIG_FLAG}.{key}="):
                return UserError(_bad_value(config, key, _flag_text(argv, f"{CONFIG_FLAG}.{key}")))
    text = _one_line(error)
    if required := re.match(r"flag --(\S+?)=None: Flag --\S+ must have a value other than", text):
        return UserError(f"--{required[1]} is required; see --help")
    return UserError(f"{text.rstrip('.')}; see --help")


def _unknown_key(config: ConfigDict, key: str) -> str | None:
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "<top>"
            valid = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none"
            return f"unknown config key {key!r} (under {where} the keys are: {valid})"
        node = node[part]
    return None


def _bad_value(config: ConfigDict, key: str, text: str | None) -> str:
    current = _get(config, key)
    hint = {
        bool: " (use true or false)",
        tuple: " (write a Python tuple, e.g. (2,-1,1) or ('a.fa','b.fa'))",
    }.get(type(current), "")
    kind = type(current).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    return f"config key {key!r} is {article} {kind}; got {text!r}{hint}"


def _describe(error: BaseException) -> str:
    """One line for an exception raised while loading a config file."""
    # absl and config_flags re-raise get_config's TypeError / ValueError with a traceback in the
    # message; the one the file raised is at the end of the chain.
    while error.__context__ is not None and (
        isinstance(error, flags.Error) or "Error whilst parsing config file" in str(error)
    ):
        error = error.__context__
    if isinstance(error, AttributeError) and "get_config" in str(error):
        return "it has no get_config(); see configs/ for examples"
    text = _one_line(error)
    if missing := re.search(r'Key "([^"]+)" does not exist', text):  # a locked ConfigDict's
        guess = re.search(r'Did you mean "([^"]+)"', text)
        hint = f" (did you mean {guess[1]!r}?)" if guess else ""
        return f"unknown key {missing[1]!r}{hint}; config files change the defaults, never add keys"
    if isinstance(error, TypeError) and "get_config()" in text:
        return f"{text} (the ':' argument after the file goes to get_config: drop or fix it)"
    return f"{type(error).__name__}: {text}; fix the file"


def _one_line(error: BaseException) -> str:
    # A locked ConfigDict raises AttributeError(KeyError(message)); KeyError's str() is a repr.
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split())


def _flag_text(argv: Sequence[str], name: str) -> str | None:
    """What the last `--name=V` or `--name V` in `argv` gives, or None."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        flag, eq, value = arg.partition("=")
        if flag in (f"-{name}", f"--{name}"):
            found = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return found


def _override_keys(argv: Sequence[str]) -> list[str]:
    prefix = f"{CONFIG_FLAG}."
    names = (a.lstrip("-").partition("=")[0] for a in argv if a.startswith("-"))
    return [n.removeprefix(prefix) for n in names if n.startswith(prefix)]
