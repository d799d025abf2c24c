"""The pyfunc model's code as MLflow loads it ("models from code": no pickled Python object)."""
import mlflow

from pipeline.serve.serving import EpisodeModel

mlflow.models.set_model(EpisodeModel())
