"""Load test of `ferkeras serve` on loopback: concurrent clients posting 640x480 pictures of real faces.

    python benchmarks/serve_load.py --model runs/<name>/model.onnx --data_dir PATH
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/ --clients 16 --requests 1000

Composes --pictures JPEGs as benchmarks/predict_speed.py does (640x480, 1 to 4 FER+ validation
faces upscaled to 100-160 px on a faint background), starts serve.py on a free port of 127.0.0.1
(or uses the server at --url, which must be on 127.0.0.1), warms it up, then runs --clients
threads, each on its own keep-alive connection, posting the pictures in turn to /v1/predict as
multipart forms until --requests are answered or --max_seconds have passed. Reports requests/s,
pictures/s, faces/s, p50 / p99 latency, errors (any answer but 200 with the expected image size),
the server's faces per onnxruntime call, its CPU seconds per picture when started here (beside the
CPU seconds per picture of the same steps run in this process without HTTP, measured just before:
both swell alike when other jobs share the cores, their ratio less so) and the load average.
Writes JSON (--out); exits 1 when any request failed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LoadWindow  # noqa: E402
from predict_speed import build_pictures  # noqa: E402

from ferkeras.errors import UserError, run_cli, write_text_atomic  # noqa: E402
from ferkeras.timing import Stopwatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BOUNDARY = "ferkeras-load-test"


def compose_pictures(data_dir, count, seed):
    """[(name, JPEG bytes, placed faces)] of `count` composed pictures."""
    from ferkeras.data.ferplus import load_labelled

    images, targets, _ = load_labelled(data_dir, "valid", "majority")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        truth = build_pictures(Path(folder), images, targets.argmax(axis=1), count, seed)
        return [(Path(path).name, Path(path).read_bytes(), len(placed)) for path, placed in truth.items()]


def form(name, data):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def check_loopback(url):
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise UserError(f"--url {url}: this load test only talks to a server on 127.0.0.1 (loopback)")
    return parts


class Server:
    """serve.py started on a free loopback port, or an existing one at `url`."""

    def __init__(self, url=None, model=None, extra=()):
        self.process = None
        if url is None:
            command = [sys.executable, str(REPO / "serve.py"), "--model", str(model), "--port", "0", *extra]
            self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
            match = re.search(r"http://127\.0\.0\.1:\d+/", self.process.stdout.readline())
            if not match:
                self.stop()
                raise UserError(f"serve.py --model {model} did not start; run it alone to see why")
            url = match.group(0)
        parts = check_loopback(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.health()

    def health(self, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                connection = HTTPConnection(self.host, self.port, timeout=10)
                connection.request("GET", "/health")
                return json.loads(connection.getresponse().read())
            except OSError:
                if time.monotonic() > deadline:
                    raise UserError(f"no answer from http://{self.host}:{self.port}/health") from None
                time.sleep(0.2)

    def cpu_seconds(self):
        """User + system CPU seconds of the server process so far (Linux), None when not ours."""
        if self.process is None:
            return None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def run_clients(server, pictures, clients, requests, max_seconds):
    """Latencies (s) of the answered requests, the errors as short strings, and the wall seconds."""
    lock = threading.Lock()
    state = {"next": 0}
    latencies, errors = [], []
    deadline = time.monotonic() + max_seconds

    def client():
        connection = HTTPConnection(server.host, server.port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                index = state["next"]
                if index >= requests:
                    break
                state["next"] += 1
            name, data, _ = pictures[index % len(pictures)]
            watch = Stopwatch()
            try:
                connection.request("POST", "/v1/predict", body=form(name, data),
                                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                response = connection.getresponse()
                body = json.loads(response.read())
                ok = response.status == 200 and (body["width"], body["height"]) == (640, 480)
                error = None if ok else f"HTTP {response.status}: {body.get('error', body)}"
            except (OSError, ValueError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = HTTPConnection(server.host, server.port, timeout=60)
            with lock:
                (errors.append(error) if error else latencies.append(watch.elapsed()))
        connection.close()

    with Stopwatch() as watch, ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return latencies, errors, watch.seconds


def pipeline_cpu_per_picture(model, pictures):
    """CPU seconds per picture of the service's steps run here in one thread, without HTTP: what
    the server's own CPU time per picture is compared with (both swell alike on a busy machine)."""
    import numpy as np

    from ferkeras.deploy.faces import to_gray
    from ferkeras.deploy.predict import EmotionPredictor, find_faces, make_detector
    from ferkeras.service.images import decode_upload

    detector, predictor = make_detector(48, 5, 1280, threads=1), EmotionPredictor(model, threads=1)
    with Stopwatch() as watch:
        for name, data, _ in pictures:
            crops = find_faces(to_gray(decode_upload(data, name, 40_000_000)), detector, 0.0)[1]
            if crops:
                predictor.probabilities(np.stack(crops))
    return watch.cpu_seconds / len(pictures)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] if ordered else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="contract ONNX model: start serve.py with it on 127.0.0.1")
    target.add_argument("--url", help="a running server on 127.0.0.1 instead")
    parser.add_argument("--server_args", default="", help="more serve.py options, e.g. '--workers 2 --threads 1'")
    parser.add_argument("--data_dir", default=os.environ.get("FERKERAS_DATA", "data"),
                        help="FER+ data (default: $FERKERAS_DATA, else data/)")
    parser.add_argument("--pictures", type=int, default=40, help="distinct pictures to compose (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the composition (default: 0)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--requests", type=int, default=600, help="requests in all (default: 600)")
    parser.add_argument("--max_seconds", type=float, default=120, help="stop sending after this (default: 120)")
    parser.add_argument("--out", default="benchmarks/results/serve_load.json", help="JSON report (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.model and not Path(args.model).is_file():
        raise UserError(f"{args.model}: no such ONNX file; give a contract model (export.py writes one)")
    if min(args.clients, args.requests, args.pictures) < 1:
        raise UserError("--clients, --requests and --pictures: expected positive numbers")
    if args.url:
        check_loopback(args.url)  # before the pictures are composed
    pictures = compose_pictures(args.data_dir, args.pictures, args.seed)
    pipeline_cpu = pipeline_cpu_per_picture(args.model, pictures) if args.model else None
    server = Server(args.url, args.model, args.server_args.split())
    try:
        run_clients(server, pictures, min(args.clients, 4), 2 * min(args.clients, 4), 30)  # warm-up
        before, cpu_before = server.health()["batching"], server.cpu_seconds()
        with LoadWindow() as load:
            latencies, errors, seconds = run_clients(server, pictures, args.clients, args.requests, args.max_seconds)
        after, cpu_after = server.health()["batching"], server.cpu_seconds()
    finally:
        server.stop()
    answered = len(latencies)
    faces = sum(pictures[i % len(pictures)][2] for i in range(answered + len(errors)))  # placed, of those sent
    calls = after["calls"] - before["calls"]
    report = {
        "clients": args.clients, "requests_sent": answered + len(errors), "answered": answered,
        "errors": len(errors), "error_examples": errors[:5], "seconds": round(seconds, 2),
        "requests_per_s": round(answered / seconds, 2), "pictures_per_s": round(answered / seconds, 2),
        "faces_found_per_s": round((after["faces"] - before["faces"]) / seconds, 2),
        "faces_placed": faces,
        "latency_ms": {"p50": round(1000 * percentile(latencies, 0.5), 1) if latencies else None,
                       "p99": round(1000 * percentile(latencies, 0.99), 1) if latencies else None},
        "faces_per_onnxruntime_call": round((after["faces"] - before["faces"]) / calls, 2) if calls else None,
        "server_cpu_s_per_picture": round((cpu_after - cpu_before) / answered, 4)
        if cpu_before is not None and answered else None,
        "pipeline_cpu_s_per_picture": round(pipeline_cpu, 4) if pipeline_cpu else None,
        "cpu_cores": os.cpu_count(), **load.as_dict(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"{answered} pictures answered, {len(errors)} errors, in {seconds:.1f} s by {args.clients} clients: "
          f"{report['requests_per_s']} requests/s = pictures/s, {report['faces_found_per_s']} faces/s; "
          f"latency p50 {report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms; "
          f"{report['faces_per_onnxruntime_call']} faces per onnxruntime call; server CPU "
          f"{report['server_cpu_s_per_picture']} s/picture (the bare pipeline in one thread: "
          f"{report['pipeline_cpu_s_per_picture']}); load {load.text()} on {os.cpu_count()} cores")
    for error in errors[:5]:
        print(f"  error: {error}")
    write_text_atomic(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
