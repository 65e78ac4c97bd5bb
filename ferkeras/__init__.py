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
