"""Loading the configuration for a command (`--config`, SHOAL_CONFIG), and `shoal config`."""

from __future__ import annotations

import click

from shoal.services.runtime.config import ConfigError, ShoalConfig, dump_toml, load_config


def config_from(path: str | None) -> ShoalConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        raise click.ClickException(f"configuration error: {err}") from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SHOAL_CONFIG",
    help="TOML file overriding the built-in defaults (see `shoal config`).",
)


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
