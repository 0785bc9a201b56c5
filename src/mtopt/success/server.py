"""Labeling page: a small FastAPI app bound to 127.0.0.1.

Shows an episode's final image (and its frames as a strip), the task, and lets a person
label success/failure with the mouse or keys (y / 1 = success, n / 0 = failure, s = skip,
u = undo: the last label on the page is taken back and its episode shown again).
The queue puts first the episodes the current success detector is least sure about.
Only images of episodes in the store are served (looked up by id, never by path). The
server indexes the store rather than loading it (memory grows by an id, a task and the
detector's scores per episode; frames are read from their shard when shown) and picks up
episodes that robots write while it runs. A skipped episode stays out of the page's queue
until the task changes or the page is reloaded.

Several people may label at once: each page names itself (``client``), and the episodes
handed to one page (10 at a time, and the ones it skipped) stay out of the others'
queues for ``LEASE_S`` seconds after its last request, so two pages do not show the same
episodes. Undo takes back a label only while it is the one in
force (another page's later label stays). A newer success detector published in the
detector folder (``mtopt sd improve``) is picked up while the page runs: the store is
scored again in the background and the queue orders by it once done.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field, StrictBool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from mtopt.store.reader import EpisodeReader
from mtopt.store.schema import SCHEMA_VERSION, Episode, UnknownSchemaVersionError
from mtopt.success.labels import Label, LabelStore
from mtopt.tasks.registry import DEFAULT_REGISTRY, TaskRegistry

log = logging.getLogger(__name__)


QUEUE_LIMIT = 5000
"""Episodes one queue request may ask for (the page asks for 10 more than it skipped)."""
LEASE_S = 120.0
"""How long the episodes a page was handed stay out of other pages' queues (seconds)."""
MAX_BODY_BYTES = 64 * 1024
"""The largest request body the app reads (a label is about 100 bytes)."""
RESCORE_RETRY_S = 60.0
"""Seconds before a detector version that failed to score the store is tried again (it
was tried at every refresh, each time reading every final image of the store)."""


class LabelIn(BaseModel):
    # the store takes any id a client writes (a real cell's may be long, with "/" or
    # "#"); an id is still looked up in the store before a label is written
    episode_id: str = Field(min_length=1, max_length=1024)
    task: str = Field(min_length=1, max_length=1024)
    success: StrictBool  # true or false; "yes", 1 or "0" are errors, not guesses


def _png(arr: np.ndarray, scale: int) -> bytes:
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class StoreIndex:
    """What the page needs of a store, without holding its images: each episode's shard,
    requested task and success-detector scores. Images stay on disk and are read when an
    episode is shown (a few are cached), so memory grows by ~2 KB per episode (measured:
    +5 MB from 3000 to 6000 episodes), not by its frames (~140 KB). ``refresh()`` picks up shards written since (a run that
    is still collecting); corrupt shards are quarantined by the reader, as everywhere."""

    def __init__(
        self,
        store_dir: str | Path,
        sd: Any = None,
        shards_per_refresh: int = 256,
        cache_episodes: int = 16,
    ):
        self.reader = EpisodeReader(store_dir, shards_per_poll=shards_per_refresh)
        self.sd = sd
        self.sd_tasks: list[str] = list(sd.tasks) if sd is not None else []
        self.shard: dict[str, Path] = {}
        self.task: dict[str, str] = {}
        self.probs: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Episode] = OrderedDict()
        self._cache_size = cache_episodes
        self.refresh(until_caught_up=True)

    def __len__(self) -> int:
        return len(self.shard)

    def __contains__(self, episode_id: object) -> bool:
        return episode_id in self.shard

    def ids(self) -> list[str]:
        """Episode ids in store order (shards oldest first, rows in order)."""
        with self._lock:
            return list(self.shard)

    def refresh(self, until_caught_up: bool = False) -> int:
        """Index new shards (a bounded number per call unless ``until_caught_up``);
        returns how many episodes were added."""
        columns = ["schema_version", "episode_id", "task", "image_height", "image_width"]
        if self.sd is not None:
            columns.append("final_image")
        added = 0
        read = self.reader.drain_decoded if until_caught_up else self.reader.poll_decoded
        with self._lock:
            # _index_rows fails only on a row that does not decode: that shard is
            # quarantined, the others are indexed
            for path, rows in read(_index_rows, columns, decode_errors_quarantine=True):
                new = [r for r in dict((r[0], r) for r in rows).values() if r[0] not in self.shard]
                if self.sd is not None and new:
                    # a shard the detector cannot score (another camera's image size):
                    # its episodes are indexed unscored, not lost (the poll marked it read)
                    try:
                        scores = self.sd.score(np.stack([i for _, _, i in new if i is not None]))
                    except ValueError as exc:
                        log.warning("could not score the episodes of %s: %s", path, exc)
                    else:
                        for k, (eid, _, _) in enumerate(new):
                            self.probs[eid] = np.asarray(scores[k], np.float32)
                for eid, task, _ in new:
                    self.task[eid] = task
                    self.shard[eid] = path
                added += len(new)
        return added

    def episode(self, episode_id: str) -> Episode | None:
        """The whole episode (images included), read from its shard."""
        with self._lock:
            if episode_id in self._cache:
                self._cache.move_to_end(episode_id)
                return self._cache[episode_id]
            path = self.shard.get(episode_id)
        if path is None:
            return None
        ep = self.reader.read_episode(path, episode_id)
        with self._lock:
            if ep is None:  # its shard was quarantined or removed since it was indexed
                self.shard.pop(episode_id, None)
                return None
            self._cache[episode_id] = ep
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return ep


def _index_rows(table: Any) -> list[tuple[str, str, np.ndarray | None]]:
    """(episode id, task, final image or None) per row; a row that does not decode
    raises, and the reader quarantines its shard."""
    out: list[tuple[str, str, np.ndarray | None]] = []
    for row in table.to_pylist():
        if row["schema_version"] != SCHEMA_VERSION:
            raise UnknownSchemaVersionError(
                f"episode {row['episode_id']}: unknown schema version {row['schema_version']!r}"
            )
        img = None
        if "final_image" in row:
            h, w = int(row["image_height"]), int(row["image_width"])
            img = np.frombuffer(row["final_image"], dtype=np.uint8).reshape(h, w, 3)
        out.append((str(row["episode_id"]), str(row["task"]), img))
    return out


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
"""The Host headers the labeling page answers by default (it binds to 127.0.0.1)."""


def allowed_hosts_for(bind_host: str) -> tuple[str, ...]:
    """The Host headers to answer when serving on ``bind_host``: on a loopback address
    (localhost, 127.0.0.0/8, ::1) only loopback names, which refuses DNS-rebinding
    requests; served beyond this machine (0.0.0.0, an address or a name of it), any."""
    name = bind_host.strip("[]")
    if name == "localhost":
        return LOOPBACK_HOSTS
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:  # a host name other than localhost
        return ("*",)
    if not ip.is_loopback:
        return ("*",)
    shown = f"[{name}]" if ip.version == 6 else name
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, shown)))


def create_app(
    store_dir: str | Path,
    labels_path: str | Path,
    sd_dir: str | Path | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    refresh_s: float = 5.0,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
) -> FastAPI:
    """The labeling app. The queue re-reads the store for new shards at most every
    ``refresh_s`` seconds. Requests must name one of ``allowed_hosts`` in their Host
    header (``["*"]``: any, for a page served to other machines)."""
    from mtopt.success.network import SuccessDetector

    sd = SuccessDetector.load(sd_dir) if sd_dir is not None else None
    # the index in use; a newer detector's is built beside it and swapped in when done
    current = {"index": StoreIndex(store_dir, sd)}
    rescoring = threading.Lock()  # held while a newer detector's index is being built
    labels = LabelStore(labels_path)
    last_refresh = [time.monotonic()]
    leases: dict[tuple[str, str], tuple[str, float]] = {}  # (episode, task) -> (page, until)
    leases_lock = threading.Lock()
    app = FastAPI(title="mtopt labeling")
    # only requests addressed to this machine: a page elsewhere whose name points here
    # (DNS rebinding) cannot read or write labels
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def bounded_body(request: Request, call_next: Any) -> Any:
        # a body is read whole before it is checked: refuse a large one unread
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, 413)
        if size is None and request.method in ("POST", "PUT", "PATCH"):
            return JSONResponse({"detail": "a request body needs a Content-Length"}, 411)
        return await call_next(request)

    failed_at: dict[int, float] = {}  # detector versions that could not score the store

    def rescore_with(version: int) -> None:
        """Build the index again with the detector ``version`` (a thread)."""
        try:
            newer = SuccessDetector.load(sd_dir, version=version)  # type: ignore[arg-type]
            current["index"] = StoreIndex(store_dir, newer)
            log.info("the queue now orders by success detector v%d", version)
        except Exception as exc:  # the page goes on with the detector it has
            log.warning(
                "could not score the store with detector v%d: %s (tried again in %d s)",
                version,
                exc,
                RESCORE_RETRY_S,
            )
            failed_at[version] = time.monotonic()
        finally:
            rescoring.release()

    def maybe_rescore() -> None:
        index = current["index"]
        if sd_dir is None or index.sd is None:
            return
        try:
            latest = SuccessDetector.latest_version(sd_dir)
        except Exception as exc:  # a folder being written: the next refresh looks again
            log.warning("could not read the detector versions in %s: %s", sd_dir, exc)
            return
        if time.monotonic() - failed_at.get(latest, -math.inf) < RESCORE_RETRY_S:
            return  # (each try reads every final image of the store)
        if latest > index.sd.version and rescoring.acquire(blocking=False):
            threading.Thread(target=rescore_with, args=(latest,), daemon=True).start()

    def check_task(task: str) -> None:
        if task not in registry.names:
            raise HTTPException(400, f"unknown task {task!r}; valid: {', '.join(registry.names)}")

    def episode(eid: str) -> Episode:
        ep = current["index"].episode(eid)
        if ep is None:
            raise HTTPException(404, f"no episode {eid!r} in the store")
        return ep

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/tasks")
    def tasks() -> list[str]:
        return list(registry.names)

    @app.get("/api/queue")
    def queue(task: str, limit: int = 20, client: str | None = None) -> dict[str, Any]:
        """The next ``limit`` episodes to label for ``task``; with ``client`` (the page's
        own name), episodes handed to other pages in the last ``LEASE_S`` seconds are
        left out, and these are held for this one."""
        check_task(task)
        if not 1 <= limit <= QUEUE_LIMIT:
            raise HTTPException(400, f"limit must be in [1, {QUEUE_LIMIT}]")
        if client is not None and not 1 <= len(client) <= 64:
            raise HTTPException(400, "client must be 1 to 64 characters")
        index = current["index"]
        if time.monotonic() - last_refresh[0] >= refresh_s:
            last_refresh[0] = time.monotonic()
            try:
                index.refresh()
            except Exception as exc:  # a newer writer's shard, an unreadable disk: the page
                log.warning("store refresh failed, queue from the index so far: %s", exc)
            maybe_rescore()
        done = {eid for (eid, t) in labels.latest() if t == task}
        todo = [eid for eid in index.ids() if eid not in done]
        remaining = len(todo)
        # a task the detector was not trained on (added since): store order, no score
        probs = index.probs
        k = index.sd_tasks.index(task) if task in index.sd_tasks else None
        if k is not None:  # the least certain first; unscored episodes last
            todo.sort(key=lambda e: abs(float(probs[e][k]) - 0.5) if e in probs else 1.0)
        held_elsewhere = 0
        if client is not None:
            now = time.monotonic()
            with leases_lock:
                for key in [key for key, (_, until) in leases.items() if until <= now]:
                    del leases[key]
                held = {e for (e, t), (c, _) in leases.items() if t == task and c != client}
                todo = [e for e in todo if e not in held]
                held_elsewhere = remaining - len(todo)
                for e in todo[:limit]:
                    leases[(e, task)] = (client, now + LEASE_S)
        items = [
            {
                "episode_id": e,
                "p_success": float(probs[e][k]) if k is not None and e in probs else None,
                "requested_task": index.task[e],
            }
            for e in todo[:limit]
        ]
        return {
            "task": task,
            "remaining": remaining,
            "labeled": len(done),
            "items": items,
            "sd_version": index.sd.version if index.sd is not None else None,
            "held_elsewhere": held_elsewhere,
        }

    # the page names the episode in the query (?episode_id=), where any id a client
    # wrote ("/", "#", "%" and all) arrives as it was; the path forms are kept for
    # ids without those
    @app.get("/api/final.png")
    @app.get("/api/episodes/{episode_id:path}/final.png")
    def final_png(episode_id: str) -> Response:
        return Response(_png(episode(episode_id).final_image, 4), media_type="image/png")

    @app.get("/api/strip.png")
    @app.get("/api/episodes/{episode_id:path}/strip.png")
    def strip_png(episode_id: str) -> Response:
        ep = episode(episode_id)
        return Response(_png(np.concatenate(list(ep.images), axis=1), 2), media_type="image/png")

    @app.post("/api/labels")
    def add_label(body: LabelIn) -> dict[str, Any]:
        check_task(body.task)
        if body.episode_id not in current["index"]:
            raise HTTPException(404, f"no episode {body.episode_id!r} in the store")
        lab = labels.add(body.episode_id, body.task, body.success, "human")
        return {"ok": True, "label": lab.__dict__}

    @app.delete("/api/labels")
    def retract_label(episode_id: str, task: str, timestamp: float | None = None) -> dict[str, Any]:
        """Take back the label of (episode, task) (the page's undo): a retraction is
        appended, so the episode is unlabeled for the task until labeled again. With
        ``timestamp`` (the label's, as POST returned it), only while that label is the
        one in force: one given since (another page's) is not taken back (409)."""
        check_task(task)
        if episode_id not in current["index"]:
            raise HTTPException(404, f"no episode {episode_id!r} in the store")
        # the check and the retraction in one step: a label another page gives between
        # them is not taken back
        done = labels.retract_if_latest(episode_id, task, timestamp, "human")
        if done is None:
            return {"ok": True, "retracted": False}  # nothing in force to take back
        if isinstance(done, Label):
            raise HTTPException(409, "labeled again since (on another page?): not taken back")
        return {"ok": True, "retracted": True}

    @app.get("/api/labels")
    def all_labels() -> list[dict[str, Any]]:
        """Every label given, in file order (relabeled and retracted ones included)."""
        return [lab.__dict__ for lab in labels.all()]

    return app


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mtopt labeling</title>
<style>
body{font-family:sans-serif;margin:20px;background:#f4f4f4} #final{image-rendering:pixelated;border:2px solid #333}
#strip{image-rendering:pixelated;max-width:100%;display:block;margin-top:8px}
button{font-size:18px;padding:8px 18px;margin:6px} .ok{background:#3a3} .no{background:#c33;color:#fff}
#status{margin:8px 0;color:#333}
</style></head><body>
<h2>Success labeling</h2>
<label>Task: <select id="task"></select></label>
<div id="status">loading...</div>
<img id="final" width="256" height="256" alt="final image">
<div><button class="ok" id="yes">Success (y)</button><button class="no" id="no">Failure (n)</button>
<button id="skip">Skip (s)</button><button id="undo" disabled>Undo (u)</button></div>
<div id="meta"></div>
<img id="strip" alt="episode frames">
<script>
// queue: the next episodes for this task (most uncertain first); skipped: the ones this
// page was told to skip, kept out of later queues until the task changes or the page reloads
// done: the labels given on this page for this task ({item, task}), the latest last, for undo
// client: this page's name, so the server keeps the episodes it hands here out of other
// pages' queues for a while (several people labeling at once); sd: the detector version
// the queue is ordered by
let queue=[], cur=null, skipped=new Set(), done=[], labeled=0, remaining=0, busy=false, sd=null, held=0;
const client=Math.random().toString(36).slice(2)+Date.now().toString(36);
const $=id=>document.getElementById(id);
function status(){
  $('status').textContent=labeled+' labeled, '+remaining+' to go'+(skipped.size?', '+skipped.size+' skipped':'')+
    (sd===null?'':' (most uncertain first, success detector v'+sd+')');
}
// fetchQueue: the next episodes of this task from the server; false (and the error shown) on failure
async function fetchQueue(){
  const t=$('task').value, limit=Math.min(__QUEUE_LIMIT__, 10+skipped.size);
  const r=await fetch('/api/queue?task='+encodeURIComponent(t)+'&limit='+limit+'&client='+client);
  if(!r.ok){$('status').textContent='error: '+(await r.text()); return false;}
  const d=await r.json();
  queue=d.items.filter(i=>!skipped.has(i.episode_id)); labeled=d.labeled; remaining=d.remaining;
  sd=d.sd_version; held=d.held_elsewhere;
  return true;
}
// the task menu is held while a label, an undo or a refill is on its way: a switch then
// took the old task's answer for the new task's list (an episode skipped, undo aimed at it)
function setBusy(b){ busy=b; $('task').disabled=b; }
// (also while a switch loads its list: a key then labeled the old task's episode for it)
async function load(){
  setBusy(true); let ok=false;
  try{ ok=await fetchQueue(); } finally { setBusy(false); }
  if(ok){status(); next();}
}
function next(){ show(queue.shift()); }
function show(item){
  cur=item; $('undo').disabled=!done.length;
  if(!cur){
    $('meta').textContent='nothing left to label for this task'+(skipped.size?' ('+skipped.size+' skipped; reload the page to see them again)':'')+
      (held?'; '+held+' shown on other pages now (back here if not labeled there within __LEASE_S__ s: reload)':'');
    $('final').removeAttribute('src'); $('strip').removeAttribute('src'); return;
  }
  const id='?episode_id='+encodeURIComponent(cur.episode_id);
  $('final').src='/api/final.png'+id; $('strip').src='/api/strip.png'+id;
  $('meta').textContent='episode '+cur.episode_id+' (collected for '+cur.requested_task+')'+(cur.p_success===null?'':', SD p='+cur.p_success.toFixed(2));
}
// label: a key pressed while a label is being saved is ignored (it would label an episode
// not yet shown); the new count and the next episode appear together once the page is ready
async function label(success){
  if(!cur||busy) return;
  setBusy(true); let saved=false, ready=false; const item=cur, task=$('task').value;
  try{
    const r=await fetch('/api/labels',{method:'POST',headers:{'Content-Type':'application/json'},
      body:JSON.stringify({episode_id:item.episode_id,task:task,success:success})});
    if(!r.ok){$('status').textContent='error: '+(await r.text()); return;}
    const ts=(await r.json()).label.timestamp;
    saved=true; labeled++; remaining--; done.push({item:item,task:task,ts:ts});
    ready=queue.length>=5 || await fetchQueue();
  } finally { setBusy(false); }
  // a saved label always moves on (a failed refill leaves its error shown and the
  // episodes still queued), so the same episode is never labeled twice
  if(saved){ if(ready) status(); next(); }
}
async function skip(){
  if(!cur||busy) return;
  skipped.add(cur.episode_id);
  if(queue.length){status(); next(); return;}
  setBusy(true); let ready=false;
  try{ ready=await fetchQueue(); } finally { setBusy(false); }
  if(ready){status(); next();}
}
// undo: take back the last label given on this page (the server appends a retraction)
// and show its episode again, unlabeled: a new label or a skip leaves it so. A label given
// since on another page is not taken back (409): this page's undo of it is dropped
async function undo(){
  if(!done.length||busy) return;
  setBusy(true); let ok=false; const last=done[done.length-1];
  try{
    const r=await fetch('/api/labels?episode_id='+encodeURIComponent(last.item.episode_id)+
      '&task='+encodeURIComponent(last.task)+'&timestamp='+encodeURIComponent(String(last.ts)),{method:'DELETE'});
    if(r.status===409){done.pop(); $('undo').disabled=!done.length;
      $('status').textContent='not undone: '+(await r.text()); return;}
    if(!r.ok){$('status').textContent='error: '+(await r.text()); return;}
    ok=true;
  } finally { setBusy(false); }
  if(!ok) return;
  done.pop(); if(cur) queue.unshift(cur);
  labeled--; remaining++; status(); show(last.item);
}
$('yes').onclick=()=>label(true); $('no').onclick=()=>label(false); $('skip').onclick=()=>skip();
$('undo').onclick=()=>undo();
document.addEventListener('keydown',e=>{ if(e.repeat||e.ctrlKey||e.metaKey||e.altKey||e.target.tagName==='SELECT')return; if(e.key==='y'||e.key==='1')label(true); else if(e.key==='n'||e.key==='0')label(false); else if(e.key==='s')skip(); else if(e.key==='u')undo();});
// the select gives the focus back, so the keys work again at once
// (the old task's list and episode go at once: a failed load left them to be labeled
// for the new task)
$('task').onchange=()=>{$('task').blur(); skipped=new Set(); done=[]; queue=[]; show(null);
  $('meta').textContent='loading...'; load();};
(async()=>{const ts=await (await fetch('/api/tasks')).json();
  const want=new URLSearchParams(location.search).get('task');
  for(const t of ts){const o=document.createElement('option');o.value=o.textContent=t; if(t===want)o.selected=true; $('task').appendChild(o);}
  load();})();
</script></body></html>
"""
PAGE = PAGE.replace("__QUEUE_LIMIT__", str(QUEUE_LIMIT)).replace("__LEASE_S__", f"{LEASE_S:.0f}")
