"""The model code MLflow logs beside the weights (models-from-code): serving loads this file, not a pickle.

MLflow copies this file into the logged model and runs it when the model is loaded; `set_model` names
the class that answers requests. The project's package travels with the model (`code_paths`), so the
import below resolves wherever MLflow loads it.
"""

import mlflow

from all_detection.serving import StageClassifier

mlflow.models.set_model(StageClassifier())
