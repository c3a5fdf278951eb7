"""HTTP service for a recognizer: ``clip4str serve`` (needs the ``serve`` extra: FastAPI, uvicorn).

>>> from clip4str.serve import create_app, ServeSettings
>>> app = create_app(clip4str.load(path), name="my-model", settings=ServeSettings(max_batch=16))
"""

from clip4str.serve.app import ServeSettings, create_app, model_name
from clip4str.serve.batching import DynamicBatcher, QueueFull
from clip4str.serve.inputs import ApiError, Limits

__all__ = ["ApiError", "DynamicBatcher", "Limits", "QueueFull", "ServeSettings", "create_app", "model_name"]
