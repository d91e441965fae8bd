"""The checks of the command line made before Hydra composes the config: modes, Hydra's own
settings, plugin options, config keys and values, output folders. Each ends in one line naming
what is wrong and what to give instead, before anything is written."""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
from pathlib import Path
from typing import Any, Callable, NoReturn

from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .claim import check_output_dir, check_sweep_subdir
from .config import (CONF_DIR, ConfigError, from_dictconfig, invalid_value_message, is_memory_gb, known_keys, list_keys,
                     unknown_key_message)
from .errors import first_line, stderr
from .rundir import LOG


def config_groups(config_dir: str | None = None) -> dict[str, list[str]]:
    """{group: its options} of the shipped configs, with those of --config-dir's folder added."""
    groups: dict[str, set[str]] = {}
    for folder in [CONF_DIR] + ([Path(config_dir)] if config_dir else []):
        for d in folder.iterdir():
            if d.is_dir() and any(d.glob("*.yaml")):  # not __pycache__
                groups.setdefault(d.name, set()).update(p.stem for p in d.glob("*.yaml"))
    return {name: sorted(options) for name, options in groups.items()}


REQUIRED_GROUPS = ("model", "optim", "data")  # conf/config.yaml's defaults that every run composes


def dotted_default(key: str) -> Any:
    """The default of a config key, e.g. 0.1 for 'optim.lr'."""
    from .config import Config, dotted

    return dotted(Config().to_dict(), key)


def parse_hydra_args(argv: list[str]) -> tuple[Any, list[str]]:
    """Hydra's own argument parser, raising ConfigError where it would print its whole usage
    text (e.g. for --cfg jobb: its line already names the valid choices)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> NoReturn:
        raise ConfigError(f"{message}; see backprop-lab --help")

    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_known_args(argv)


def split_overrides_message(argv: list[str], overrides: list[str], unknown: list[str]) -> str:
    """Hydra's argparse takes the KEY=VALUE overrides as one group and refuses any after an
    option that ends it: name that option, and the command line that works."""
    # argparse itself tells where the group ended: at the first prefix of argv with a stray.
    first = len(argv) - 1
    for i in range(len(argv)):
        try:
            if parse_hydra_args(argv[: i + 1])[1]:
                first = i
                break
        except ConfigError:  # a prefix may end inside an option, e.g. before --cfg's value
            continue
    stray, before = argv[first], argv[first - 1]
    if before.startswith("-") and "=" not in before:
        where = f"comes after {before}, apart from the overrides before it"
    else:
        option = before if before.startswith("-") else f"{argv[max(first - 2, 0)]} {before}"
        where = f"follows an option's value ({option})"
    all_overrides = overrides + [u for u in unknown if not u.startswith("-")]
    options = list(argv)
    for o in all_overrides:
        options.remove(o)
    return (f"{stray!r} {where}: Hydra takes the KEY=VALUE overrides as one group; give them together, "
            f"e.g. backprop-lab {' '.join(options + all_overrides)}")


def several_values_message(o: Any) -> str:
    """Hydra's 'Ambiguous value' for KEY=A,B without -m, in one line, with what was most
    likely meant: a list for a list key, else a sweep."""
    from hydra.core.override_parser.types import ValueType

    line, key = o.input_line, o.key_or_group
    if o.value_type != ValueType.SIMPLE_CHOICE_SWEEP:  # range(...), glob(...), choice(...)
        return f"{line} is a sweep: add -m to run it (backprop-lab -m {line})"
    if key in list_keys():
        return f"{line} gives several values: for a list write {key}=[{line.split('=', 1)[1]}]; to sweep over them, add -m"
    return f"{line} gives several values, and one run takes one: to sweep over them, add -m (backprop-lab -m {line})"


def register_launcher(sweep: bool) -> None:
    """hydra/launcher=vectorized, whether or not Hydra's plugin scan finds it: an editable install
    (make setup) maps the package in a way that the scan (pkgutil over hydra_plugins' folders)
    does not see. The import registers the launcher's config (cheap); a sweep also registers
    its class with Hydra's plugins, which a sweep loads anyway."""
    from hydra_plugins.backprop_lab_vectorized import vectorized_launcher

    if sweep:
        from hydra.core.plugins import Plugins

        Plugins.instance().register(vectorized_launcher.VectorizedLauncher)


def hydra_group_options(group: str) -> tuple[list[str], list[str]]:
    """The options Hydra finds for one of its own groups (hydra/launcher: basic, joblib, ...),
    and its groups. Plugins add theirs when imported, so they are loaded first: a third of a
    second, spent only when such a group is named."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.plugins import Plugins

    Plugins.instance()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    return loader.get_group_options(group), [f"hydra/{g}" for g in loader.list_groups("hydra")]


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Settings of the Optuna sweeper and the joblib launcher that their plugins take without a check
# and then fail on mid-sweep with a traceback (or, for a wrong type, with many lines).
PLUGIN_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hydra.sweeper.n_trials": (lambda v: _whole(v) and v >= 1, "a whole number of trials >= 1"),
    "hydra.sweeper.n_jobs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1 of trials proposed at once"),
    "hydra.sweeper.direction": (lambda v: v in ("maximize", "minimize"),
                                "maximize or minimize (backprop-lab's jobs return the test accuracy: maximize)"),
    "hydra.sweeper.sampler.seed": (lambda v: v is None or _whole(v), "a whole number, or null for a random seed"),
    "hydra.sweeper.max_failure_rate": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                                       "a fraction from 0 to 1"),
    "hydra.launcher.n_jobs": (lambda v: _whole(v) and v != 0,
                              "a whole number of parallel jobs: 1, 2, ..., or -1 for one per core"),
    "hydra.launcher.memory_gb": (is_memory_gb, "a number of gigabytes > 0, or null"),
    "hydra.launcher.plots": (lambda v: isinstance(v, bool), "true or false"),
}


def check_overrides(argv: list[str]) -> Path | None:
    """Reject what Hydra would stop on, or act on wrongly, before it starts, with one line
    each: stray options, unknown keys and group options, several values without -m, run
    folders that cannot be made. Returns the hydra.run.dir folder to claim, if one is named
    (the last one given: Hydra uses that).

    Hydra would stop on most of them too, but with several lines of usage text, OmegaConf
    detail or a traceback. Values are checked later, per job, by config.from_container.
    """
    args, overrides = parse_overrides(argv)
    makes_dirs = not (args.help or args.hydra_help or args.cfg or args.info is not None or args.shell_completion)
    groups = config_groups(args.config_dir)
    to_claim: Path | None = None
    for o in overrides:
        named = check_override(o, args, groups, makes_dirs)
        if o.key_or_group == "hydra.run.dir" and not o.is_delete():
            to_claim = named  # the last one given is the folder Hydra uses
    if not (args.config_name or args.config_dir):
        check_hydra_settings(overrides)
    return to_claim


def parse_overrides(argv: list[str]) -> tuple[Any, list[Any]]:
    """Hydra's arguments and its parsed overrides, or ConfigError for a stray option or word, an
    override without '=', or one Hydra's grammar cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args, unknown = parse_hydra_args(argv)
    unknown += [a for a in argv if a == "--"]  # argparse swallows it; Hydra's parser would not
    if unknown and "=" in unknown[0] and not unknown[0].startswith("-"):
        raise ConfigError(split_overrides_message(argv, args.overrides, unknown))
    if unknown and not unknown[0].startswith("-"):
        raise ConfigError(f"{unknown[0]!r} is neither an option nor a KEY=VALUE override; see backprop-lab --help")
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}: overrides are KEY=VALUE; see backprop-lab --help")
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as e:
        first = re.sub(r" expecting \{.*\}", "", str(e).strip().splitlines()[0])  # the grammar's token names
        hint = ""
        if "LexerNoViableAlt" in first:  # e.g. data.root=~/data: Hydra's grammar has no bare ~ or space
            hint = "; quote a value with spaces or characters such as ~ in single quotes: \"data.root='~/my data'\""
        elif "'<EOF>'" in first:  # e.g. optim.lr=0.1,
            hint = "; a value is missing at the end of one (after a ',' or '=')"
        raise ConfigError(f"cannot parse the overrides {' '.join(args.overrides)!r}: {first}{hint}") from None
    return args, overrides


def check_override(o: Any, args: Any, groups: dict[str, list[str]], makes_dirs: bool) -> Path | None:
    """One override, as check_overrides says; the folder it names when it is hydra.run.dir."""
    from hydra.core.override_parser.types import ValueType

    named = None
    key = o.key_or_group
    if not key:
        raise ConfigError(f"{o.input_line!r} has no key before its '=': overrides are KEY=VALUE, e.g. optim.lr=0.05")
    if o.is_sweep_override() and not args.multirun:
        raise ConfigError(several_values_message(o))
    if o.is_sweep_override() and key.startswith("hydra.sweeper.params."):
        value = o.input_line.split("=", 1)[1]
        raise ConfigError(f"{o.input_line}: Hydra cannot set a search space here; give it on the key itself, "
                          f"which replaces the preset's: '{key.removeprefix('hydra.sweeper.params.')}={value}'")
    if o.is_sweep_override() and o.is_hydra_override():
        raise ConfigError(f"{o.input_line}: Hydra's own settings take one value, even in a sweep (-m)")
    if o.value_type == ValueType.INTERVAL_SWEEP:  # Optuna's search spaces: nothing to enumerate
        return check_search_space(o, args)
    values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
    for value in values:
        if isinstance(value, str) and "${" in value:  # Hydra fails on a malformed one in many lines
            try:
                OmegaConf.create({"value": value})
            except OmegaConfBaseException as e:
                raise ConfigError(f"{key}={value} is not valid: {str(e).splitlines()[0]}") from None
    if key in ("hydra.run.dir", "hydra.sweep.dir") and not o.is_delete():
        folder = check_output_dir(key, o.value(), makes_dirs and (key == "hydra.sweep.dir") == args.multirun)
        named = folder if key == "hydra.run.dir" else None
    if key == "hydra.sweep.subdir" and not o.is_delete():
        check_sweep_subdir(o.value())
    if key == "hydra/job_logging" and o.value() != "default":
        raise ConfigError(f"{o.input_line}: backprop-lab keeps each run's log in its folder ({LOG}), which "
                          f"`compare` and `resume` read, so Hydra's job logging cannot be changed; the terminal "
                          f"shows no log lines as it is")
    if key == "hydra":  # Hydra: "Could not override 'hydra'" in 3 lines, or a traceback for +hydra=...
        raise ConfigError(f"{o.input_line}: 'hydra' is not a setting itself; set one of Hydra's settings as "
                          f"hydra.KEY=VALUE, e.g. hydra.sweep.dir=outputs/sweep (backprop-lab --hydra-help lists them)")
    if key.startswith("hydra/") and not (o.is_add() or o.is_force_add() or o.is_delete()) and o.value() is not None:
        options, hydra_groups = hydra_group_options(key)
        if not options:
            raise ConfigError(f"'{key}' is not one of Hydra's config groups; they are: {', '.join(hydra_groups)}")
        if o.value() not in options:
            raise ConfigError(f"{key}={o.value()} is not a known option; available: {', '.join(options)}")
    if key in PLUGIN_VALUES and not o.is_delete():
        valid, expected = PLUGIN_VALUES[key]
        if not valid(o.value()):
            raise ConfigError(f"{key}={o.value()} is not valid: expected {expected}")
    if o.is_add() and key in known_keys():  # Hydra: "Could not append to config" over six lines
        raise ConfigError(f"{o.input_line}: {key} is already in the config, so '+' cannot add it; "
                          f"set it without the '+': {o.input_line[1:]}")
    if o.is_delete() and (key in known_keys() or key in REQUIRED_GROUPS):  # Hydra would drop it without a word
        raise ConfigError(f"{o.input_line}: every run needs {key}, so it cannot be deleted; set it to another value "
                          f"instead, e.g. {key}={OmegaConf.to_yaml({'v': dotted_default(key)}).split(': ', 1)[-1].strip()}"
                          if key in known_keys() else
                          f"{o.input_line}: every run needs a {key} config, so it cannot be deleted; choose one of "
                          f"{', '.join(groups.get(key, []))} instead, e.g. {key}={(groups.get(key) or ['...'])[0]}")
    if key.split(".")[0].split("/")[0] == "hydra" or o.is_add() or o.is_force_add() or o.is_delete():
        return named  # Hydra's own settings (check_hydra_settings), and deliberate additions checked later
    if key in groups:
        for choice in values:
            if choice is None:
                raise ConfigError(f"{key}=null is not valid: to run without a {key} choice, leave {key}=... out")
            if choice not in groups[key]:
                raise ConfigError(f"{key}={choice} is not a known preset; available: {', '.join(groups[key])}")
    elif key not in known_keys():
        raise ConfigError(unknown_key_message(key, sorted(groups)))
    elif not args.multirun:  # refused as typed (seed=1e3), not later as Hydra read it (a sweep names the job)
        value = o.value()
        problem = None if isinstance(value, str) and "${" in value else invalid_value_message(
            key, value, o.input_line.split("=", 1)[1])
        if problem:
            raise ConfigError(problem)
    return named


def check_search_space(o: Any, args: Any) -> None:
    """An Optuna interval (`optim.lr=tag(log, interval(0.01, 1))`): only with the Optuna sweeper,
    on a known key, low end below high end, above 0 on a log scale."""
    key = o.key_or_group
    if not any(a.split("=")[0].lstrip("+~") in ("hparams_search", "hydra/sweeper") for a in args.overrides):
        raise ConfigError(f"{o.input_line}: an interval is a search space for the Optuna sweeper "
                          f"(add hparams_search=mlp, see docs/sweeps.md); a plain -m sweep takes lists "
                          f"and ranges, e.g. {key}=0.01,0.1 or {key}='range(1,4)'")
    if not (o.is_add() or o.is_force_add()) and key not in known_keys():
        raise ConfigError(unknown_key_message(key))
    space = o.value()
    if not space.start < space.end:  # Optuna fails on either mid-search, with a traceback
        raise ConfigError(f"{o.input_line}: the interval's low end must be below its high end")
    if "log" in space.tags and space.start <= 0:
        raise ConfigError(f"{o.input_line}: a log interval needs a low end above 0")


# Set in every composition (Hydra's own, or conf/config.yaml's), and checked on their own.
ALWAYS_THERE = {"hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.callbacks.sweep_report.resume",
                "hydra.callbacks.sweep_report.fail_fast"}


def check_hydra_settings(overrides: list[Any]) -> None:
    """A misspelled or mistyped hydra.* setting (hydra.run.dirr, hydra.sweeper.n_trial, one of a
    launcher not chosen) as one line. Composing is the only faithful check, since the
    launcher and sweeper chosen decide which keys exist; it costs ~0.2 s, so only when needed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    settings = [o for o in overrides if o.key_or_group.startswith("hydra.") and not (o.is_add() or o.is_force_add())
                and not o.is_delete() and o.key_or_group not in ALWAYS_THERE]
    if not settings:
        return
    single = [o.input_line for o in overrides if not o.is_sweep_override()]  # what decides the config's shape
    # before Hydra's own start this process has no Hydra yet; a caller that has one (a test) lends it
    started = GlobalHydra.instance().is_initialized()
    with contextlib.nullcontext() if started else initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            compose("config", overrides=single, return_hydra_config=True)
            return
        except HydraException as e:
            failed = next((o for o in settings if f"'{o.key_or_group}'" in str(e) or o.input_line in str(e)), None)
            if failed is None:
                return  # not about a hydra.* setting: Hydra reports it as it would have
            why = str(e.__cause__ or e).strip().splitlines()[0]
            base = compose("config", overrides=[line for line in single if line != failed.input_line],
                           return_hydra_config=True)
    key = failed.key_or_group
    if OmegaConf.select(base, key, default=None) is not None or "Key '" not in why:
        raise ConfigError(f"{failed.input_line} is not valid: {why}")
    settings_there = [k for k in dotted_keys(base.hydra, "hydra") if not k.endswith("._target_")]  # not a setting
    close = difflib.get_close_matches(key, settings_there, n=1, cutoff=0.75)
    hint = f"did you mean '{close[0]}'?" if close else "backprop-lab --hydra-help lists Hydra's options"
    plugin = key.split(".")[1]
    if plugin in ("sweeper", "launcher") and "Basic" in str(base.hydra[plugin].get("_target_", "")) and not close:
        hint = ("it is a setting of the Optuna sweeper: add hparams_search=mlp (docs/sweeps.md)" if plugin == "sweeper"
                else "it is a setting of another launcher: choose it too, e.g. hydra/launcher=joblib (docs/sweeps.md)")
    raise ConfigError(f"'{key}' is not one of Hydra's settings ({why}); {hint}")


def dotted_keys(node: Any, prefix: str) -> list[str]:
    keys = []
    for k in node.keys() if OmegaConf.is_dict(node) else ():
        child = node._get_node(k)  # not node[k]: that would resolve ${...}, and make folders
        keys += dotted_keys(child, f"{prefix}.{k}") if OmegaConf.is_dict(child) else [f"{prefix}.{k}"]
    return keys


def check_mode(argv: list[str]) -> None:
    """Hydra raises a ValueError (a traceback) for more than one of -m, --cfg, --info, ..."""
    args, _ = parse_hydra_args(argv)
    modes = [flag for flag, given in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg is not None),
                                      ("--info", args.info is not None), ("--shell-completion", args.shell_completion))
             if given]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined: give one of them "
                          f"(--cfg job prints the config of one run; -m runs a sweep)")
    cp = args.config_path
    if cp is not None and "://" not in cp and not Path(cp).is_absolute():  # Hydra would look for a Python module
        raise ConfigError(f"--config-path {cp}: give it as an absolute folder, e.g. --config-path "
                          f"{Path(cp).absolute()}; to add configs of your own to backprop-lab's, use --config-dir {cp}")
    if cp is not None and "://" not in cp and not Path(cp).is_dir():
        raise ConfigError(f"--config-path {args.config_path}: no such folder; backprop-lab's configs are in "
                          f"{CONF_DIR}; to add configs of your own, use --config-dir FOLDER")
    if args.config_dir is not None and not Path(args.config_dir).is_dir():
        raise ConfigError(f"--config-dir {args.config_dir}: no such folder; it names a folder of extra config files")
    check_primary_config(args)
    if args.shell_completion:  # Hydra's completion would need its install=SHELL, which is not a config key
        raise ConfigError("shell completion (--shell-completion, -sc) is not available in backprop-lab; "
                          "backprop-lab --help lists every config group and key")
    if args.experimental_rerun is not None:
        raise ConfigError("--experimental-rerun is not available in backprop-lab: to continue a run use "
                          "backprop-lab resume RUN_DIR; to repeat one, give the overrides in RUN_DIR/.hydra/overrides.yaml")
    prints_help = args.help or args.hydra_help
    if args.resolve and args.cfg is None and not prints_help:  # Hydra: a ValueError's traceback
        raise ConfigError("--resolve works only with --cfg, whose config it prints with the interpolations "
                          "resolved, e.g. backprop-lab --cfg job --resolve")
    if args.package is not None and args.cfg is None and not prints_help:  # Hydra would train, ignoring it
        raise ConfigError(f"--package {args.package} works only with --cfg, which then prints only that part of "
                          f"the config, e.g. backprop-lab --cfg job --package {args.package}")


def check_primary_config(args: Any) -> None:
    """--config-name's file (config.yaml by default) must be in --config-path's folder (else
    backprop-lab's own) or --config-dir's: Hydra says so in many lines."""
    cp = args.config_path
    if cp is not None and "://" in cp:
        return  # pkg://...: Hydra looks it up itself
    folders = [Path(cp) if cp else CONF_DIR] + ([Path(args.config_dir)] if args.config_dir else [])
    name = (args.config_name or "config").removesuffix(".yaml")
    if any((folder / f"{name}.yaml").is_file() for folder in folders):
        return
    if args.config_name is not None:
        raise ConfigError(f"--config-name {args.config_name}: there is no {name}.yaml in "
                          f"{' or '.join(map(str, folders))}; the lab's own config is 'config' (the default)")
    if cp is not None:
        raise ConfigError(f"--config-path {cp}: there is no config.yaml in it; --config-path names a folder that "
                          f"replaces backprop-lab's configs ({CONF_DIR}); to add configs of your own to them, "
                          f"use --config-dir {cp}")


def check_shown_config(argv: list[str]) -> None:
    """`--cfg job` prints the config a run would use: one a run would refuse for a value or an
    unknown key, from the command line or a config file, is refused here too, by the run's own
    check, rather than printed as if it were fine (exit 0). The device and the memory are checked
    by a run only: they need torch, and `--cfg` answers without loading it (0.6 s against 2 s).
    A run given config files of the user's (--config-dir, --config-path) composes them here first,
    so a malformed one is one line."""
    args, _ = parse_hydra_args(argv)
    if args.help or args.hydra_help or args.info is not None:
        return
    if args.cfg is None and not (args.config_dir or args.config_path):
        return
    dcfg = compose_as_given(argv)
    if dcfg is None or args.cfg is None:
        return
    if args.package is not None:
        check_package(dcfg, args.cfg, args.package)
    if args.cfg in ("job", "all"):
        with open_dict(dcfg):
            del dcfg["hydra"]
        from_dictconfig(dcfg)


def compose_as_given(argv: list[str]) -> Any:
    """The config, hydra node included, as Hydra composes it for this command line (--config-path,
    --config-dir, --config-name; a sweep's overrides left out); None where Hydra reports the
    failure itself. A config file that is not YAML is a ConfigError naming the file and line
    (Hydra: ~100 lines of traceback)."""
    import yaml
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.override_parser.types import ValueType
    from hydra.core.utils import setup_globals
    from hydra.errors import HydraException
    from hydra.types import RunMode

    args, overrides = parse_overrides(argv)
    search_path = create_config_search_path(args.config_path or str(CONF_DIR))
    if args.config_dir:  # where Hydra's main puts it
        search_path.prepend(provider="command-line", path=f"file://{Path(args.config_dir).absolute()}",
                            anchor=SearchPathQuery(provider="schema"))
    setup_globals()  # the resolvers Hydra registers (now, ...)
    loader = ConfigLoaderImpl(config_search_path=search_path)
    single = [o.input_line for o in overrides if not o.is_sweep_override()]
    # a sweep over presets (experiment=a,b) reads each preset's file: each one once, on its own
    groups = config_groups(args.config_dir)
    chosen = [[f"{o.get_key_element()}={v}"] for o in overrides if o.key_or_group in groups
              and o.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP) for v in o.sweep_iterator()]
    composed = None
    for extra in [[]] + chosen:
        try:
            dcfg = loader.load_configuration(args.config_name or "config", single + extra, run_mode=RunMode.RUN)
        except (yaml.YAMLError, HydraException, OmegaConfBaseException) as e:
            cause = e if isinstance(e, yaml.YAMLError) else e.__cause__
            if isinstance(cause, yaml.YAMLError):
                raise ConfigError(yaml_problem(cause)) from None
            dcfg = None  # Hydra reports it itself, as it would without this check
        except ValueError as e:  # e.g. a defaults list that is not a list: Hydra's is a traceback
            raise ConfigError(f"the config cannot be composed: {first_line(e)}") from None
        composed = dcfg if not extra else composed
    return composed


def yaml_problem(e: Any) -> str:
    """One line for a config file that is not YAML: the file, the line, what the parser expected."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return f"a config file is not valid YAML: {first_line(e)}"
    context, where = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" ({context} at line {where.line + 1})" if context and where and where.line != mark.line else ""
    return f"{mark.name}, line {mark.line + 1}: not valid YAML: {e.problem}{started}"


def check_package(dcfg: Any, cfg_type: str, package: str) -> None:
    """--package names a part of what --cfg prints (Hydra: a line without 'error:', exit 1)."""
    from hydra._internal.hydra import Hydra

    if package == "_global_":  # Hydra's name for the whole config
        return
    if cfg_type == "hydra":
        shown = Hydra.get_sanitized_hydra_cfg(dcfg)
    else:
        shown = copy.deepcopy(dcfg)
        if cfg_type == "job":
            with open_dict(shown):
                del shown["hydra"]
    node = shown
    for part in package.split("."):
        key: Any = int(part) if OmegaConf.is_list(node) and part.isdigit() else part
        there = list(node.keys()) if OmegaConf.is_dict(node) else range(len(node)) if OmegaConf.is_list(node) else []
        if key not in there:  # not `key in node`: that would resolve interpolations, e.g. make run folders
            raise ConfigError(f"--package {package}: the config that --cfg {cfg_type} prints has no such part; "
                              f"its parts: {', '.join(map(str, shown.keys()))}")
        node = node._get_node(key)
    if node._is_none():  # Hydra takes a null for "not found"
        raise ConfigError(f"--package {package}: it is null, and Hydra prints only a part that is set; "
                          f"backprop-lab --cfg {cfg_type} shows it")


def check_command(argv: list[str]) -> None:
    """A first word that is neither an option nor an override is most likely a mistyped
    command: name the commands rather than fail to parse it as an override."""
    word = argv[0] if argv else "-"
    if word.startswith(("-", "~", "+")) or "=" in word:
        return
    commands = ", ".join(SUBCOMMANDS)
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.6)
    if close:
        raise ConfigError(f"unknown command {word!r}; did you mean {close[0]!r}? commands: {commands}")
    raise ConfigError(f"{word!r} is neither a command nor a KEY=VALUE override; commands: {commands}; "
                      f"a run takes overrides such as optim.lr=0.05 (see backprop-lab --help)")


# Subcommands other than training: name -> (module, function taking argv, returning an exit code).
SUBCOMMANDS = {
    "show": ("backprop_lab.compare", "show_main"),
    "compare": ("backprop_lab.compare", "compare_main"),
    "bench": ("backprop_lab.bench", "main"),
    "resume": ("backprop_lab.resume", "main"),
    "predict": ("backprop_lab.predict", "predict_main"),
    "gradcheck": ("backprop_lab.gradcheck", "main"),
}


# hydra_main's module attribute is Hydra's wrapper, so joblib's launcher pickles hydra_main by
# value, with every global it names: functions travel by reference, but an object such as the
# stderr Console (it holds a lock) cannot travel at all. Hence this function.
def note_sweep_preset(hydra_cfg: Any) -> None:
    """A preset that defines a sweep, run without -m, trains one configuration: say so."""
    swept = list(hydra_cfg.sweeper.get("params") or {})
    if swept:
        stderr.print(f"[yellow]note:[/yellow] this config sweeps over {', '.join(swept)} with -m; without -m "
                     f"it trains one configuration")
