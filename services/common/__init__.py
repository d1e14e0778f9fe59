"""What every Cutout service shares: settings, the gRPC server runtime, channels, errors."""
