"""``flowprior fleet report --out DIR``: the fleet status as one static HTML page (no server, no network).

``DIR/index.html`` holds the status table (with each site prior's method, adapter or full, and size, and the
fleet's total in the store), a site x core-prior matrix (which core prior each site's
encoder derives from, directly or through a site prior; red where that is stale) and the lineage graph
of the priors in use, drawn as SVG. ``DIR/records/<id>.json`` holds every record the page links to, so
the folder works as it is from a laptop or copied to S3 (``aws s3 sync DIR s3://...``): all links are
relative and nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

from pipeline.formatting import number, size
from pipeline.registry.fleet import CHECK_NUMBERS, Fleet, SiteStatus, age, fleet_status, site_prior_summary
from pipeline.registry.records import Record, artifact_bytes, prior_method
from pipeline.registry.registry import Registry

GRAPH_NODES = 60  # site priors drawn one by one up to this many; beyond, one node per core ("+N site priors")
BOX_W, BOX_H, GAP_X, GAP_Y = 240, 34, 20, 70

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2} code{font-size:12px} .stale{background:#fbd5d5} .fresh{background:#d7f2dc}
.matrix td{text-align:center} .muted{color:#888} svg text{font:11px system-ui,sans-serif}
"""


def _link(record_id: str | None) -> str:
    if record_id is None:
        return '<span class="muted">-</span>'
    return f'<a href="records/{html.escape(record_id)}.json"><code>{html.escape(record_id)}</code></a>'


def _site_prior(status: SiteStatus) -> str:
    """The site prior cell: its link, and how it is stored (``adapter, 150.2 kB``)."""
    if status.site_prior is None:
        return _link(None)
    how = f"{status.site_prior_method or '?'}, {size(status.site_prior_bytes)}"
    return f"{_link(status.site_prior)}<br>{html.escape(how)}"


def _box_label(record: Record) -> str:
    """A graph box's first line: ``core``, or ``site prior s1: adapter 150.2 kB``."""
    if record.kind == "prior":
        return "core"
    return f"site prior {record.site or ''}: {prior_method(record)} {size(artifact_bytes(record))}"


def _status_rows(fleet: Fleet) -> str:
    rows = []
    for s in fleet.sites:
        stale = {None: "-", True: "stale", False: "no"}[s.stale]
        aligned = "-" if s.aligned_to is None else f"{_link(s.aligned_to)} ({html.escape(s.aligned_kind or '?')})"
        numbers = ", ".join(f"{k} {number(s.check_numbers.get(k), '.3g')}" for k in CHECK_NUMBERS)
        older = "" if s.checked_against == fleet.core else " (against an older core)"
        check = "-" if s.check is None else (f"{_link(s.check)} <b>{html.escape(str(s.decision))}</b> "
                                             f"{age(s.check_at, fleet.read_at)} ago{older}<br>{html.escape(numbers)}")
        choice = ", ".join(f"{k} {v}" if isinstance(v, (str, bool)) else f"{k} {number(v)}"
                           for k, v in s.sweep_choice.items())
        sweep = "-" if s.sweep is None else (f"{_link(s.sweep)} {age(s.sweep_at, fleet.read_at)} ago"
                                             f"<br>{html.escape(choice)}")
        rows.append(f'<tr class="site {"stale" if s.stale else ""}" data-site="{html.escape(s.site)}">'
                    f"<td><b>{html.escape(s.site)}</b></td>"
                    f"<td>{_link(s.encoder)} {age(s.encoder_at, fleet.read_at)}</td>"
                    f"<td>{aligned}</td><td>{stale}</td><td>{_site_prior(s)}</td><td>{check}</td><td>{sweep}</td></tr>")
    return "".join(rows)


def _matrix(fleet: Fleet) -> str:
    """Rows: sites; columns: the core priors current encoders derive from (the current core first)."""
    cores = [c for c in dict.fromkeys([fleet.core, *(s.aligned_core for s in fleet.sites)]) if c]
    head = "".join(f"<th>{_link(c)}{'<br>current' if c == fleet.core else ''}</th>" for c in cores)
    rows = []
    for s in fleet.sites:
        cells = []
        for core in cores:
            if s.aligned_core != core:
                cells.append("<td></td>")
                continue
            how = "directly" if s.aligned_kind == "prior" else "via site prior"
            cells.append(f'<td class="{"stale" if s.stale else "fresh"}" title="{html.escape(str(s.aligned_to))}">'
                         f"{how}</td>")
        rows.append(f"<tr><th>{html.escape(s.site)}</th>{''.join(cells)}</tr>")
    return f'<table class="matrix"><tr><th>site</th>{head}</tr>{"".join(rows)}</table>'


def depths(nodes: set[str], by_id: dict[str, Record]) -> dict[str, int]:
    """Each node's layer in the graph: one below its deepest parent among ``nodes`` (0 for none). Depth-first
    without recursion, so a long line of refits draws too; a loop of parents (a record edited by hand) is cut
    where it closes, at the parent still being worked on."""
    depth: dict[str, int] = {}
    for start in sorted(nodes):
        path, on_path = [start], {start}
        while path:
            rid = path[-1]
            if rid in depth:
                path.pop()
                continue
            parents = [p for p in by_id[rid].parents if p in nodes and p not in on_path]
            pending = next((p for p in parents if p not in depth), None)
            if pending is not None:
                path.append(pending)
                on_path.add(pending)
                continue
            depth[rid] = 1 + max((depth[p] for p in parents), default=-1)
            path.pop()
            on_path.discard(rid)
    return depth


def _graph(fleet: Fleet, by_id: dict[str, Record]) -> str:
    """The priors in use (what current encoders align to, the current core) and their ancestors, as an SVG
    layered by derivation depth; edges run from parent to child."""
    used = {s.aligned_to for s in fleet.sites if s.aligned_to in by_id}
    used |= {fleet.core} if fleet.core in by_id else set()
    nodes, queue = set(), list(used)
    while queue:
        rid = queue.pop()
        if rid in nodes or rid not in by_id:
            continue
        nodes.add(rid)
        queue.extend(p for p in by_id[rid].parents if p in by_id and by_id[p].kind in ("prior", "site-prior"))
    site_priors = sorted(n for n in nodes if by_id[n].kind == "site-prior")
    grouped: dict[str, int] = {}
    if len(site_priors) > GRAPH_NODES:  # one node per parent core instead
        for n in site_priors:
            nodes.discard(n)
            parent = next((p for p in by_id[n].parents if p in nodes), "?")
            grouped[parent] = grouped.get(parent, 0) + 1
    depth = depths(nodes, by_id)
    layers: dict[int, list[str]] = {}
    for rid in sorted(nodes, key=lambda r: (by_id[r].created_at, r)):
        layers.setdefault(depth[rid], []).append(rid)
    for parent, count in grouped.items():
        layers.setdefault(depth[parent] + 1 if parent in nodes else 0, []).append(f"+{count}:{parent}")
    width = max((len(v) for v in layers.values()), default=1) * (BOX_W + GAP_X) + GAP_X
    height = len(layers) * (BOX_H + GAP_Y) + GAP_Y
    where, boxes, edges = {}, [], []
    for level, ids in sorted(layers.items()):
        for i, rid in enumerate(ids):
            x, y = GAP_X + i * (BOX_W + GAP_X), GAP_Y // 2 + level * (BOX_H + GAP_Y)
            where[rid] = (x, y)
            if rid.startswith("+"):
                count, parent = rid[1:].split(":", 1)
                label, colour, href = f"{count} site priors", "#eee", None
            else:
                record = by_id[rid]
                label = _box_label(record)
                colour = "#cfe3ff" if rid == fleet.core else "#e8e8e8" if record.kind == "prior" else "#fff3c4"
                href = f"records/{rid}.json"
            box = (f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="{colour}" stroke="#555"/>'
                   f'<text x="{x + 6}" y="{y + 14}">{html.escape(label)}</text>'
                   f'<text x="{x + 6}" y="{y + 27}" fill="#555">'
                   f'{html.escape(rid if not rid.startswith("+") else "")[:30]}</text>')
            boxes.append(f'<a href="{html.escape(href)}">{box}</a>' if href else box)
    for rid, (x, y) in where.items():
        parents = [rid.split(":", 1)[1]] if rid.startswith("+") else by_id[rid].parents
        for p in parents:
            if p in where:
                px, py = where[p]
                edges.append(f'<line x1="{px + BOX_W // 2}" y1="{py + BOX_H}" x2="{x + BOX_W // 2}" y2="{y}" '
                             'stroke="#777" marker-end="url(#arrow)"/>')
    return (f'<svg width="{width}" height="{height}" role="img" '
            f'aria-label="lineage of the priors in use"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" '
            f'refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#777"/>'
            f'</marker></defs>{"".join(edges)}{"".join(boxes)}</svg>')


def linked(status: SiteStatus) -> list[str]:
    return [i for i in (status.encoder, status.aligned_to, status.site_prior, status.check, status.sweep) if i]


def write_fleet_report(registry: Registry, out: Path) -> Path:
    """Write ``out/index.html`` and ``out/records/*.json``; return the page's path."""
    fleet = fleet_status(registry)
    by_id = {r.id: r for r in registry.records()}
    wanted = {i for s in fleet.sites for i in linked(s)} | {fleet.core} - {None}
    records = out / "records"
    records.mkdir(parents=True, exist_ok=True)
    for rid in wanted:
        if rid in by_id:
            (records / f"{rid}.json").write_text(json.dumps(asdict(by_id[rid]), indent=1, sort_keys=True, default=str))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flowprior fleet: {html.escape(fleet.store)}</title>
<style>{STYLE}</style></head><body>
<h1>Fleet status</h1>
<p>Store <code>{html.escape(fleet.store)}</code>, read {html.escape(fleet.read_at)} (UTC).
Current core prior: {_link(fleet.core)}. <b id="counts">{len(fleet.sites)} sites, {len(fleet.stale)} stale</b>.
Site priors: <span id="site-priors">{html.escape(site_prior_summary(fleet))}</span>.</p>
<table id="status"><tr><th>site</th><th>current encoder</th><th>aligned to</th><th>stale</th><th>site prior</th>
<th>last check</th><th>last sweep choice</th></tr>{_status_rows(fleet)}</table>
<h2>Which core prior each site derives from</h2>
<p>Red: stale (outside the current core prior's family); green: current.</p>{_matrix(fleet)}
<h2>Lineage of the priors in use</h2>
<p>Blue: the current core prior; grey: other core priors; yellow: site priors. Arrows run from a prior to what
was derived from it. Each box links to its record.</p>{_graph(fleet, by_id)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
