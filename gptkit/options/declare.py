"""Each option of a command declared once: a field of the command's options dataclass, made by option() (or argument()
for a positional one), whose Declaration holds its flag, help text, help panel and simple checks (a range, choices, a
check function) beside the field's default. cli.py builds the Typer command from the fields; check_declared, run by
the class's __post_init__, applies the checks; train's with_defaults reads the fallbacks. No torch, no Typer here: the
options import fast."""

import dataclasses
from collections.abc import Callable
from typing import Any

from gptkit.errors import GptkitError

# The help panels that group the options, in the order one thinks about a command (a panel shows only once an option
# is in it). train's: MODEL, DATA, OPTIMIZATION, SCHEDULE, EVALUATION_AND_SAVING, HARDWARE, LORA, LOGGING; sample's:
# MODEL, SAMPLING, HARDWARE, SPEED; eval's: SCORING, BENCHMARKS, OUTPUT, HARDWARE; serve's: SERVER, MODEL, LIMITS, HARDWARE, SPEED.
MODEL = "Model"
DATA = "Data"
OPTIMIZATION = "Optimization"
SCHEDULE = "Schedule"
EVALUATION_AND_SAVING = "Evaluation and saving"
HARDWARE = "Hardware"
LOGGING = "Logging"
LORA = "LoRA"
SAMPLING = "Sampling"
SPEED = "Speed"
SCORING = "Scoring"
OUTPUT = "Output"
BENCHMARKS = "Benchmarks"
SERVER = "Server"
LIMITS = "Limits"

DECLARATION = "gptkit"  # the key of a field's Declaration in its metadata
NO_FALLBACK = object()  # an option without a fallback (None may be one)


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What the command line shows of one option and how its value is checked. The checks (range, choices, check)
    skip None, which is "not given" wherever it is an option's default."""

    help: str
    """The help text, plain (cli.py escapes it for rich's markup)."""
    positional: bool = False
    """An argument rather than an --option."""
    flag: str | None = None
    """The long flag; default --field-name. A bool option is a switch: --name, or --name/--no-name where its default
    is None."""
    short: str | None = None
    """A short flag beside it: -o."""
    panel: str | None = None
    """The help panel it shows in (one of the names above); None: Options."""
    min: float | None = None
    """The least value it takes (inclusive); above: the value it must exceed."""
    max: float | None = None
    """The largest value it takes (inclusive); below: the value it must stay under."""
    above: float | None = None
    below: float | None = None
    choices: tuple | None = None
    """The values it takes."""
    message: str | None = None
    """The refusal of a value out of range or not a choice, in place of the generic one; {flag} and {value} in it are
    filled in."""
    check: Callable[[Any], None] | None = None
    """A function of the value that raises GptkitError for a bad one (a file that must exist, a name)."""
    fallback: Any = NO_FALLBACK
    """The value None turns into when the command fills in its defaults (train's with_defaults); shown in the help as
    `[default: ...]`."""
    default_text: str | None = None
    """What `[default: ...]` says where the default is worked out (the model's context), in place of the fallback."""
    path: bool = False
    """A str read from the command line as a path (train keeps paths as str: its settings are saved as JSON)."""
    metavar: str | None = None
    envvar: str | None = None
    show_default: bool = True
    tags: frozenset = frozenset()
    """Labels that a command's own rules read (train's: the options a resumed run may change)."""

    def flag_of(self, name: str) -> str:
        """The option's long flag: --json for a field json_output declared so, else --field-name."""
        return self.flag or "--" + name.replace("_", "-")

    def shown_default(self) -> str | None:
        """What `[default: ...]` says for an option whose default is None ("the command picks one"), if anything."""
        if self.default_text is not None:
            return self.default_text
        if self.fallback is NO_FALLBACK or not self.show_default:
            return None
        return f"{self.fallback:g}" if isinstance(self.fallback, float) else str(self.fallback)

    def refusal(self, name: str, value) -> str | None:
        """Why value is not one this option takes (its range or choices), or None when it is."""
        flag = self.flag_of(name)
        if self.choices is not None and value not in self.choices:
            use = f"{flag} {self.choices[0]}" if len(self.choices) == 1 else ", ".join(map(str, self.choices))
            return (self.message or "unknown {flag} '{value}': use " + use).format(flag=flag, value=value)
        low_ok = (self.min is None or value >= self.min) and (self.above is None or value > self.above)
        high_ok = (self.max is None or value <= self.max) and (self.below is None or value < self.below)
        if low_ok and high_ok:
            return None
        return (self.message or "{flag} " + self.requirement() + ", not {value}").format(flag=flag, value=value)

    def requirement(self) -> str:
        """The range in words: "must be at least 1", "must be positive", "must be in [0, 1)", ..."""
        low = self.min if self.min is not None else self.above
        high = self.max if self.max is not None else self.below
        if high is None:
            if self.above is not None:
                return "must be positive" if self.above == 0 else f"must be above {self.above}"
            return "must not be negative" if self.min == 0 else f"must be at least {self.min}"
        if low is None:
            return f"must be at most {self.max}" if self.max is not None else f"must be below {self.below}"
        if self.min is not None and self.max is not None:
            return f"must be between {self.min} and {self.max}"
        opening, closing = "[" if self.min is not None else "(", "]" if self.max is not None else ")"
        return f"must be in {opening}{low}, {high}{closing}"


def option(default: Any = dataclasses.MISSING, help: str = "", **declaration) -> dataclasses.Field:
    """A dataclass field that is a command-line option (without a default, a required one); declaration: the rest of
    its Declaration (flag, panel, min, choices, fallback, ...)."""
    return dataclasses.field(default=default, metadata={DECLARATION: Declaration(help, **declaration)})


def argument(help: str, default: Any = dataclasses.MISSING, **declaration) -> dataclasses.Field:
    """A dataclass field that is a positional argument (without a default, a required one)."""
    return dataclasses.field(default=default, metadata={DECLARATION: Declaration(help, positional=True, **declaration)})


def declared(options_class) -> list[tuple[dataclasses.Field, Declaration]]:
    """The fields of an options class with their declarations, in the order the help shows them."""
    return [(f, f.metadata[DECLARATION]) for f in dataclasses.fields(options_class) if DECLARATION in f.metadata]


def check_declared(options):
    """Each option's declared checks (range, choices, check function), in the order declared; None passes."""
    for field, declaration in declared(type(options)):
        value = getattr(options, field.name)
        if value is None:
            continue
        refusal = declaration.refusal(field.name, value)
        if refusal is not None:
            raise GptkitError(refusal)
        if declaration.check is not None:
            declaration.check(value)


def fallbacks(options_class) -> dict[str, Any]:
    """The value each option with a fallback takes when left None."""
    return {f.name: d.fallback for f, d in declared(options_class) if d.fallback is not NO_FALLBACK}


def tagged(options_class, tag: str) -> frozenset[str]:
    """The names of the options carrying tag."""
    return frozenset(f.name for f, d in declared(options_class) if tag in d.tags)


def flag_of(options_class, name: str) -> str:
    """The long flag of the option name, for messages that name it."""
    return next(d for f, d in declared(options_class) if f.name == name).flag_of(name)


def fail_if(failed: bool, message: str):
    if failed:
        raise GptkitError(message)
