"""The registered MLflow model, as a model from code: `registry.log_model` passes this file's path as
`python_model`, MLflow copies it into the model and runs it at load time, so a version loads by importing
`patchrec` (installed where the model is loaded, as for the pickled class before), never by unpickling an object.

Not imported by patchrec itself (running it declares the model to MLflow).
"""

from mlflow.models import set_model

from patchrec.registry import PatchRecModel

set_model(PatchRecModel())
