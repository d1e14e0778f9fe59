from services.common.server import run_service
from services.retention.server import build
from services.retention.settings import RetentionSettings

if __name__ == "__main__":
    settings = RetentionSettings()
    run_service("retention", build, settings)
