"""W&B tracking, read back from what W&B itself recorded: the offline runs' `.wandb` transaction logs.

One real tiny sweep (the `python -m lora_tune.sweep` command line, local Ray, W&B offline, a planted fake
API key) is shared by the module. The Registry link cannot reach a server here: `sync` is tested against
`RecordingWandbApi`, a stand-in of `wandb.Api()` that records calls, and the real `wandb sync` CLI only
against an unreachable server (it must then link nothing).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import inspect
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_tune import __version__
from lora_tune.config import WandbConfig
from lora_tune.storage import Store
from lora_tune.tracking import STEP_METRICS, TrialTracker, artifact_name, git_commit, sync
from tests.conftest import REPO
from tests.procs import run_bounded

FAKE_KEY = "PLANTEDfake0key0lora0tune0test0a1b2c3d4e5f6"  # 40+ characters, as wandb requires of a key
SWEEP = "reg"
SPACE = "+search_space={lr:{key:train.lr,type:grid,values:[3e-2,1e-6]},bits:{key:quant.bits,type:choice,values:[4,16]}}"


# --- reading the .wandb transaction log (LevelDB log format, W&B header) ---------------------------------


def wandb_records(path: Path) -> Iterator[Any]:
    """Every protobuf Record in a .wandb file, checksums verified."""
    from wandb.proto import wandb_internal_pb2

    raw, block = path.read_bytes(), 32768
    ident, magic, version = struct.unpack("<4sHB", raw[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(bytes([kind]) + data) & 0xFFFFFFFF == crc, f"bad checksum in {path}"
        pending += data
        if kind in (1, 4):  # FULL or LAST chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item: Any) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key


def read_run(path: Path) -> dict[str, Any]:
    """One offline run as W&B recorded it: run record, config, history rows, summary, artifacts, exit."""
    out: dict[str, Any] = {"dir": path.parent, "history": [], "summary": {}, "artifacts": [], "exit": None}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"] = {_key(i): json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            out["artifacts"].append(record.artifact)
        elif kind == "exit":
            out["exit"] = record.exit
    return out


def offline_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    return [read_run(p) for p in sorted(sweep_dir.glob("wandb/offline-run-*/*.wandb"))]


def run_cli(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return run_bounded([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No inherited W&B settings; W&B's own folders (staging, cache, config) under `home` so they can be grepped.
    RAY_ADDRESS=local: a Ray instance of the sweep's own, even if a `ray start` cluster runs on this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_DATA_DIR=str(home / "data"), WANDB_CACHE_DIR=str(home / "cache"),
               WANDB_CONFIG_DIR=str(home / "config"), RAY_ADDRESS="local", **extra)
    return env


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """4 trials one at a time (lr 3e-2 learns, 1e-6 does not: ASHA stops the latter), W&B offline, key planted;
    the two that finish are confirmed with one other seed."""
    out = tmp_path_factory.mktemp("registry")
    env = clean_env(out / "wandb-home", WANDB_API_KEY=FAKE_KEY)
    proc = run_cli(["-m", "lora_tune.sweep", "experiment=tiny", f"output_dir={out / 'runs'}", f"sweep_name={SWEEP}",
                    "wandb.mode=offline", "num_samples=2", "search_alg.max_concurrent=1", "data.max_train_examples=16",
                    "eval.confirm_top_k=2", "eval.confirm_seeds=1", "verbose=0", "~search_space", SPACE], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = out / "runs" / SWEEP
    with open(sweep_dir / "results.csv", newline="") as handle:
        rows = {r["trial_id"]: r for r in csv.DictReader(handle)}
    return {"dir": sweep_dir, "home": out / "wandb-home", "output": proc.stdout + proc.stderr, "rows": rows,
            "summary": json.loads((sweep_dir / "best" / "summary.json").read_text()), "runs": offline_runs(sweep_dir)}


def by_job(runs: list[dict[str, Any]], job_type: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["run"].job_type == job_type]


def test_one_run_per_trial_grouped_with_flat_config_and_tags(offline_sweep) -> None:
    rows, trials = offline_sweep["rows"], by_job(offline_sweep["runs"], "trial")
    assert sorted(r["run"].display_name for r in trials) == sorted(rows)
    for run in trials:
        row = rows[run["run"].display_name]
        assert run["run"].run_group == SWEEP and run["run"].project == "lora_tune"
        config = run["config"]
        assert float(config["train.lr"]) == float(row["lr"]) and str(config["quant.bits"]) == row["bits"]
        assert {"peft.r", "peft.alpha", "peft.target_modules", "max_steps"} <= set(config)
        assert {f"bits={row['bits']}", "base=embedded:tiny"} <= set(run["run"].tags)


def test_every_report_is_a_history_row_with_the_step_metrics(offline_sweep) -> None:
    rows = offline_sweep["rows"]
    for run in by_job(offline_sweep["runs"], "trial"):
        row, history = rows[run["run"].display_name], run["history"]
        assert [h["step"] for h in history] == list(range(4, int(row["steps"]) + 1, 4))
        for entry in history:
            assert set(STEP_METRICS) <= set(entry), f"missing {set(STEP_METRICS) - set(entry)}"
            assert entry["tokens_per_s"] > 0 and entry["step_time_s"] > 0 and entry["peak_mem_mb"] > 0
        assert min(h["eval_loss"] for h in history) == pytest.approx(float(row["eval_loss"]))


def test_asha_stops_end_the_run_with_stopped_early(offline_sweep) -> None:
    rows, trials = offline_sweep["rows"], by_job(offline_sweep["runs"], "trial")
    for run in trials:
        row, summary = rows[run["run"].display_name], run["summary"]
        assert run["exit"] is not None and run["exit"].exit_code == 0
        assert summary["stopped_early"] == (row["stopped_early"] == "True")
        assert summary["steps"] == int(row["steps"]) and summary["status"] == "TERMINATED"
        assert summary["best_eval_loss"] == pytest.approx(float(row["eval_loss"]))
    assert any(r["summary"]["stopped_early"] for r in trials), "ASHA stopped no trial"


def test_sweep_run_has_the_trials_table_and_the_winner(offline_sweep) -> None:
    (run,) = by_job(offline_sweep["runs"], "sweep")
    rows, winner = offline_sweep["rows"], offline_sweep["summary"]["trial_id"]
    assert run["run"].run_group == SWEEP and run["run"].display_name == SWEEP
    assert run["summary"]["winner"] == winner and run["summary"]["trials"] == 4
    assert run["summary"]["stopped_early"] == sum(r["stopped_early"] == "True" for r in rows.values())
    (logged,) = [{k.removeprefix("trials."): v for k, v in h.items() if k.startswith("trials.")}
                 for h in run["history"] if "trials._type" in h]
    assert logged["_type"] == "table-file" and logged["nrows"] == 4
    table = json.loads((run["dir"] / "files" / logged["path"]).read_text())
    cols = table["columns"]
    assert {"trial_id", "status", "stopped_early", "steps", "eval_loss", "lr", "bits", "winner"} <= set(cols)
    cells = {r[cols.index("trial_id")]: dict(zip(cols, r, strict=True)) for r in table["data"]}
    assert set(cells) == set(rows)
    assert [t for t, c in cells.items() if c["winner"]] == [winner]
    for trial_id, cell in cells.items():
        row = rows[trial_id]
        assert cell["status"] == row["status"] and str(cell["stopped_early"]) == row["stopped_early"]


def test_the_finished_configs_are_confirmed_with_another_seed_and_the_best_mean_wins(offline_sweep) -> None:
    """eval.confirm_top_k=2, eval.confirm_seeds=1: the two finished configs are trained again with seed 1 to the
    end (a confirm/ Tune trial with the same params, a W&B run of job type confirm); each row gets the seeds,
    values, mean and spread; the winner is the best mean."""
    import statistics

    from lora_tune.results import parse_result_lines

    sweep_dir, rows, summary = offline_sweep["dir"], offline_sweep["rows"], offline_sweep["summary"]
    finished = {t for t, r in rows.items() if r["stopped_early"] == "False"}
    confirmed = {t: r for t, r in rows.items() if r["confirm_mean"]}
    assert len(finished) == 2 and set(confirmed) == finished
    retrained = {}
    for folder in (sweep_dir / "confirm").glob("lora_trial_*"):
        params = json.loads((folder / "params.json").read_text())
        retrained[params["confirms"]] = (params, parse_result_lines((folder / "result.json").read_text()))
    assert set(retrained) == finished
    for trial_id, row in confirmed.items():
        params, history = retrained[trial_id]
        assert params["seed"] == 1 and float(params["train.lr"]) == float(row["lr"])
        assert str(params["quant.bits"]) == row["bits"] and history[-1]["step"] == 12  # to the end, no ASHA
        values = [float(v) for v in row["confirm_values"].split()]
        assert row["confirm_seeds"] == "0 1" and values[0] == pytest.approx(float(row["eval_loss"]), rel=1e-5)
        assert values[1] == pytest.approx(min(h["eval_loss"] for h in history), rel=1e-5)
        assert float(row["confirm_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
        assert float(row["confirm_std"]) == pytest.approx(statistics.stdev(values), rel=1e-4)
    best_mean = min(confirmed, key=lambda t: float(confirmed[t]["confirm_mean"]))
    assert summary["trial_id"] == best_mean
    assert [c["trial_id"] for c in summary["confirmation"]["configs"]] == sorted(
        confirmed, key=lambda t: float(confirmed[t]["confirm_mean"]))
    runs = by_job(offline_sweep["runs"], "confirm")
    assert len(runs) == 2 and all(run["config"]["seed"] == 1 for run in runs)
    (sweep_run,) = by_job(offline_sweep["runs"], "sweep")
    assert sweep_run["summary"]["winner_confirm_mean"] == pytest.approx(float(confirmed[best_mean]["confirm_mean"]))


def _md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_winner_is_a_model_artifact_with_files_metadata_and_aliases(offline_sweep) -> None:
    (run,) = by_job(offline_sweep["runs"], "sweep")
    sweep_dir, summary = offline_sweep["dir"], offline_sweep["summary"]
    (artifact,) = [a for a in run["artifacts"] if a.type == "model"]
    assert artifact.name == artifact_name("embedded:tiny", SWEEP) == "tiny-reg"
    assert {"best", SWEEP} <= set(artifact.aliases)
    files = {c.path: c.digest for c in artifact.manifest.contents}
    best = sweep_dir / "best"
    expected = {f"adapter/{p.name}": p for p in (best / "adapter").iterdir()} | {"summary.json": best / "summary.json"}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "summary.json"} <= set(files)
    assert files == {name: _md5_b64(path) for name, path in expected.items()}
    meta = json.loads(artifact.metadata)
    assert meta["metric"] == "eval_loss" and meta["value"] == summary["value"]
    assert meta["trial_id"] == summary["trial_id"]
    assert meta["config"] == summary["config"] and meta["base_model"] == "embedded:tiny"
    assert meta["bits"] == summary["bits"] == meta["config"]["quant"]["bits"]
    assert meta["project_version"] == __version__ and meta["git_commit"] == git_commit()
    data = hashlib.sha256()  # the documented fingerprint: sha256 over (name, bytes) of the data files
    for path in sorted((REPO / "data" / "dates").glob("*.jsonl")):
        data.update(path.name.encode() + b"\0" + path.read_bytes())
    assert meta["dataset_fingerprint"] == f"sha256:{data.hexdigest()}"


def test_offline_registry_link_is_recorded_as_pending(offline_sweep) -> None:
    sweep_dir = offline_sweep["dir"]
    (link,) = json.loads((sweep_dir / "pending_links.json").read_text())["links"]
    assert link["status"] == "pending" and link["target"] == "wandb-registry-model/lora-adapters"
    assert (link["artifact"], link["alias"]) == ("tiny-reg", SWEEP)
    assert read_run(sweep_dir / link["run_file"])["run"].job_type == "sweep"
    assert offline_sweep["summary"]["wandb"]["artifact"] == "tiny-reg:reg"


def test_planted_api_key_is_written_nowhere(offline_sweep) -> None:
    places = [offline_sweep["dir"], offline_sweep["home"]]
    files = [Path(root) / name for place in places for root, _, names in os.walk(place) for name in names]
    files = [f for f in files if f.is_file() and not f.is_symlink()]
    assert len(files) > 20 and any(f.suffix == ".wandb" for f in files)
    leaks = [str(f) for f in files if FAKE_KEY.encode() in f.read_bytes()]
    assert leaks == []
    assert offline_sweep["output"].strip() and FAKE_KEY not in offline_sweep["output"]


# --- sync: offline runs up, then the pending links, once --------------------------------------------------


def real_sdk_accepts(method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Raise TypeError unless the real wandb SDK's `method` takes these arguments (the stand-ins below check every
    call they get against the SDK they stand in for, so a call shape the SDK refuses fails here too)."""
    return inspect.signature(method).bind(None, *args, **kwargs).arguments


class RecordingWandbApi:
    """Stand-in for `wandb.Api()` (no W&B server here): serves the artifacts that the synced .wandb files
    hold and records every link call."""

    default_entity = "test-entity"

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.links: list[tuple[str, str, list[str]]] = []

    def artifact(self, *args: Any, **kwargs: Any) -> Any:
        from wandb.apis.public import Api

        real_sdk_accepts(Api.artifact, *args, **kwargs)
        return self._artifact(*args, **kwargs)

    def _artifact(self, name: str, type: str | None = None) -> Any:
        entity, project, rest = name.split("/")
        artifact, alias = rest.split(":")
        uploaded = {(r["run"].project, a.name, alias_) for p in self.sweep_dir.glob("wandb/*/*.wandb")
                    if p.with_suffix(".wandb.synced").exists()
                    for r in [read_run(p)] for a in r["artifacts"] if a.type == type for alias_ in a.aliases}
        if entity != self.default_entity or (project, artifact, alias) not in uploaded:
            raise LookupError(f"artifact {name} of type {type} was not uploaded")
        api = self

        class Artifact:
            def link(self, *args: Any, **kwargs: Any) -> None:
                import wandb

                given = real_sdk_accepts(wandb.Artifact.link, *args, **kwargs)
                api.links.append((name, given["target_path"], list(given.get("aliases") or [])))

        return Artifact()


def pretend_wandb_sync(calls: list[list[Path]]) -> Any:
    """Stand-in for the `wandb sync` upload: records the run dirs and marks them synced, as wandb sync does."""

    def run_sync(sweep_dir: Path, run_dirs: list[Path], timeout_s: float) -> int:
        calls.append(list(run_dirs))
        for run_dir in run_dirs:
            for log in run_dir.glob("*.wandb"):
                log.with_suffix(".wandb.synced").touch()
        return 0

    return run_sync


@pytest.fixture
def sweep_copy(offline_sweep, tmp_path: Path) -> Path:
    return Path(shutil.copytree(offline_sweep["dir"], tmp_path / SWEEP, symlinks=True))


def test_sync_uploads_then_links_once(sweep_copy: Path) -> None:
    api, calls = RecordingWandbApi(sweep_copy), []
    first = sync(Store.at(str(sweep_copy)), api=api, run_sync=pretend_wandb_sync(calls))
    assert len(calls) == 1 and len(calls[0]) == 7  # 4 trial runs, 2 confirmation runs, the sweep run
    assert api.links == [(f"test-entity/lora_tune/tiny-reg:{SWEEP}", "wandb-registry-model/lora-adapters", [SWEEP])]
    assert len(first["linked"]) == 1 and first["waiting"] == first["failed"] == []
    (link,) = json.loads((sweep_copy / "pending_links.json").read_text())["links"]
    assert link["status"] == "linked" and link["linked_at"]
    second = sync(Store.at(str(sweep_copy)), api=api, run_sync=pretend_wandb_sync(calls))
    assert len(calls) == 1 and len(api.links) == 1  # nothing uploaded or linked again
    assert second["linked"] == [] and len(second["already_linked"]) == 1


def test_sync_of_a_sweep_in_a_bucket_uploads_its_runs_and_links_once(sweep_copy: Path, s3) -> None:
    """`registry sync s3://...`: the offline runs are read from the bucket, uploaded from a local copy, marked
    synced in the bucket, and the link's status is written back there."""
    from lora_tune.storage import cache_dir

    bucket = Store.at(s3.uri(f"registry-sync/{SWEEP}"))
    for path in sweep_copy.rglob("*"):
        if path.is_file() and not path.is_symlink():
            bucket.write_bytes(path.relative_to(sweep_copy).as_posix(), path.read_bytes())
    calls: list[list[Path]] = []
    api = RecordingWandbApi(cache_dir(f"{bucket.uri}/wandb-sync"))  # where sync downloads the runs to
    first = sync(Store.at(bucket.uri), api=api, run_sync=pretend_wandb_sync(calls))
    assert len(calls) == 1 and len(calls[0]) == 7 and len(first["synced"]) == 7
    assert all(Path(d).is_relative_to(cache_dir(f"{bucket.uri}/wandb-sync")) for d in calls[0])
    assert len([f for f in bucket.files("wandb") if f.endswith(".wandb.synced")]) == 7
    assert api.links == [(f"test-entity/lora_tune/tiny-reg:{SWEEP}", "wandb-registry-model/lora-adapters", [SWEEP])]
    assert bucket.read_json("pending_links.json")["links"][0]["status"] == "linked"
    again = sync(Store.at(bucket.uri), api=api, run_sync=pretend_wandb_sync(calls))
    assert len(calls) == 1 and len(api.links) == 1 and len(again["already_linked"]) == 1


class StandInRun:
    """An online wandb Run as `_register` uses it: each link_artifact call is bound to the real SDK's signature."""

    id = "run-1"

    def __init__(self, local_dir: Path, fails: bool = False):
        self.settings = type("Settings", (), {"sync_file": str(local_dir / "wandb" / "run-1" / "run-1.wandb")})()
        self.fails, self.links = fails, []

    def link_artifact(self, *args: Any, **kwargs: Any) -> None:
        import wandb

        given = real_sdk_accepts(wandb.Run.link_artifact, *args, **kwargs)
        if self.fails:
            raise ConnectionError("W&B is unreachable")
        self.links.append((given["artifact"], given["target_path"], given.get("aliases")))


def test_online_the_winner_is_linked_to_the_registry_at_once(tmp_path: Path) -> None:
    tracker = TrialTracker(WandbConfig(mode="online", registry="model", collection="lora-adapters"), "Sweep 1",
                           Store.at(str(tmp_path / "s")), tmp_path / "s", "embedded:tiny")
    run, artifact = StandInRun(tmp_path / "s"), object()
    tracker._register(run, artifact)
    assert run.links == [(artifact, "wandb-registry-model/lora-adapters", ["Sweep-1"])]
    assert not (tmp_path / "s" / "pending_links.json").exists()
    failing = StandInRun(tmp_path / "s", fails=True)
    with pytest.raises(ConnectionError):  # the tracker's guard turns this into one warning
        tracker._register(failing, artifact)
    (link,) = json.loads((tmp_path / "s" / "pending_links.json").read_text())["links"]
    assert link["status"] == "pending" and link["target"] == "wandb-registry-model/lora-adapters"


def test_sync_links_nothing_while_runs_are_not_uploaded(sweep_copy: Path) -> None:
    api = RecordingWandbApi(sweep_copy)
    done = sync(Store.at(str(sweep_copy)), api=api, run_sync=lambda sweep_dir, dirs, timeout_s: 1)  # the upload failed
    assert api.links == [] and len(done["waiting"]) == 1
    assert json.loads((sweep_copy / "pending_links.json").read_text())["links"][0]["status"] == "pending"


def test_sync_command_with_unreachable_wandb_keeps_the_link_pending(sweep_copy: Path, tmp_path: Path) -> None:
    """The real `wandb sync` against a closed port: no run is marked synced, nothing is linked, exit 1."""
    env = clean_env(tmp_path / "wandb-home", WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL="http://127.0.0.1:9")
    proc = run_cli(["-m", "lora_tune.registry", "sync", str(sweep_copy), "--timeout", "8"], env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "waiting: tiny-reg:reg -> wandb-registry-model/lora-adapters" in proc.stdout
    assert not list(sweep_copy.glob("wandb/*/*.synced"))
    assert json.loads((sweep_copy / "pending_links.json").read_text())["links"][0]["status"] == "pending"
    assert "setting up run" in proc.stderr  # wandb sync did start uploading, to the closed port
    assert FAKE_KEY not in proc.stdout + proc.stderr
    assert not [f for f in sweep_copy.rglob("*") if f.is_file() and FAKE_KEY.encode() in f.read_bytes()]


def test_sync_command_rejects_a_missing_dir(tmp_path: Path) -> None:
    proc = run_cli(["-m", "lora_tune.registry", "sync", str(tmp_path / "nope")], clean_env(tmp_path), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lora_tune: error: sweep: {tmp_path / 'nope'} is not a sweep (no config.yaml); accepted: a sweep folder "
        "such as runs/<sweep_name> or s3://bucket/prefix/<sweep_name>"]


# --- W&B off or failing -------------------------------------------------------------------------------------


def test_disabled_tracker_touches_no_wandb(tmp_path: Path) -> None:
    tracker = TrialTracker(WandbConfig(mode="disabled"), "off", Store.at(str(tmp_path / "off")), tmp_path / "off",
                           "embedded:tiny")
    tracker.trial_started("t1", {"peft": {"r": 8}})
    tracker.trial_result("t1", {"step": 4, "eval_loss": 1.0})
    tracker.trial_ended("t1", {"status": "TERMINATED"})
    tracker.log_sweep([{"trial_id": "t1", "status": "TERMINATED"}], None, {})
    assert not (tmp_path / "off").exists() and tracker.refs() == {"mode": "disabled"}


def test_a_trial_runs_config_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: secret-named keys and the values of secret environment variables never reach a W&B run config."""
    secret = "sekrit0value0of0an0env0token"
    monkeypatch.setenv("LORA_TUNE_TEST_TOKEN", secret)
    tracker = TrialTracker(WandbConfig(mode="offline"), "red", Store.at(str(tmp_path / "red")), tmp_path / "red",
                           "embedded:tiny")
    tracker.trial_started("t1", {"peft": {"r": 8}, "model": {"name_or_path": f"https://u:{secret}@hub.test/m",
                                                             "hf_token": "hf_plain0token0in0a0key"}})
    tracker.trial_ended("t1", {"status": "TERMINATED"})
    (run,) = offline_runs(tmp_path / "red")
    assert run["config"]["peft.r"] == 8  # the config is there, minus the secrets
    assert run["config"]["model.name_or_path"] == "https://u:<redacted>@hub.test/m"
    assert run["config"]["model.hf_token"] == "<redacted>"
    files = [p for p in (tmp_path / "red").rglob("*") if p.is_file() and not p.is_symlink()]
    assert files and not [p for p in files if secret.encode() in p.read_bytes() or b"hf_plain0token" in p.read_bytes()]


def test_logger_none_composes_to_disabled() -> None:
    from lora_tune.compose import compose_config

    assert compose_config(["logger=none"]).wandb.mode == "disabled"
    assert compose_config(["experiment=tiny", "wandb.mode=disabled"]).wandb.mode == "disabled"


@pytest.mark.slow
def test_unreachable_wandb_warns_once_and_the_sweep_completes(tmp_path: Path) -> None:
    """Online with an invalid entity and a closed port: wandb.init fails, one warning, full local results."""
    env = clean_env(tmp_path / "wandb-home", WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL="http://127.0.0.1:9",
                    WANDB_INIT_TIMEOUT="5")
    proc = run_cli(["-m", "lora_tune.sweep", "experiment=tiny", f"output_dir={tmp_path / 'runs'}", "sweep_name=down",
                    "wandb.mode=online", "wandb.entity=no-such-entity-lora-tune", "num_samples=2", "max_steps=4",
                    "data.max_train_examples=16", "verbose=0"], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert output.count("W&B disabled for the rest of this sweep") == 1, output[-3000:]
    sweep_dir = tmp_path / "runs" / "down"
    with open(sweep_dir / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (sweep_dir / "best" / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((sweep_dir / "best" / "summary.json").read_text())["wandb"]["mode"] == "online"
    assert proc.stdout.strip().splitlines()[-1].startswith("lora_tune: winner ")
    assert not (sweep_dir / "pending_links.json").exists() and FAKE_KEY not in output
