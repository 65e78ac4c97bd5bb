"""ferkeras: fine-tune pretrained CNNs for FER+ facial-expression recognition and export them to ONNX."""
import os

# oneDNN is off by default on CPUs without AVX-512; turning it on made ResNet50 training ~3x faster here.
# It must be set before TensorFlow is first imported, which is why it lives at package import.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# albumentations asks the network for a newer version on import; these machines have no network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# FER+ class order, shared with the ONNX Model Zoo emotion-ferplus-8 model.
CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
NUM_CLASSES = len(CLASSES)
# The 10 vote columns of FER+ label files: the 8 classes, then "unknown" and "not a face".
VOTE_COLUMNS = CLASSES + ("unknown", "NF")
FACE_SIZE = 48  # FER2013 faces are 48x48 grayscale

__version__ = "0.1.0"


def import_keras_quietly():
    """Import Keras (and so TensorFlow) without TensorFlow's C++ start-up lines on stderr.

    TensorFlow writes its absl/oneDNN notices to file descriptor 2 before any log level applies, which
    would bury the one-line errors of our scripts. The notices are captured while importing and shown
    only if the import itself fails.
    """
    import sys
    import tempfile

    if "keras" in sys.modules:
        return sys.modules["keras"]
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
        except BaseException:
            os.dup2(saved_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
    return keras


def _register_layers_when_keras_loads():
    """Make `keras.saving.load_model` find every layer ferkeras saves once `ferkeras` is imported.

    Keras resolves custom layers from its registry, filled when the module defining a layer is
    imported; it never imports a third-party module by name. Importing ferkeras.models.registry here would load
    Keras and TensorFlow into every deployment that only runs onnxruntime, so the layers are registered
    when Keras itself is imported: now if it already is, else right after its import completes.
    """
    import importlib
    import importlib.abc
    import importlib.util
    import sys

    def register():
        try:
            importlib.import_module("ferkeras.models.registry")
        except ImportError:  # a deployment-only install: Keras without our training dependencies
            pass

    if "keras" in sys.modules:
        register()
        return

    class AfterKerasImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "keras":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec("keras")
            if spec is None or spec.loader is None:
                return spec
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                register()

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, AfterKerasImport())


_register_layers_when_keras_loads()
