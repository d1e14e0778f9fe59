from services.common.server import run_service
from services.gateway.server import build
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    settings = GatewaySettings()
    run_service("gateway", build, settings)
