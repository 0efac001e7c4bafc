"""`--config.a.b=value` command-line overrides, as ml_collections' config_flags.

config_flags needs absl flags; our CLI is argparse, so we take the same syntax
(`--config.key=value` or `--config.key value`) and parse each value by the type
of the field it replaces: bools accept true/false/1/0, tuples and lists take a
Python literal or a comma-separated string, None-valued fields take any literal.
A key that is not in the config is an error (a typo must not train silently).
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Sequence

PREFIX = "--config."


class OverrideError(ValueError):
  pass


def split_overrides(args: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """([(dotted key, raw value)], remaining args)."""
  pairs, rest = [], []
  args = list(args)
  i = 0
  while i < len(args):
    a = args[i]
    if a.startswith(PREFIX):
      key, eq, value = a[len(PREFIX):].partition("=")
      if not eq:
        if i + 1 >= len(args):
          raise OverrideError(f"{a} needs a value")
        value = args[i + 1]
        i += 1
      pairs.append((key, value))
    else:
      rest.append(a)
    i += 1
  return pairs, rest


def _literal(raw: str):
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def parse_value(raw: str, current):
  if isinstance(current, bool):
    low = raw.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise OverrideError(f"expected a bool, got '{raw}'")
  if isinstance(current, int):
    value = _literal(raw)
    if isinstance(value, bool) or not isinstance(value, int):
      raise OverrideError(f"expected an int, got '{raw}'")
    return value
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError as e:
      raise OverrideError(f"expected a float, got '{raw}'") from e
  if isinstance(current, str):
    return raw
  if isinstance(current, (tuple, list)):
    value = _literal(raw)
    if isinstance(value, str):
      value = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return type(current)(value)
  return _literal(raw)


def apply(config, pairs: Sequence[tuple[str, str]]):
  """Applies overrides in order; returns the config (changed in place)."""
  for key, raw in pairs:
    parts = key.split(".")
    node = config
    for p in parts[:-1]:
      if p not in node:
        raise OverrideError(f"--config.{key}: no field '{p}' in the config")
      node = node[p]
    leaf = parts[-1]
    if leaf not in node:
      raise OverrideError(f"--config.{key}: no field '{leaf}'; known: {sorted(node.keys())}")
    current = node[leaf]
    try:
      value = parse_value(raw, current)
    except OverrideError as e:
      raise OverrideError(f"--config.{key}: {e}") from None
    with node.ignore_type():
      node[leaf] = value
  return config


def accept_overrides(parser: argparse.ArgumentParser, dest: str = "config_overrides") -> None:
  """Makes `parser` collect --config.* arguments into `args.<dest>` as (key, value)
  pairs instead of rejecting them as unknown (also when it is a subcommand)."""
  parse_known = parser.parse_known_args

  def parse_known_args(args=None, namespace=None):
    pairs, rest = split_overrides(sys.argv[1:] if args is None else args)
    ns, extra = parse_known(rest, namespace)
    setattr(ns, dest, getattr(ns, dest, []) + pairs)
    return ns, extra

  parser.parse_known_args = parse_known_args
  parser.set_defaults(**{dest: []})
  note = ("--config.KEY=VALUE overrides any config field (e.g. --config.model.remat_policy=full, "
          "--config.train.global_batch_size=512); repeatable.")
  parser.epilog = f"{parser.epilog} {note}" if parser.epilog else note


def load_config_flag(parser: argparse.ArgumentParser, flag: str, spec: str):
  """`config_lib.load_config(spec)`; an unknown config ends the program with the
  parser's one-line usage error naming `flag` (argparse's exit status 2)."""
  from showo2_jax import config_lib  # pylint: disable=import-outside-toplevel
  try:
    return config_lib.load_config(spec)
  except config_lib.UnknownConfigError as e:
    parser.error(f"{flag}: {e}")
