"""The `patchrec` command. Heavy libraries are imported inside the subcommands that need them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]


def _data_config(args: argparse.Namespace) -> Any:
    from patchrec.config import DataConfig, load_source

    fields: dict[str, Any] = {"format": args.format, "raw": args.raw, "out": args.out, "protocol": args.protocol,
                              "kcore": args.kcore, "rebuild": args.rebuild}
    for name in ("min_rating", "max_history", "min_history"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.source_config:
        fields["source"] = load_source(args.source_config)
    return DataConfig(**fields)


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from patchrec.data.prepare import prepare_data

    cfg = _data_config(args)
    summary = prepare_data(cfg, progress=not args.json)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, cfg.out)
    return 0


def _print_summary(s: dict[str, Any], out: Path) -> None:
    print(f"prepared {s['format']} into {out} ({'updated' if s['changed'] else 'unchanged: no new raw files'})")
    print(f"  rows read {s['rows_read']:,} = accepted {s['rows_accepted']:,} + quarantined {s['rows_quarantined']:,}"
          f" + deduplicated {s['rows_deduplicated']:,} + filtered {s['rows_filtered']:,}")
    print(f"  users {s['users']:,}  items {s['items']:,}  interactions {s['interactions']:,}")
    smp = s["samples"]
    print(f"  samples ({s['protocol']}): train {smp['train']:,}  val {smp['val']:,}  test {smp['test']:,}")


def _cmd_data_formats(args: argparse.Namespace) -> int:
    from patchrec.config import FORMATS

    print("\n".join(FORMATS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from patchrec import __version__

    parser = argparse.ArgumentParser(prog="patchrec", description="PatchRec: LLM next-item recommendation with patches.")
    parser.add_argument("--version", action="version", version=f"patchrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    top = parser.add_subparsers(dest="command", required=True)

    data = top.add_parser("data", help="ingest, validate and split interaction logs")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    prep = data_sub.add_parser("prepare", help="raw logs -> validated Parquet tables, sequences and splits")
    prep.add_argument("--format", required=True, help="source format (see `patchrec data formats`)")
    prep.add_argument("--raw", required=True, type=Path, help="folder with the raw files")
    prep.add_argument("--out", required=True, type=Path, help="output folder (tables, quarantine, reports)")
    prep.add_argument("--protocol", default="auto", choices=["auto", "paper", "loo", "given"],
                      help="split protocol; auto = the source's own split if it has one, else paper")
    prep.add_argument("--source-config", type=Path, help="YAML column mapping (format 'generic')")
    prep.add_argument("--min-rating", type=float, help="keep only events with rating >= this")
    prep.add_argument("--kcore", type=int, default=0, help="k-core filter (0 = off)")
    prep.add_argument("--max-history", type=int, help="history length cap per sample (default 100)")
    prep.add_argument("--min-history", type=int, help="earlier items a target needs (default 3)")
    prep.add_argument("--rebuild", action="store_true", help="forget earlier ingestion state; ingest every file again")
    prep.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    prep.set_defaults(func=_cmd_data_prepare)

    fmts = data_sub.add_parser("formats", help="list the supported source formats")
    fmts.set_defaults(func=_cmd_data_formats)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from pydantic import ValidationError

    from patchrec.data.formats import SourceError
    from patchrec.data.ingest import IngestError
    from patchrec.data.validation import ValidationFailed

    try:
        return int(args.func(args))
    except (SourceError, IngestError, ValidationFailed, FileNotFoundError, ValueError, ValidationError) as exc:
        print(f"patchrec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
