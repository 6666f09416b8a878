"""Fuzz (hypothesis): record files damaged on disk, through ``registry ls``, ``fleet status``, ``fleet report`` and
``registry gc``.

A store holds valid records of every kind (some with artifacts, two sharing one); each example damages some of
their files in place (unknown and missing fields, wrong JSON types, odd metrics and config, links that loop,
stray names, non-JSON and truncated bytes) and moves aliases to odd targets. Every command must then either
succeed or fail with the project's one-line error (``main`` re-raises anything else, so a traceback fails the
test); the records no one touched still list; and a real gc deletes no artifact that any record file, damaged
or not, names by key or hash.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.registry import Registry, aliases
from pipeline.storage import Store, layout
from pipeline.storage.layout import ARTIFACTS, RECORDS

FIELDS = ("id", "kind", "site", "parents", "created_at", "config", "metrics", "artifact", "hash", "fingerprint",
          "aligned_to", "name", "tags", "links")
METRICS = ("probe_gain", "fm_ratio", "nll_gap", "mmd", "heldout_fm", "sliced_w2", "recon", "trials")
CONFIG_PATHS = (("decision",), ("choices",), ("choices", "s1"), ("choices", "s1", "lam"), ("choices", "s1", "mode"),
                ("choices", "s2", "feasible"), ("choices", "s9"), ("features",), ("settings_digest",))
ALIASES = ("core", "encoder.s1", "encoder.s2", "site-prior.s1", "site-check.s1", "encoder.s9")
BIG_INT, DEEP, HUGE = "@@BIG_INT@@", "@@DEEP600@@", "@@HUGE@@"  # written out when the file is (see RAW)
RAW = {BIG_INT: "9" * 5000,  # an integer of 5000 digits: json.dumps will not write one, a file can hold it
       DEEP: "[" * 600 + "]" * 600, "@@DEEP60@@": "[" * 60 + "]" * 60,  # lists nested that deep
       HUGE: json.dumps("x" * 100_000)}  # (placeholders keep hypothesis's reports short)
CLI_FRAMES = 1000 - 5  # the frames below main() in a `flowprior` process: Python's default limit, less the entry
GARBAGE = {"truncated": None, "empty": b"", "binary": b"\x00\xff\xfe{\x80", "null": b"null", "list": b"[1, 2]",
           "string": b'"prior"', "nan": b"NaN", "open": b'{"id": ', "utf16": '{"kind": "prior"}'.encode("utf-16")}

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                | st.sampled_from(["", "NaN", "nan", "inf", "-Infinity", "null", "1e999", "n/a"])
                | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
odd = json_values | st.sampled_from([10**400, -(10**400), *RAW])

RECORD_COUNT = 8
plausible = st.sampled_from([("site", "s9"), ("site", None), ("name", "run-1"), ("tags", {"team": "x"}),
                             ("aligned_to", None), ("fingerprint", "f" * 64), ("created_at", "2020-01-01"),
                             ("created_at", "2999-12-31T23:59:59+14:00"), ("kind", "prior"), ("kind", "sweep"),
                             ("parents", []), ("artifact", None), ("hash", None), ("links", "anything")])
keeps_valid = st.one_of(  # changes a record can take and still be read: the views must show them
    st.tuples(st.just("metric"), st.sampled_from(METRICS), odd),
    st.tuples(st.just("config"), st.sampled_from(CONFIG_PATHS), odd),
    st.tuples(st.just("link"), st.sampled_from(("parents", "aligned_to")), st.integers(0, RECORD_COUNT - 1)),
    plausible.map(lambda change: ("set", *change)),
    st.tuples(st.just("delete"), st.sampled_from(("aligned_to", "name", "tags", "links"))),
)
mutation = st.one_of(
    keeps_valid, keeps_valid,
    st.tuples(st.just("add"), st.text(max_size=12), odd),
    st.tuples(st.just("delete"), st.sampled_from(FIELDS)),
    st.tuples(st.just("set"), st.sampled_from(FIELDS), odd),
    st.tuples(st.just("bytes"), st.sampled_from(sorted(GARBAGE)), st.integers(0, 400)),
    st.tuples(st.just("rename")),  # a copy under a name no record file has (``<id> (1).json``), the original gone
)
mutations = st.lists(st.tuples(st.integers(0, RECORD_COUNT - 1), mutation), max_size=6)
alias_moves = st.lists(st.tuples(st.sampled_from(ALIASES), st.integers(0, RECORD_COUNT - 1)
                                 | st.sampled_from(["prior-gone-1", "../../x", "a b", "x" * 200, "garbage"])),
                       max_size=3)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, list[str]]:
    """A store with every kind of record (core1 and the site check share an artifact) and an orphan artifact;
    each example copies it."""
    root = tmp_path_factory.mktemp("fuzz-base")
    registry = Registry(Store.open(str(root / "store")))

    def artifact(name: str, data: bytes) -> Path:
        (root / name).write_bytes(data)
        return root / name

    core1 = registry.register("prior", fingerprint="a" * 64, config={"v": 1}, metrics={"heldout_fm": 0.5},
                              artifact=artifact("core1.safetensors", b"core one"))
    s1 = registry.register("site-prior", site="s1", parents=[core1.id], artifact=artifact("s1.safetensors", b"s1"))
    e1 = registry.register("encoder", site="s1", parents=[s1.id], aligned_to=s1.id, metrics={"recon": 0.1},
                           artifact=artifact("e1.safetensors", b"encoder one"))
    e2 = registry.register("encoder", site="s2", aligned_to=core1.id)
    core2 = registry.register("prior", parents=[core1.id], tags={"team": "ops"}, name="fit-2",
                              artifact=artifact("core2.safetensors", b"core two"))
    check = registry.register("site-check", site="s1", parents=[core2.id], config={"decision": "finetune"},
                              metrics={"probe_gain": 0.12, "fm_ratio": 1.3, "nll_gap": 0.4, "mmd": 0.02},
                              artifact=artifact("check.safetensors", b"core one"))
    choice = {"mode": "align", "lam": 0.004, "lr": 1e-3, "draws": 4, "objective": 4.1, "feasible": True}
    sweep = registry.register("sweep", name="lambda-1", config={"choices": {"s1": choice, "s2": choice}},
                              metrics={"trials": 4})
    plain = registry.register("prior", make_current=False)
    registry.store.put_file(f"{ARTIFACTS}/{'0' * 64}.bin", artifact("orphan.bin", b"a crashed publish"))
    ids = [r.id for r in (core1, s1, e1, e2, core2, check, sweep, plain)]
    assert len(ids) == RECORD_COUNT
    return root / "store", ids


def damage(root: Path, ids: list[str], changes: list[tuple], moves: list[tuple]) -> set[str]:
    """Apply ``changes`` to the record files under ``root`` and ``moves`` to the aliases; return the ids of the
    records whose files were touched."""
    folder = root / RECORDS
    touched = set()
    for index, (op, *args) in changes:
        record_id = ids[index]
        path = folder / f"{record_id}.json"
        if not path.exists():
            continue  # renamed by an earlier change
        touched.add(record_id)
        data = path.read_bytes()
        if op == "rename":
            path.rename(folder / f"{record_id} (1).json")
            continue
        if op == "bytes":
            kind, cut = args
            path.write_bytes(data[:cut] if GARBAGE[kind] is None else GARBAGE[kind])
            continue
        try:
            raw = json.loads(data)
        except ValueError:
            continue  # already garbage
        if not isinstance(raw, dict):
            continue
        if op in ("add", "set"):
            raw[args[0]] = args[1]
        elif op == "delete":
            raw.pop(args[0], None)
        elif op == "metric":
            raw["metrics"] = {**(raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}), args[0]: args[1]}
        elif op == "config":
            path_keys, value = args
            if not isinstance(raw.get("config"), dict):
                raw["config"] = {}
            place = raw["config"]
            for key in path_keys[:-1]:
                if not isinstance(place.get(key), dict):
                    place[key] = {}
                place = place[key]
            place[path_keys[-1]] = value
        elif op == "link":
            field, target = args
            raw[field] = [ids[target]] if field == "parents" else ids[target]
        text = json.dumps(raw, sort_keys=True)  # NaN and Infinity as Python writes them
        for placeholder, value in RAW.items():
            text = text.replace(json.dumps(placeholder), value)
        path.write_text(text)
    store = Store.open(str(root))
    for alias, target in sorted(moves, key=lambda move: move[1] == "garbage"):  # a move reads the entry before
        if target == "garbage":
            versions = [int(p.stem) for p in (root / layout.ALIASES / alias).glob("*.json")]
            store.create(f"{layout.ALIASES}/{alias}/{max(versions, default=0) + 1:010d}.json", b"{not json")
        else:
            aliases.move(store, alias, ids[target] if isinstance(target, int) else target)
    return touched


def stack_depth() -> int:
    frame, depth = sys._getframe(1), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def run(*argv: str, ok: bool = True) -> tuple[int, str]:
    """``flowprior ARGV`` in this process: its exit status (0 if ``ok``) and stdout; an error must be one line
    of the project's (any other exception propagates out of ``main`` and fails the test)."""
    out, err = io.StringIO(), io.StringIO()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(stack_depth() + CLI_FRAMES)  # hypothesis raises the limit; the command has no such room
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        sys.setrecursionlimit(limit)
    if code != 0:
        assert not ok and code in (1, 2), (argv, code, err.getvalue()[:500])
        assert err.getvalue().startswith(f"flowprior {argv[0]}: error: ") and err.getvalue().count("\n") == 1, (
            argv, err.getvalue()[:500])
    return code, out.getvalue()


def files(root: Path, folder: str) -> dict[str, bytes]:
    return {p.relative_to(root / folder).as_posix(): p.read_bytes() for p in (root / folder).rglob("*")
            if p.is_file()}


def named(artifact: str, record_files: dict[str, bytes]) -> bool:
    """Whether any record file names ``artifacts/<artifact>`` by key, or by the SHA-256 its name starts with."""
    digest = re.compile(rb"(?<![0-9a-f])" + re.escape(artifact[:64].encode()) + rb"(?![0-9a-f])")
    return any(f"{ARTIFACTS}/{artifact}".encode() in data or digest.search(data) for data in record_files.values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=mutations, moves=alias_moves)
@example(changes=[(0, ("metric", "heldout_fm", 10**400)), (5, ("metric", "probe_gain", 10**400)),
                  (6, ("config", ("choices", "s1", "lam"), 10**400))], moves=[])  # too big for a float
@example(changes=[(0, ("link", "parents", 4))], moves=[])  # core1 <-> core2: a loop of parents
@example(changes=[(6, ("config", ("choices",), [{"s1": {}}]))], moves=[])  # choices a list
@example(changes=[(6, ("config", ("choices", "s1"), 0.5)), (6, ("config", ("choices", "s2"), None))], moves=[])
@example(changes=[(6, ("config", ("choices",), "s1"))], moves=[])  # choices a string
@example(changes=[(6, ("config", ("choices",), 7))], moves=[])  # choices a number
@example(changes=[(5, ("metric", "probe_gain", BIG_INT))], moves=[])  # an integer of 5000 digits
@example(changes=[(0, ("set", "config", {"a": DEEP}))], moves=[])  # nested 600 deep
@example(changes=[(6, ("config", ("choices", "s1", "lam"), DEEP))], moves=[])
@example(changes=[(3, ("rename",)), (0, ("bytes", "truncated", 300))], moves=[("encoder.s2", "garbage")])
def test_damaged_record_files_give_project_errors_and_gc_keeps_what_they_name(base, changes, moves):
    source, ids = base
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        shutil.copytree(source, root)
        touched = damage(root, ids, changes, moves)
        store = ["--store", str(root)]
        aliases_read = all(target != "garbage" for _, target in moves)  # else the fleet views refuse (exit 2)

        _, listed = run("registry", "ls", "--json", *store)  # the records that cannot be read are skipped
        assert {r["id"] for r in json.loads(listed)} >= set(ids) - touched
        run("registry", "ls", *store)
        code, status = run("fleet", "status", "--json", *store, ok=aliases_read)
        if code == 0:
            json.loads(status)
        run("fleet", "status", *store, ok=aliases_read)
        if run("fleet", "report", "--out", str(Path(tmp) / "report"), *store, ok=aliases_read)[0] == 0:
            assert (Path(tmp) / "report" / "index.html").is_file()

        before = files(root, "")
        run("registry", "gc", "--dry-run", "--keep-days", "0", *store)
        assert files(root, "") == before  # a dry run deletes nothing
        record_files = files(root, RECORDS)
        artifacts = set(files(root, ARTIFACTS))
        run("registry", "gc", "--keep-days", "0", *store)
        left = set(files(root, ARTIFACTS))
        assert {a for a in artifacts if named(a, record_files)} <= left
        assert files(root, RECORDS) == record_files  # records are never deleted
