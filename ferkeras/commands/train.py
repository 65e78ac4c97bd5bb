"""Fine-tune a CNN for FER+ facial-expression recognition.

    python train.py --model_name ResNet50 --freeze_before -51
    python train.py --config configs/cpu_quick.yaml --name quick
    python train.py --name quick --resume

Every flag is listed by --help; the run folder (runs/<name>/) gets the resolved config, checkpoints,
training.csv, TensorBoard logs and curves.png.
"""
import ferkeras  # sets TensorFlow's environment before it is imported
from ferkeras.train.config import resolve


def main(argv=None):
    config, explicit = resolve(argv, description=__doc__.split("\n\n")[0])
    ferkeras.import_keras_quietly()
    from ferkeras.train.run import train  # TensorFlow loads here, after --help and flag errors
    result = train(config, explicit)
    print(f"done: {result['epochs']} epochs, best val_accuracy {result['best_val_accuracy']:.4f} "
          f"(epoch {result['best_epoch']}); run folder {result['run_dir']}")
