"""The `kamiwaza` command: one entry point with a subcommand group per area."""

from __future__ import annotations

import click

from translator.cli import policy


@click.group()
@click.version_option(package_name="kamiwaza-gateway")
def main() -> None:
    """Kamiwaza AI model gateway."""


main.add_command(policy)
