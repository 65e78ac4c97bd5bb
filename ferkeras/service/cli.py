"""`ferkeras serve`: the HTTP service and the in-browser page, on uvicorn.

    ferkeras serve --model models/ferplus-small.onnx                 # http://127.0.0.1:8000/
    ferkeras serve --model m.onnx --detector_model face_detection_yunet_2023mar.onnx --port 8080
    ferkeras serve --model m.onnx --detector_model yunet.onnx --write_site site/   # a static site

    curl -F file=@photo.jpg http://127.0.0.1:8000/v1/predict
    curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg http://127.0.0.1:8000/v1/predict
    curl -F files=@a.jpg -F files=@b.png http://127.0.0.1:8000/v1/predict/batch

The model is any ONNX file with the emotion-ferplus-8 contract; faces are found with OpenCV's
Haar cascade as in predict.py. The page at / runs the models in the browser with onnxruntime-web
(`npm ci` in the repository installs it): the expression model and the YuNet face detector given
with --detector_model (OpenCV Zoo, MIT licence; see docs/serve.md for where to fetch it).
The server listens on 127.0.0.1 unless --host says otherwise; it has no authentication.
"""
import argparse
import os
import socket
from pathlib import Path

from ferkeras.errors import UserError
from ferkeras.deploy.faces import FERPLUS_MARGIN, YUNET_MARGIN
from ferkeras.deploy.predict import (DEFAULT_DETECTOR, DEFAULT_NMS_THRESHOLD, DEFAULT_SCORE_THRESHOLD,
                       DETECTORS)

DEFAULT_MODEL = Path("models/ferplus-small.onnx")
DEFAULT_DETECTOR_MODEL = Path("models/face_detection_yunet_2023mar.onnx")
YUNET_OUTPUTS = {f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)}


def build_parser():
    parser = argparse.ArgumentParser(prog="ferkeras serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"ONNX model with the emotion-ferplus-8 contract (default: {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: 8000)")
    parser.add_argument("--detector_model", type=Path, default=None,
                        help=f"YuNet face detector ONNX for the page (default: {DEFAULT_DETECTOR_MODEL} "
                             "when it exists; without one the page says so, the API still works)")
    parser.add_argument("--write_site", metavar="DIR", type=Path,
                        help="write the page, onnxruntime-web and both models into DIR as a static site, then exit")
    group = parser.add_argument_group("faces (as in predict.py)")
    group.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS,
                       help=f"face detector of the API: yunet (OpenCV's YuNet, the --detector_model file, found in "
                            f"the weights cache or fetched once) or haar (OpenCV's cascade) (default: {DEFAULT_DETECTOR})")
    group.add_argument("--score_threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                       help=f"yunet: smallest face score kept (default: {DEFAULT_SCORE_THRESHOLD})")
    group.add_argument("--nms_threshold", type=float, default=DEFAULT_NMS_THRESHOLD,
                       help=f"yunet: box overlap above which the weaker face is dropped (default: {DEFAULT_NMS_THRESHOLD})")
    group.add_argument("--min_face", type=int, default=48, help="smallest face side looked for, px (default: 48)")
    group.add_argument("--min_neighbors", type=int, default=5, help="Haar cascade neighbours (default: 5)")
    group.add_argument("--detect_side", type=int, default=1280,
                       help="search larger images at this longer side; 0 = full size (default: 1280)")
    group.add_argument("--margin", type=float, default=None,
                       help=f"fraction of the face box added on each side of the crop (default: the detector's FER+ "
                            f"framing, {YUNET_MARGIN} for yunet, {FERPLUS_MARGIN} for haar)")
    group = parser.add_argument_group("limits and performance")
    group.add_argument("--max_bytes", type=int, default=10_000_000,
                       help="largest image file accepted, bytes (default: 10000000)")
    group.add_argument("--max_pixels", type=int, default=40_000_000,
                       help="largest image accepted, width x height (default: 40000000)")
    group.add_argument("--max_files", type=int, default=16, help="most images in one batch request (default: 16)")
    group.add_argument("--batch_faces", type=int, default=64,
                       help="most faces in one onnxruntime call across requests (default: 64)")
    group.add_argument("--batch_wait_ms", type=float, default=5.0,
                       help="how long an idle server waits for more requests' faces before scoring (default: 5)")
    group.add_argument("--workers", type=int, default=0,
                       help="threads decoding images and finding faces; 0 = one per core (default: 0)")
    group.add_argument("--threads", type=int, default=1,
                       help="onnxruntime threads; 0 = one per core, whose spinning between calls cost 25%% "
                            "more CPU per picture here than 1 (default: 1)")
    group.add_argument("--opencv_threads", type=int, default=1,
                       help="OpenCV threads per detection; 0 = one per core, which made detection cost 30%% "
                            "more CPU here, as concurrent requests already keep the workers busy (default: 1)")
    group.add_argument("--access_log", action="store_true", help="log every request (uvicorn's access log)")
    return parser


def settings_from(args):
    from ferkeras.service.app import Settings

    for name in ("max_bytes", "max_pixels", "max_files", "batch_faces"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name}: expected a positive number, got {getattr(args, name)}")
    if not 0 <= args.batch_wait_ms <= 10_000:
        raise UserError(f"--batch_wait_ms: expected 0 to 10000 milliseconds, got {args.batch_wait_ms}")
    if args.margin is None:
        args.margin = YUNET_MARGIN if args.detector == "yunet" else FERPLUS_MARGIN
    if not -0.5 < args.margin <= 2.0:
        raise UserError(f"--margin: expected a fraction of the face box between -0.5 and 2, got {args.margin}")
    if min(args.workers, args.threads, args.opencv_threads) < 0:
        raise UserError("--workers / --threads / --opencv_threads: expected 0 (one per core) or a positive number")
    if not args.model.is_file():
        default = " (the default --model)" if args.model == DEFAULT_MODEL else ""
        raise UserError(f"{args.model}: no such model file{default}; give --model PATH of an ONNX model with "
                        "the emotion-ferplus-8 contract (export.py writes one)")
    detector_model = args.detector_model
    if args.detector == "yunet":
        # The API's detector and the page's are the same file: given, cached, or fetched once.
        from ferkeras.deploy.downloads import YUNET, model_file_path

        detector_model = model_file_path(YUNET, detector_model)
    elif detector_model is None and DEFAULT_DETECTOR_MODEL.is_file():
        detector_model = DEFAULT_DETECTOR_MODEL
    if detector_model is not None:
        check_yunet(detector_model)
    return Settings(model=args.model, margin=args.margin,
                    detector_options=dict(min_face=args.min_face, min_neighbors=args.min_neighbors,
                                          detect_side=args.detect_side, threads=args.opencv_threads,
                                          detector=args.detector, score_threshold=args.score_threshold,
                                          nms_threshold=args.nms_threshold,
                                          detector_model=detector_model if args.detector == "yunet" else None),
                    max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_files=args.max_files,
                    batch_faces=args.batch_faces, batch_wait_ms=args.batch_wait_ms,
                    workers=args.workers or os.cpu_count() or 1, threads=args.threads,
                    detector_model=detector_model)


def check_yunet(path):
    """A one-line error unless `path` is a YuNet ONNX file: the page decodes its 12 outputs by name."""
    from ferkeras.deploy.contract import load_onnx

    outputs = {value.name for value in load_onnx(path).graph.output}
    if outputs != YUNET_OUTPUTS:
        raise UserError(f"{path}: not the YuNet face detector (outputs {', '.join(sorted(outputs))}, expected "
                        "cls/obj/bbox/kps_8/16/32); give face_detection_yunet_2023mar.onnx")


def listening_socket(host, port):
    """A bound, listening socket, so that a busy port is a one-line error and --port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                        "choose another --port, or stop what uses it") from None
    sock.listen(128)
    return sock


def main(argv=None):
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    from ferkeras.service import web

    if args.write_site:
        count = web.write_site(args.write_site, web.site_files(settings.model, settings.detector_model),
                               web.page_config(settings.margin))
        print(f"wrote {count} files into {args.write_site}; serve that folder with any static web server")
        return 0
    import uvicorn

    from ferkeras.service.app import create_app

    app = create_app(settings)
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {settings.model} on http://{shown}:{port}/ (page detector: "
          f"{settings.detector_model or 'none, see --detector_model'}); Ctrl-C stops", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
