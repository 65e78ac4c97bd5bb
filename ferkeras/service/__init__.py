"""The HTTP service and the in-browser page (`ferkeras serve`, serve.py).

- `cli`: the command line (`main(argv)`), uvicorn on a socket of its own.
- `app`: the FastAPI routes and the request pipeline (decode, detect, crop, score).
- `batching`: the micro-batcher that scores concurrent requests' faces in one onnxruntime call.
- `images`: upload checks (format and pixel count from the header) before decoding.
- `web`: the files of the page, which runs YuNet and the expression model with onnxruntime-web.

Like ferkeras.deploy.predict, nothing here imports TensorFlow or Keras.
"""


def main(argv=None):
    """`ferkeras serve ...`; raises ferkeras.errors.UserError for a wrong command line or model."""
    from ferkeras.service.cli import main as serve_main

    return serve_main(argv)
