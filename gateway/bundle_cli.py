"""`kamiwaza policy publish`: the `policy` group's command that needs the cloud SDKs.

The translator's commands (:mod:`translator.cli`) build the bundle; uploading
it uses boto3 and google-cloud-storage, which the translator does not import.
"""

from __future__ import annotations

import sys

import click


@click.command("publish")
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True))
@click.argument("url")
@click.option("--endpoint-url", default=None, help="S3-compatible store or GCS emulator URL.")
@click.option("--region", default=None, help="S3 region of the bucket.")
@click.option("--project", default=None, help="GCP project of a gs:// bucket.")
def publish(
    bundle: str, url: str, endpoint_url: str | None, region: str | None, project: str | None
) -> None:
    """Upload BUNDLE (kamiwaza policy bundle) to URL: s3://bucket/path or gs://bucket/path.

    Sidecars whose bundle_url names the object activate it at their next poll."""
    from observability.bundle_publish import PublishError
    from observability.bundle_publish import publish as upload

    try:
        target, revision = upload(
            bundle, url, endpoint_url=endpoint_url, region=region, project=project
        )
    except PublishError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"published {target} (revision {revision})")
