"""The backend-neutral core: the model, feature extraction, training loops and inference maths.

Every module here imports only keras, numpy, pandas, the standard library and other core modules, never
Kedro, MLflow, scikit-learn or TensorFlow itself, so the core runs wherever Keras 3 runs: under
TensorFlow (the default) or JAX (`KERAS_BACKEND=jax`, the `jax` extra), on a GPU machine that has
nothing else of the project's stack (`benchmarks/gpu.py`). The Kedro nodes are thin wrappers over it.

- `model`: the network (VGG16 base, the paper's head, input scaling, dihedral views, TTA).
- `augmenter`: the paper's random transforms as Keras layers.
- `hardware`: device, precision, distribution and batch sizes (`auto`).
- `training`: the feature pass and the training loops (cached and online).
- `prediction`: class probabilities of image stacks, batch by batch.
- `arrays`, `progress`: scratch arrays larger than memory, progress lines in the log.
"""
