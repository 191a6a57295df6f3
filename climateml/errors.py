"""The errors a user meets: one line naming the file, variable or option and what was expected."""


class ClimateMLError(ValueError):
    """Base of the errors the command line turns into one clear line instead of a traceback."""


class DataError(ClimateMLError):
    """Bad input data: the message names the file, the variable and what was expected."""


class ConfigError(ClimateMLError):
    """A bad configuration value: the message names the option, the value and what is allowed."""


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    """Raise ConfigError unless ``value`` > 0 (or >= 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_fraction(name: str, value: float, low_open: bool = False, high_open: bool = True) -> None:
    """Raise ConfigError unless ``value`` lies in the unit interval (open or closed ends as given)."""
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {value}")


def check_choice(name: str, value, choices) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
