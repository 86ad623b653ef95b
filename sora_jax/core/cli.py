"""What a person sees at a command line: one-line errors, a log file, a progress bar.

  cli.run(main)                  app.run, with flags (a --config file and its overrides
                                 included) checked up front: bad input is one line, exit 2
  cli.quiet()                    first in main: library INFO/WARNING (orbax, grain, jax,
                                 absl, Python warnings) leave the terminal, which keeps
                                 errors, unless --verbosity, --alsologtostderr or
                                 --logtostderr is given
  cli.log_to_file(dir, name)     ... and go to DIR/NAME.log from then on
  cli.say(msg)                   an informative line: printed by process 0, and logged
  cli.progress(total, ...)       a tqdm bar on process 0 (none elsewhere)
  cli.one_process()              a launcher that must not start jax (its children need
                                 the accelerators): the above take it as process 0

Every command uses these, so the rule is one code path.
"""

from __future__ import annotations

import io
import logging as py_logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from absl import app, flags, logging
from tqdm import tqdm

FLAGS = flags.FLAGS


def _config_flag_names() -> list[str]:
  """The flags defined with config_flags.DEFINE_config_file (their values load lazily)."""
  return [
    name
    for name, f in FLAGS._flags().items()  # noqa: SLF001 (absl has no public iteration by type)
    if type(f).__name__ == "_ConfigFlag"
  ]


def _config_args() -> set[str]:
  return {f"--{name}" for name in _config_flag_names()}


def _one_line(e: BaseException) -> str:
  return " ".join((str(e).strip() or type(e).__name__).split())


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with every failure (unknown flag, bad value, missing or
  broken --config file, override of a field the config lacks) as one line."""
  try:
    rest = FLAGS(list(argv))
  except flags.Error as e:
    sys.exit(f"error: {_one_line(e)} (--help lists the flags)")
  except (AttributeError, KeyError) as e:  # An override naming a field the config lacks.
    text = str(e).replace("\\'", "'").replace("\\n", " ")
    names = re.findall(r"'([^'\\]+)'", text)
    field = names[0] if names else _one_line(e)
    bad = [a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]]
    given = next((a for a in bad if f".{field}." in a.split("=")[0] + "."), " ".join(bad))
    hint = re.search(r"Did you mean \"?([^\"?]+)\"? instead", text)
    hint = f" (did you mean {hint.group(1)!r}?)" if hint else ""
    sys.exit(f"error: {given}: the config has no field {field!r}{hint}")
  except Exception as e:  # noqa: BLE001 (a config file's own error: its message, on one line)
    given = [a for a in argv[1:] if a.split("=")[0] in _config_args()]
    given = given[-1] if given else "flags"  # The last --config given is the one in use.
    if isinstance(e, OSError) and "No such file" in str(e):
      sys.exit(f"error: {given}: no such file")
    sys.exit(f"error: {given}: {type(e).__name__}: {_one_line(e)}")
  for name in _config_flag_names():
    try:
      value = getattr(FLAGS, name)
      if value is not None:
        value.keys()  # A file that failed to load raises on first use: make that now.
    except OSError as e:
      path = FLAGS[name].config_filename if hasattr(FLAGS[name], "config_filename") else ""
      reason = "no such file" if "No such file" in str(e) else _one_line(e).split(": ", 1)[-1]
      given = path or next((a for a in argv if a.startswith(f"--{name}=")), f"--{name}")
      sys.exit(f"error: --{name}={given.split('=', 1)[-1]}: {reason}")
    except Exception as e:  # noqa: BLE001 (a config file's own bug: its message, on one line)
      sys.exit(f"error: --{name}: the config file failed: {type(e).__name__}: {_one_line(e)}")
  return rest


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` with `parse_flags`."""
  app.run(main, flags_parser=parse_flags)


def require(argv: Sequence[str], **flags_and_hints: str) -> None:
  """Exits with one line on positional arguments, or on a flag of `flags_and_hints` left
  unset (its hint follows "is required", e.g. ", e.g. --config=experiments/demo.py")."""
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {list(argv[1:])}")
  for name, hint in flags_and_hints.items():
    value = FLAGS[name].value
    if value is None or (isinstance(value, str) and not value):
      sys.exit(f"error: --{name} is required{hint}")


_ONE_PROCESS = False


def one_process() -> None:
  """Declares this program one process that never starts jax itself (a launcher whose
  training children need the accelerators: on a GPU the first process to start jax
  preallocates most of its memory). `say`, `log_to_file` and `progress` then take it
  as process 0 instead of asking jax, which would start it."""
  global _ONE_PROCESS
  _ONE_PROCESS = True


def _process_index() -> int:
  """jax.process_index(), or 0 for a program that is one process without asking jax:
  one that declared so (`one_process`) or never imported jax (e.g. sora_jax.scaling)."""
  jax = sys.modules.get("jax")
  return 0 if jax is None or _ONE_PROCESS else jax.process_index()


def verbose() -> bool:
  """Whether the user asked for library logs on the terminal."""
  return any(
    FLAGS[name].present for name in ("verbosity", "alsologtostderr", "logtostderr") if name in FLAGS
  )


def quiet() -> None:
  """Holds library logs (and Python warnings) back from the terminal until `log_to_file`.

  Call first in main, before jax starts; the terminal keeps ERROR and above. Does
  nothing under `verbose()`.
  """
  py_logging.captureWarnings(True)
  if verbose():
    return
  logging.get_absl_handler().python_handler.stream = io.StringIO()
  if not FLAGS["stderrthreshold"].present:
    FLAGS.stderrthreshold = "error"  # Also written to stderr: errors, not INFO or WARNING.
  warnings.showwarning = _warning_to_log


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
  del file, line
  logging.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)


def log_to_file(directory: str, program: str) -> str:
  """Writes the held-back and all later logs to DIRECTORY/PROGRAM.log; returns the path.

  Process K > 0 writes PROGRAM.process_K.log. Under `verbose()` logs stay on the
  terminal, as absl's flags say.
  """
  k = _process_index()
  path = os.path.join(directory, f"{program}.log" if k == 0 else f"{program}.process_{k}.log")
  handler = logging.get_absl_handler().python_handler
  held = handler.stream
  if not isinstance(held, io.StringIO):
    return path
  os.makedirs(directory, exist_ok=True)
  stream = open(path, "a")  # noqa: SIM115 (lives as long as the process)
  stream.write(held.getvalue())
  stream.flush()
  handler.stream = stream
  return path


def say(message: str) -> None:
  """An informative line for the person waiting: stdout on process 0, and the log."""
  logging.info("%s", message)
  if _process_index() == 0:
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def progress(total: int, *, initial: int = 0, desc: str = "", unit: str = "step") -> tqdm:
  """A progress bar (count, rate, time left) on process 0; disabled elsewhere.

  Off a terminal it redraws at most once a minute, so logs of batch jobs stay short.
  """
  tty = sys.stderr.isatty()
  return tqdm(
    total=total,
    initial=initial,
    desc=desc,
    unit=unit,
    disable=_process_index() != 0,
    mininterval=0.5 if tty else 60.0,
    dynamic_ncols=True,
    smoothing=0.05,
  )
