"""A small client for a live AUTOMATIC1111 WebUI: JSON over HTTP (standard library only), and readers for what a
job returns (AnimateDiff's GIF, I4VGen's candidate PNGs, the infotext and its ``I4VGen`` record)."""
from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image, ImageSequence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A1111 1.10.1 modules/infotext_utils.py: one "key: value" pair of the parameters line; quoted values are JSON.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


class WebUI:
    """``post``/``get`` return (HTTP status, parsed JSON body); an error status is returned, not raised."""

    def __init__(self, url: str, timeout: float = 1200.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.last_seconds = 0.0  # wall time of the last request

    def _request(self, method: str, path: str, payload: Optional[dict] = None) -> Tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        finally:
            self.last_seconds = time.perf_counter() - started
        try:
            return status, json.loads(raw.decode() or "null")
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def post(self, path: str, payload: dict) -> Tuple[int, Any]:
        return self._request("POST", path, payload)

    def get(self, path: str) -> Tuple[int, Any]:
        return self._request("GET", path)

    def job(self, path: str, payload: dict) -> "Job":
        status, body = self.post(path, payload)
        return Job(status, body, self.last_seconds)


class Job:
    """One /sdapi/v1/txt2img or img2img answer."""

    def __init__(self, status: int, body: Any, seconds: float):
        self.status, self.body, self.seconds = status, body, seconds

    def __repr__(self) -> str:
        return f"Job(HTTP {self.status}, {self.seconds:.1f} s, {self.text()[:600]})"

    def text(self) -> str:
        """The body as text, without the images (for error messages and assertions on error bodies)."""
        if not isinstance(self.body, dict):
            return str(self.body)
        return json.dumps({k: v for k, v in self.body.items() if k != "images"})

    @property
    def images(self) -> List[bytes]:
        return [base64.b64decode(item) for item in self.body["images"]]

    @property
    def gifs(self) -> List[bytes]:
        return [item for item in self.images if item[:4] == b"GIF8"]

    @property
    def pngs(self) -> List[bytes]:
        return [item for item in self.images if item[:8] == PNG_MAGIC]

    @property
    def info(self) -> Dict[str, Any]:
        return json.loads(self.body["info"])

    @property
    def record(self) -> Optional[Dict[str, Any]]:
        """The job's ``I4VGen`` record from ``info.extra_generation_params`` (None when there is none)."""
        value = self.info["extra_generation_params"].get("I4VGen")
        return None if value is None else parse_record(value)


# Images -----------------------------------------------------------------------------------------------------------
def gif_frames(data: bytes) -> List[Image.Image]:
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.format == "GIF", gif.format
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]


def gif_sizes(data: bytes) -> Tuple[int, set]:
    """(number of frames, the set of frame sizes)."""
    frames = gif_frames(data)
    return len(frames), {frame.size for frame in frames}


def png_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


# Infotext ---------------------------------------------------------------------------------------------------------
def infotext_params(text: str) -> Dict[str, str]:
    """The "key: value" pairs of an infotext's parameters line (its last line), unquoted as A1111 does."""
    params: Dict[str, str] = {}
    for key, value in _PARAM.findall(text.strip().split("\n")[-1]):
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        params[key.strip()] = value
    return params


def parse_record(value: Any) -> Dict[str, Any]:
    record = json.loads(value) if isinstance(value, str) else value
    assert isinstance(record, dict), f"the I4VGen value is not a JSON object: {value!r}"
    return record


def i4vgen_record(infotext: str) -> Optional[Dict[str, Any]]:
    value = infotext_params(infotext).get("I4VGen")
    return None if value is None else parse_record(value)


class StepClock:
    """Times the host's sampling steps while a job runs: a thread polls ``/sdapi/v1/progress`` (A1111's
    ``state.sampling_step``) and notes when the step counter moves. ``seconds_per_step`` is the median time between
    two moves, so fixed costs (text encoding, VAE decode, saving) stay out of it."""

    def __init__(self, url: str, interval: float = 0.1):
        import threading

        self._client, self._interval = WebUI(url, timeout=30), interval
        self._stop, self.moves = threading.Event(), []  # (time, job number, step)
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        last = None
        while not self._stop.is_set():
            status, progress = self._client.get("/sdapi/v1/progress?skip_current_image=true")
            state = (progress or {}).get("state") or {} if status == 200 else {}
            key = (state.get("job_no"), state.get("sampling_step"))
            if None not in key and key != last:
                self.moves.append((time.perf_counter(), *key))
                last = key
            self._stop.wait(self._interval)

    def __enter__(self) -> "StepClock":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def gaps(self) -> list:
        """Seconds between each two consecutive sampling steps of one job."""
        return [b[0] - a[0] for a, b in zip(self.moves, self.moves[1:]) if b[1] == a[1] and b[2] == a[2] + 1]

    @staticmethod
    def median(gaps: list) -> float:
        assert gaps, "no two consecutive sampling steps were seen"
        ordered = sorted(gaps)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def seconds_per_step(self) -> float:
        return self.median(self.gaps())
