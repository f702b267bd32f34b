"""Loading the configuration for a command (`--config`, SHOAL_CONFIG), and `shoal config`.

A configuration that cannot be used is one line, ``error: configuration: ...``, and exit
78 (EX_CONFIG), the code a service exits with for the same reason (runtime/service.py).
"""

from __future__ import annotations

from typing import IO, Any

import click

from shoal.services.runtime.config import (
    ConfigError,
    ShoalConfig,
    dump_toml,
    load_config,
    validated,
)

EXIT_CONFIG = 78  # = runtime.service.EXIT_CONFIG, without importing ZeroMQ for every command


class CliError(click.ClickException):
    """An error the user can act on: one line on stderr, ``error: ...``; exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class CliUsageError(CliError):
    """A command line that cannot work (an unknown option, a value out of range)."""

    exit_code = 2  # click's own code for a usage error


class CliConfigError(CliError):
    """A configuration (file, SHOAL_* variable) that cannot work."""

    exit_code = EXIT_CONFIG


def config_error(err: ConfigError) -> CliError:
    return CliConfigError(f"configuration: {err}")


def config_from(path: str | None) -> ShoalConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        raise config_error(err) from None


def checked(config: ShoalConfig) -> ShoalConfig:
    """config (from ``config_from``) once the command's flags are applied, checked as a
    file's keys are: what fails now, a flag did, so it is a usage error (exit 2)."""
    try:
        return validated(config)
    except ConfigError as err:
        raise click.UsageError(f"bad option: {err}") from None


def use_keys(config: ShoalConfig, default_key: str) -> None:
    """This command's clients connect with [security] key, else default_key (its role's:
    reader, console, scenarios), from the configured keys directory; a key that is not
    there is one line and exit 78, before anything is asked."""
    from shoal.services.runtime import security

    sec = security.Security.from_config(config, config.security.key or default_key)
    if sec.curve:
        try:
            sec.client_keys()
        except ConfigError as err:
            raise config_error(err) from None
    # For this configuration's endpoints (a command's process talks to no other; tests
    # that run commands in-process keep their own defaults).
    security.register(security.endpoints_of(config), sec)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SHOAL_CONFIG",
    help="TOML file overriding the built-in defaults (see `shoal config`).",
)


@click.command("config")
@config_option
def show_config(config_path: str | None) -> None:
    """Print the effective configuration as TOML (defaults merged with FILE)."""
    click.echo(dump_toml(config_from(config_path)), nl=False)
