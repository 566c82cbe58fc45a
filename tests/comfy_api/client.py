"""A small client for ComfyUI's HTTP API (``server.py``): ``POST /prompt`` with an API-format workflow, poll
``/history/{prompt_id}``, ``POST /interrupt``, ``GET /view`` for saved files, ``GET /object_info``. Standard library
only."""
from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image


@dataclass
class Job:
    prompt_id: str
    status: str  # "success", "error" (execution error or interrupt) or "refused" (validation)
    outputs: Dict[str, Any] = field(default_factory=dict)
    messages: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0  # execution_start -> end, by the server's own timestamps
    refusal: Optional[Dict[str, Any]] = None  # the 400 body of a refused workflow

    def message(self, kind: str) -> Optional[Dict[str, Any]]:
        return next((data for name, data in self.messages if name == kind), None)

    @property
    def error(self) -> Optional[Dict[str, Any]]:
        return self.message("execution_error")

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    def report(self, node: str) -> Dict[str, Any]:
        return json.loads(self.outputs[node]["i4vgen_report"][0])


class Comfy:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def request(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def get(self, path: str) -> Tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Tuple[int, Any]:
        return self.request("POST", path, body if body is not None else {})

    def submit(self, workflow: Dict[str, Any]) -> Tuple[int, Any]:
        return self.post("/prompt", {"prompt": workflow, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float = 900.0, poll: float = 0.5) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, history = self.get(f"/history/{prompt_id}")
            if status == 200 and prompt_id in (history or {}):
                entry = history[prompt_id]
                if entry.get("status", {}).get("completed") is not None or entry.get("status", {}).get("status_str"):
                    return entry
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def run(self, workflow: Dict[str, Any], timeout: float = 900.0) -> Job:
        status, body = self.submit(workflow)
        if status != 200:
            return Job("", "refused", refusal=body)
        return self.job(body["prompt_id"], timeout)

    def job(self, prompt_id: str, timeout: float = 900.0) -> Job:
        entry = self.wait(prompt_id, timeout)
        messages = [(name, data) for name, data in entry.get("status", {}).get("messages", [])]
        stamps = [data.get("timestamp") for _, data in messages if isinstance(data, dict) and data.get("timestamp")]
        seconds = (max(stamps) - min(stamps)) / 1000.0 if len(stamps) >= 2 else 0.0
        return Job(prompt_id, entry.get("status", {}).get("status_str", ""), entry.get("outputs", {}), messages,
                   seconds)

    def running(self) -> List[str]:
        _, queue = self.get("/queue")
        return [item[1] for item in (queue or {}).get("queue_running", [])]

    def interrupt(self) -> None:
        self.post("/interrupt")

    def view(self, image: Dict[str, str]) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=self.timeout) as response:
            return response.read()

    def frames(self, job: Job, node: str) -> np.ndarray:
        """The pixels of the images a SaveImage node wrote, (n, H, W, 3) uint8 (PNG metadata differs per job)."""
        images = job.outputs.get(node, {}).get("images", [])
        return np.stack([np.asarray(Image.open(io.BytesIO(self.view(image))).convert("RGB")) for image in images]) \
            if images else np.zeros((0, 0, 0, 3), dtype=np.uint8)
