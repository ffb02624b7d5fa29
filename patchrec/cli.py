"""The `patchrec` command. Heavy libraries are imported inside the subcommands that need them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


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
    if ignored := s.get("files_ignored"):
        print(f"  not read (they look like data, the format does not read them): {', '.join(ignored[:20])}"
              f"{' ...' if len(ignored) > 20 else ''}")


def _cmd_data_formats(args: argparse.Namespace) -> int:
    from patchrec.config import FORMATS

    print("\n".join(FORMATS))
    return 0


def _model_config(args: argparse.Namespace) -> Any:
    from patchrec.config import ModelConfig
    from patchrec.recommender import default_model_cache

    return ModelConfig(base=args.base, cache_dir=args.model_cache or default_model_cache())


def _launch(args: argparse.Namespace) -> Any:
    from patchrec.config import LaunchConfig

    return LaunchConfig(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint,
                        sharding=getattr(args, "sharding", "ddp"))


def _add_launch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc-per-node", type=int, default=1, help="torchrun ranks per node (default 1: "
                        "this process)")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--rdzv-endpoint", help="host:port of the rendezvous when nnodes > 1")


def _add_config_flags(parser: argparse.ArgumentParser, model: type, skip: tuple[str, ...] = (),
                      required: tuple[str, ...] = (), aliases: dict[str, str] | None = None) -> list[str]:
    """One `--flag` per scalar field of the pydantic config `model` (name, choices and help from the field); a
    flag left out keeps the config's default. Returns the field names added."""
    import types
    import typing

    names = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        ann = info.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        kinds = [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]
        literals = [v for a in kinds if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        plain = [a for a in kinds if typing.get_origin(a) is not typing.Literal]
        if any(a not in (int, float, str, bool) for a in plain):
            continue  # tuples, paths, nested configs: set them in a profile
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = {"dest": name, "help": (info.description or "") + (
            "" if info.is_required() else f" (default {info.default})")}
        if plain == [bool] and not literals:
            kw["action"] = argparse.BooleanOptionalAction
        elif literals and not plain:
            kw["choices"] = literals
        elif plain == [bool] or (bool in plain and literals):
            kw["type"] = lambda v, lit=tuple(literals): v if v in lit else v.lower() in ("1", "true", "yes")
        else:
            kw["type"] = plain[0]
        flags = [flag, *([aliases[name]] if aliases and name in aliases else [])]
        parser.add_argument(*flags, required=name in required, **kw)
        names.append(name)
    return names


def _given(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    from patchrec.config import TrainConfig
    from patchrec.contract import StageRecord, read_manifest
    from patchrec.runtime import RunSpec
    from patchrec.stages import data_record, train_into

    spec = RunSpec(train=TrainConfig(**_given(args, args.config_fields)), model=_model_config(args))
    init = StageRecord.of(args.init_from.resolve(), read_manifest(args.init_from), True) if args.init_from else None
    rec = train_into(lambda fp: args.out, spec.train.stage, spec, data_record(args.data), init=init,
                     launch=_launch(args))
    print(json.dumps({"out_dir": str(rec.dir), "reused": rec.reused, **rec.metrics}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from patchrec.config import EvalConfig
    from patchrec.contract import StageRecord, read_manifest
    from patchrec.evaluation.result import read_result
    from patchrec.stages import data_record, evaluate_into

    ecfg = EvalConfig(**_given(args, args.config_fields))
    run = StageRecord.of(args.run.resolve(), read_manifest(args.run), reused=True)
    rec = evaluate_into(lambda fp: args.out, ecfg, data_record(args.data), run, launch=_launch(args))
    res = read_result(rec.dir)
    m = res.metrics
    if args.json:
        print(res.model_dump_json())
    else:
        print(f"{res.split}: {res.samples} samples, layout {res.layout}, {res.users_per_s:.2f} users/s")
        for k in (5, 10, 20):
            print(f"  HR@{k} {m[f'hr_{k}']:.4f}  NDCG@{k} {m[f'ndcg_{k}']:.4f}")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from prefect.flows import load_flow_from_entrypoint

    from patchrec.profiles import load_pipeline, parse_overrides

    overrides = parse_overrides(args.set)
    load_pipeline(args.profile, overrides, args.state)  # fail on a bad key before Prefect starts
    name = "nightly_retrain_flow" if args.flow == "nightly" else "full_pipeline_flow"
    run = load_flow_from_entrypoint(f"flows.pipeline.{name}")  # the orchestration layer, loaded by name
    result = run(profile=args.profile, overrides=overrides, state_dir=str(args.state) if args.state else None)
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, default=str))
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from patchrec.config import SASRecConfig
    from patchrec.evaluation.result import read_result
    from patchrec.stages import baseline_into, data_record

    sasrec = SASRecConfig(max_epochs=args.max_epochs, seed=args.seed)
    rec = baseline_into(lambda fp: args.out, args.kind, data_record(args.data), sasrec, args.split, args.max_samples,
                        args.seed)
    res = read_result(rec.dir)
    if args.json:
        print(res.model_dump_json())
    else:
        m = res.metrics
        print(f"{args.kind} on {res.samples} {res.split} samples: "
              + "  ".join(f"HR@{k} {m[f'hr_{k}']:.4f} NDCG@{k} {m[f'ndcg_{k}']:.4f}" for k in (10, 20)))
    return 0


def _use_registry(state: Path | None) -> None:
    from patchrec import tracking
    from patchrec.profiles import state_path

    tracking.tracking_uri(state_path(state))


def _cmd_model(args: argparse.Namespace) -> int:
    from patchrec import registry

    registry.check_name(args.name)
    _use_registry(args.state)
    if args.action == "list":
        rows = registry.versions(args.name)
        if not rows:
            raise ValueError(f"no registered model named {args.name!r}")
        labels = registry.aliases(args.name)
        for v in rows:
            aliases = ",".join(sorted(labels.get(int(v.version), []))) or "-"
            value = registry.version_metrics(v).get(f"val_{args.metric}")
            metric = "?" if value is None else f"{value:.6f}"
            print(f"v{v.version:<4} {aliases:<22} val_{args.metric}={metric:<10} {v.tags.get('promotion', '')}")
    elif args.action == "rollback":
        old, new = registry.rollback(args.name)
        print(f"{args.name}: champion v{old} -> v{new}")
    else:
        if args.version is None:
            raise ValueError("promote needs --version")
        registry.promote(args.name, args.version, "promoted by hand")
        print(f"{args.name}: champion -> v{args.version}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from patchrec.serving import serve

    _use_registry(args.state)
    print(f"serving {args.model} on http://{args.host}:{args.port} (POST /invocations, GET /ping; header "
          "X-Model-Version names the version that answers)", flush=True)
    serve(args.model, host=args.host, port=args.port, refresh_s=args.refresh_seconds or None)
    return 0


def _read_history(args: argparse.Namespace) -> list[str]:
    text = Path(args.history_file).read_text(encoding="utf-8") if args.history_file else args.history
    if text is None:
        raise ValueError("give --history 'k1,k2,...' or --history-file FILE (one item per line)")
    sep = "\n" if args.history_file else ","
    return [h.strip() for h in text.split(sep) if h.strip()]


def _cmd_recommend(args: argparse.Namespace) -> int:
    history = _read_history(args)
    params = {"top_k": args.top_k, "id_type": "title" if args.titles else "key"}
    if args.url:
        import urllib.error
        import urllib.request

        body = json.dumps({"dataframe_records": [{"history": history}], "params": params}).encode()
        req = urllib.request.Request(args.url.rstrip("/") + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                row = json.loads(resp.read())["predictions"][0]
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{args.url} answered {exc.code}: {json.loads(exc.read()).get('message')}") from exc
    else:
        import mlflow.pyfunc
        import pandas as pd

        _use_registry(args.state)
        from mlflow.exceptions import MlflowException

        model = mlflow.pyfunc.load_model(args.model)
        try:
            row = model.predict(pd.DataFrame({"history": [history]}), params=params).iloc[0].to_dict()
        except MlflowException as exc:
            raise ValueError(exc.message) from exc
    if args.json:
        print(json.dumps(row))
    else:
        for i, (key, title, score) in enumerate(zip(row["item_keys"], row["titles"], row["scores"]), 1):
            print(f"{i:>3}. {title}  [{key}]  {score:.3f}")
    return 0


def _cmd_services(args: argparse.Namespace) -> int:
    from patchrec.profiles import state_path
    from patchrec.services import Services

    svc = Services(state_path(args.state), port=args.port)
    if args.action == "up":
        pids = svc.up()
        print(f"Prefect UI and API: http://127.0.0.1:{args.port}  (pids {pids}; logs in {svc.logs})")
        print(f"run: PREFECT_API_URL={svc.api} prefect deployment run patchrec/full-pipeline")
    elif args.action == "down":
        stopped = svc.down()
        print("stopped " + (", ".join(stopped) if stopped else "nothing (no live PID files)"))
    else:
        for name in ("prefect-server", "prefect-worker"):
            pid = svc.pid(name)
            print(f"{name:<15} {'running, pid ' + str(pid) if pid else 'stopped'}")
        print(f"API {svc.api}: {'healthy' if svc.healthy() else 'not answering'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from patchrec import __version__

    parser = argparse.ArgumentParser(
        prog="patchrec", description="PatchRec: LLM next-item recommendation with patches."
    )
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

    tr = top.add_parser("train", help="train one stage: ppt (patch pre-training), pft (patch fine-tuning) or sft")
    tr.add_argument("--data", required=True, type=Path, help="a prepared data folder")
    tr.add_argument("--out", required=True, type=Path, help="run folder (resumes from its checkpoints)")
    tr.add_argument("--init-from", type=Path, help="PFT: the PPT run folder to start from")
    tr.add_argument("--base", default="smollm2", help="smollm2 (default), tiny, or a local HF model folder")
    tr.add_argument("--model-cache", type=Path, help="where converted models are cached (default "
                    "$PATCHREC_MODEL_CACHE, else <state folder>/models)")
    from patchrec.config import EvalConfig, TrainConfig

    tr.set_defaults(config_fields=_add_config_flags(tr, TrainConfig, required=("stage", "layout")))
    _add_launch(tr)
    tr.add_argument("--sharding", choices=["ddp", "fsdp"], default="ddp",
                    help="with several ranks: whole model per rank (ddp) or sharded weights and optimizer (fsdp)")
    tr.set_defaults(func=_cmd_train)

    ev = top.add_parser("evaluate", help="rank a split with the run's head and report HR/NDCG")
    ev.add_argument("--data", required=True, type=Path, help="a prepared data folder")
    ev.add_argument("--run", required=True, type=Path, help="a finished run folder (its config gives the layout)")
    ev.add_argument("--out", required=True, type=Path, help="folder for eval.json and ranks.parquet")
    ev.set_defaults(config_fields=_add_config_flags(ev, EvalConfig, aliases={"num_beams": "--beams"}))
    ev.add_argument("--json", action="store_true", help="print eval.json")
    _add_launch(ev)
    ev.set_defaults(func=_cmd_evaluate)

    bl = top.add_parser(
        "baseline", help="train/evaluate an ID-based baseline (popularity, sasrec) on a prepared folder"
    )
    bl.add_argument("--kind", required=True, choices=["popularity", "sasrec"])
    bl.add_argument("--data", required=True, type=Path, help="a prepared data folder")
    bl.add_argument("--out", required=True, type=Path, help="folder for eval.json and ranks.parquet")
    bl.add_argument("--split", default="test", choices=["val", "test"])
    bl.add_argument("--max-samples", type=int, help="deterministic sample of targets (default: all)")
    bl.add_argument("--max-epochs", type=int, default=200, help="SASRec: epochs at most (early stopping on val)")
    bl.add_argument("--seed", type=int, default=0)
    bl.add_argument("--json", action="store_true", help="print eval.json")
    bl.set_defaults(func=_cmd_baseline)

    state_help = "state folder (default $PATCHREC_STATE or <project>/.state); its mlflow.db unless MLFLOW_TRACKING_URI"
    pl = top.add_parser("pipeline", help="run the full pipeline or the nightly retraining locally (Prefect flow)")
    pl.add_argument("flow", choices=["full", "nightly"])
    from patchrec.profiles import PROFILES

    pl.add_argument("--profile", default="demo", choices=list(PROFILES))
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set pft.max_samples=64 (repeatable)")
    pl.add_argument("--state", type=Path, help=state_help)
    pl.set_defaults(func=_cmd_pipeline)

    mo = top.add_parser("model", help="registered versions: list, promote one, roll the champion back")
    mo.add_argument("action", choices=["list", "promote", "rollback"])
    mo.add_argument("--name", required=True, help="registered model, e.g. patchrec-ml-100k")
    mo.add_argument("--version", type=int, help="promote: the version that becomes champion")
    mo.add_argument("--metric", default="ndcg_10", help="list: validation metric to show")
    mo.add_argument("--state", type=Path, help=state_help)
    mo.set_defaults(func=_cmd_model)

    rc = top.add_parser("recommend", help="top-K items for one history, from a registered model or a server")
    rc.add_argument("--model", default="models:/patchrec-ml-100k@champion", help="an MLflow model URI")
    rc.add_argument("--url", help="query a running `mlflow models serve` at this URL instead of loading the model")
    rc.add_argument("--history", help="comma-separated item keys (or titles with --titles), oldest first")
    rc.add_argument("--history-file", type=Path, help="one item per line, oldest first")
    rc.add_argument("--titles", action="store_true", help="the history holds titles, not item keys")
    rc.add_argument("--top-k", type=int, default=10)
    rc.add_argument("--json", action="store_true")
    rc.add_argument("--state", type=Path, help=state_help)
    rc.set_defaults(func=_cmd_recommend)

    se = top.add_parser("serve", help="serve a registered model over HTTP (MLflow's scoring server + request limits)")
    se.add_argument("--model", default="models:/patchrec-ml-100k@champion", help="an MLflow model URI")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=5001)
    se.add_argument("--refresh-seconds", type=float, default=60.0,
                    help="check a served alias this often and serve the version it moves to (0: never)")
    se.add_argument("--state", type=Path, help=state_help)
    se.set_defaults(func=_cmd_serve)

    sv = top.add_parser("services", help="local Prefect server + work pool + deployments + worker (by PID files)")
    sv.add_argument("action", choices=["up", "down", "status"])
    sv.add_argument("--port", type=int, default=4200)
    sv.add_argument("--state", type=Path, help=state_help)
    sv.set_defaults(func=_cmd_services)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    import warnings

    from pydantic import ValidationError

    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing")  # peft calling a renamed HF API

    from patchrec.data.formats import SourceError
    from patchrec.data.ingest import IngestError
    from patchrec.data.validation import ValidationFailed
    from patchrec.stopping import Stopped

    try:
        return int(args.func(args))
    except Stopped as exc:  # SIGTERM / SIGINT: what was finished is kept, and says so
        print(f"patchrec: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except ValidationError as exc:  # a setting out of its range: one line per field, no pydantic banner
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or exc.title}: {e['msg']} (got {str(e.get('input'))[:60]})"
                             for e in exc.errors())
        print(f"patchrec: error: invalid {exc.title}: {problems}", file=sys.stderr)
        return 2
    except (SourceError, IngestError, ValidationFailed, FileNotFoundError, ValueError, ValidationError, RuntimeError,
            TimeoutError) as exc:
        print(f"patchrec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. PermissionError: one line naming the path, not a stack trace
        where = f": {exc.filename}" if exc.filename else ""
        print(f"patchrec: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ != "MlflowException":
            raise
        print(f"patchrec: error: MLflow: {exc.message.splitlines()[0][:500]}", file=sys.stderr)  # type: ignore[attr-defined]
        return 2


if __name__ == "__main__":
    sys.exit(main())
