from services.common.server import run_service
from services.inference.server import build
from services.inference.settings import InferenceSettings

if __name__ == "__main__":
    settings = InferenceSettings()
    run_service("inference", build, settings)
