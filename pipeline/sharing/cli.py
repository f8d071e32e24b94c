"""``aamct bundle export|verify|inspect|keygen``: share a trained bundle, sign it, and check one received.

Other stages may add their own actions under ``aamct bundle``: :func:`register` reuses the ``bundle`` group when it
already exists instead of replacing it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import UserError
from pipeline.overrides import parse_set_overrides

__all__ = ["register"]


def _bundle_group(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    existing = sub.choices.get("bundle")
    if existing is not None:
        for action in existing._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
    group = sub.add_parser("bundle", help="export, verify and inspect shareable bundle zips")
    actions = group.add_subparsers(dest="bundle_command", metavar="<action>")
    actions.required = True
    return actions


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bundle export``, ``bundle verify`` and ``bundle inspect`` to the top-level parser."""
    actions = _bundle_group(sub)

    export = actions.add_parser(
        "export",
        help="write NAME.zip: MONAI bundle layout, TorchScript model, model card, checksums",
        description="Export a trained bundle as NAME.zip (NAME/configs, NAME/models/model.pt + model.ts, "
        "NAME/docs/README.md model card, NAME/LICENSE, NAME/checksums.sha256) with a changelog entry. New weights "
        "get a new version (the source's or the newest earlier NAME_v*.zip's in the output folder, bumped); the "
        "same weights keep the version of their earlier export. The source bundle is not modified.",
    )
    export.add_argument("--bundle", type=Path, required=True, help="source bundle folder (configs/, LICENSE)")
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write NAME_vVERSION.zip into (with --name), or NAME.zip: its stem names the bundle and "
        "the file written is NAME_vVERSION.zip beside it (the model zoo's naming)",
    )
    export.add_argument("--checkpoint", type=Path, help="trained weights (default: BUNDLE/models/model.pt)")
    export.add_argument(
        "--report", type=Path, help="the run's metrics.json (RUN/metrics.json) for the model card and eval_metrics"
    )
    export.add_argument("--datalist", type=Path, help="training datalist JSON (data summary, PHI guard)")
    export.add_argument("--name", help="bundle name (default: the zip's stem)")
    export.add_argument(
        "--bump", choices=("patch", "minor", "major"), default="patch", help="version part to bump (for new weights)"
    )
    export.add_argument("--message", help="changelog text for the new version")
    export.add_argument(
        "--model-note", help="why this model is the one exported (the model card names the network and says this)"
    )
    export.add_argument("--network-config", help="config under configs/ holding network_def (default: inference.json)")
    export.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a key of the exported inference config, e.g. --set network_name=aam_student (repeatable)",
    )
    export.add_argument(
        "--no-parity-check",
        action="store_true",
        help="skip the eager-vs-TorchScript-config probability check on a synthetic volume",
    )
    export.add_argument(
        "--sign",
        type=Path,
        metavar="KEY",
        help="sign checksums.sha256 with this Ed25519 private key (from `aamct bundle keygen`)",
    )
    export.add_argument("--verify", action="store_true", help="run `aamct bundle verify` on the written zip")
    export.set_defaults(func=_cmd_export)

    verify = actions.add_parser(
        "verify",
        help="check a bundle zip: checksums, metadata schema, weights, networks; list the code its configs run",
        description="Verify NAME.zip offline. Exits non-zero with the first failure's reason.",
    )
    verify.add_argument("archive", type=Path, help="NAME.zip")
    verify.add_argument("--schema", type=Path, help="metadata JSON schema (default: the repository's copy)")
    verify.add_argument(
        "--no-network-checks",
        action="store_true",
        help="do not load or run the models (nothing from the configs is evaluated)",
    )
    verify.add_argument(
        "--trust",
        metavar="PUBKEY",
        help="the sender's public key (their .pub file, or 64 hex digits): the bundle must carry its signature",
    )
    verify.add_argument("--expect-sha256", metavar="DIGEST", help="the zip's SHA-256 as its sender published it")
    verify.set_defaults(func=_cmd_verify)

    keygen = actions.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing exported bundles (KEY and KEY.pub)",
        description="Write a new Ed25519 private key (PEM, mode 0600) and its public key (KEY.pub, PEM). Sign with "
        "`aamct bundle export --sign KEY`; send KEY.pub to recipients another way (they run verify --trust KEY.pub).",
    )
    keygen.add_argument("key", type=Path, help="private key file to create (never overwritten)")
    keygen.set_defaults(func=_cmd_keygen)

    inspect = actions.add_parser("inspect", help="print the model card summary of a bundle zip")
    inspect.add_argument("archive", type=Path, help="NAME.zip")
    inspect.set_defaults(func=_cmd_inspect)


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.sharing.export import export_bundle

    result = export_bundle(
        args.bundle,
        args.out,
        checkpoint=args.checkpoint,
        report=args.report,
        datalist=args.datalist,
        name=args.name,
        bump=args.bump,
        change=args.message,
        network_config=args.network_config,
        overrides=parse_set_overrides(args.set),
        check_parity=not args.no_parity_check,
        sign_key=args.sign,
        model_note=args.model_note,
    )
    print(result.summary())
    if args.verify:
        return _verify(result.zip_path, schema=None, check_networks=True)
    return 0


def _verify(
    archive: Path, *, schema: Path | None, check_networks: bool, trust: str | None = None, expect: str | None = None
) -> int:
    from pipeline.sharing.verify import verify_bundle

    report = verify_bundle(
        archive, schema_path=schema, check_networks=check_networks, trust=trust, expect_sha256=expect
    )
    print("\n".join(report.lines()))
    if not report.ok:
        raise UserError(f"{archive}: verification failed: {report.first_failure.detail}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    return _verify(
        args.archive,
        schema=args.schema,
        check_networks=not args.no_network_checks,
        trust=args.trust,
        expect=args.expect_sha256,
    )


def _cmd_keygen(args: argparse.Namespace) -> int:
    from pipeline.trust.signing import key_fingerprint, load_public_key, write_key_pair

    private, public = write_key_pair(args.key)
    print(f"private key {private} (keep it; sign with: aamct bundle export --sign {private} ...)")
    print(f"public key  {public} (fingerprint {key_fingerprint(load_public_key(public))}; send it to recipients)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.sharing.inspection import inspect_bundle

    print("\n".join(inspect_bundle(args.archive)))
    return 0
