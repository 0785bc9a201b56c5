"""Labeling page: a small FastAPI app bound to 127.0.0.1.

Shows an episode's final image (and its frames as a strip), the task, and lets a person
label success/failure with the mouse or keys (y / 1 = success, n / 0 = failure, s = skip).
The queue puts first the episodes the current success detector is least sure about.
Only images of episodes in the store are served (looked up by id, never by path).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from mtopt.store.reader import EpisodeReader
from mtopt.success.labels import LabelStore
from mtopt.tasks.registry import DEFAULT_REGISTRY, TaskRegistry


class LabelIn(BaseModel):
    episode_id: str = Field(min_length=1, max_length=64)
    task: str = Field(min_length=1, max_length=64)
    success: bool


def _png(arr: np.ndarray, scale: int) -> bytes:
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def create_app(
    store_dir: str | Path,
    labels_path: str | Path,
    sd_dir: str | Path | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
) -> FastAPI:
    episodes = {e.episode_id: e for e in EpisodeReader(store_dir).episodes()}
    labels = LabelStore(labels_path)
    probs: dict[str, np.ndarray] = {}
    sd_tasks: list[str] = []
    if sd_dir is not None and episodes:
        from mtopt.success.network import SuccessDetector

        sd = SuccessDetector.load(sd_dir)
        ids = list(episodes)
        scores = sd.score(np.stack([episodes[i].final_image for i in ids]))
        probs = {i: scores[k] for k, i in enumerate(ids)}
        sd_tasks = list(sd.tasks)
    app = FastAPI(title="mtopt labeling")

    def check_task(task: str) -> None:
        if task not in registry.names:
            raise HTTPException(400, f"unknown task {task!r}; valid: {', '.join(registry.names)}")

    def episode(eid: str) -> Any:
        if eid not in episodes:
            raise HTTPException(404, f"no episode {eid!r} in the store")
        return episodes[eid]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/tasks")
    def tasks() -> list[str]:
        return list(registry.names)

    @app.get("/api/queue")
    def queue(task: str, limit: int = 20) -> dict[str, Any]:
        check_task(task)
        if not 1 <= limit <= 500:
            raise HTTPException(400, "limit must be in [1, 500]")
        done = {eid for (eid, t) in labels.latest() if t == task}
        todo = [eid for eid in episodes if eid not in done]
        # a task the detector was not trained on (added since): store order, no score
        k = sd_tasks.index(task) if probs and task in sd_tasks else None
        if k is not None:
            todo.sort(key=lambda e: abs(float(probs[e][k]) - 0.5))
        items = [
            {
                "episode_id": e,
                "p_success": None if k is None else float(probs[e][k]),
                "requested_task": episodes[e].task,
            }
            for e in todo[:limit]
        ]
        return {"task": task, "remaining": len(todo), "labeled": len(done), "items": items}

    @app.get("/api/episodes/{eid}/final.png")
    def final_png(eid: str) -> Response:
        return Response(_png(episode(eid).final_image, 4), media_type="image/png")

    @app.get("/api/episodes/{eid}/strip.png")
    def strip_png(eid: str) -> Response:
        ep = episode(eid)
        return Response(_png(np.concatenate(list(ep.images), axis=1), 2), media_type="image/png")

    @app.post("/api/labels")
    def add_label(body: LabelIn) -> dict[str, Any]:
        check_task(body.task)
        episode(body.episode_id)
        lab = labels.add(body.episode_id, body.task, body.success, "human")
        return {"ok": True, "label": lab.__dict__}

    @app.get("/api/labels")
    def all_labels() -> list[dict[str, Any]]:
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
<button id="skip">Skip (s)</button></div>
<div id="meta"></div>
<img id="strip" alt="episode frames">
<script>
let queue=[], cur=null;
const $=id=>document.getElementById(id);
async function load(){
  const t=$('task').value;
  const r=await fetch('/api/queue?task='+encodeURIComponent(t)+'&limit=50'); const d=await r.json();
  queue=d.items; $('status').textContent=d.labeled+' labeled, '+d.remaining+' to go'; next();
}
function next(){
  cur=queue.shift();
  if(!cur){$('meta').textContent='nothing left to label for this task'; $('final').removeAttribute('src'); $('strip').removeAttribute('src'); return;}
  $('final').src='/api/episodes/'+cur.episode_id+'/final.png';
  $('strip').src='/api/episodes/'+cur.episode_id+'/strip.png';
  $('meta').textContent='episode '+cur.episode_id+' (collected for '+cur.requested_task+')'+(cur.p_success===null?'':', SD p='+cur.p_success.toFixed(2));
}
async function label(success){
  if(!cur) return;
  const r=await fetch('/api/labels',{method:'POST',headers:{'Content-Type':'application/json'},
    body:JSON.stringify({episode_id:cur.episode_id,task:$('task').value,success:success})});
  if(!r.ok){$('status').textContent='error: '+(await r.text()); return;}
  await load();
}
$('yes').onclick=()=>label(true); $('no').onclick=()=>label(false); $('skip').onclick=()=>next();
document.addEventListener('keydown',e=>{ if(e.key==='y'||e.key==='1')label(true); else if(e.key==='n'||e.key==='0')label(false); else if(e.key==='s')next();});
$('task').onchange=load;
(async()=>{const ts=await (await fetch('/api/tasks')).json();
  const want=new URLSearchParams(location.search).get('task');
  for(const t of ts){const o=document.createElement('option');o.value=o.textContent=t; if(t===want)o.selected=true; $('task').appendChild(o);}
  load();})();
</script></body></html>
"""
