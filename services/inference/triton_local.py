"""The embedded Triton: the `tritonserver` binary shipped in the nvidia-pytriton wheel,
run on loopback with the model repository of this folder.

The inference service never depends on this module: it only knows Triton's address,
so a remote GPU Triton is a settings change. The mesh launcher and tests use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytriton
import tritonclient.grpc as triton_grpc

from services.common.orphans import guarded
from services.common.processes import owner_only_log, terminate
from services.common.tls import CellPki
from services.inference.model import MODEL_REPOSITORY, REQUIRED_MODELS, TRITON_BACKENDS

_PYTRITON = Path(pytriton.__file__).resolve().parent
_TRITON_HOME = _PYTRITON / "tritonserver"
_TRITON_LIBS = _PYTRITON.parent / "nvidia_pytriton.libs"


def _backend_dir(work_dir: Path) -> Path:
    """A backend folder: the Python backend with the stub for this Python, and beside it
    Cutout's Python-based backends (one model.py each), which use that Python backend."""
    backends = work_dir / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    stub = _TRITON_HOME / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    copies = [(source, python_backend) for source in (_TRITON_HOME / "backends" / "python").glob("*.*")]
    copies.append((stub / "triton_python_backend_stub", python_backend))
    copies += [(model_py, backends / model_py.parent.name) for model_py in TRITON_BACKENDS.glob("*/model.py")]
    for source, folder in copies:
        folder.mkdir(exist_ok=True)
        target = folder / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)
    return backends


def model_counts(triton: LocalTriton, model_name: str) -> tuple[int, int]:
    """(inferences, executions) of a model from Triton's own statistics: their ratio is the mean batch."""
    client = triton.client()
    try:
        stats = client.get_inference_statistics(model_name, as_json=True)["model_stats"][0]
    finally:
        client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@dataclass
class LocalTriton:
    grpc_port: int
    work_dir: Path
    model_repository: Path = MODEL_REPOSITORY
    host: str = "127.0.0.1"
    # The cell's CA: Triton's gRPC port then demands a certificate from it (mutual TLS,
    # TLS 1.3 only through the GRPC_SSL_CIPHER_SUITES it inherits; services/__init__.py).
    pki: CellPki | None = None
    process: subprocess.Popen[bytes] | None = None

    def client(self, as_name: str = "mesh") -> triton_grpc.InferenceServerClient:
        """A client of this server, with the cell certificate `as_name` when it has TLS."""
        if self.pki is None:
            return triton_grpc.InferenceServerClient(self.url)
        own = self.pki.ensure(as_name)
        return triton_grpc.InferenceServerClient(
            self.url,
            ssl=True,
            root_certificates=str(own.ca_file),
            private_key=str(own.key_file),
            certificate_chain=str(own.cert_file),
        )

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "tritonserver.log"

    def start(self) -> None:
        backends = _backend_dir(self.work_dir)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(_TRITON_LIBS), env.get("LD_LIBRARY_PATH")]))
        # The Python backend's stub imports the models' packages (numpy, ai-edge-litert, onnxruntime)
        # from the first python on PATH: make that this virtualenv's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        command = [
            str(_TRITON_HOME / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]
        if self.pki is not None:
            served = self.pki.ensure("triton")
            command += [
                "--grpc-use-ssl-mutual=true",
                f"--grpc-server-cert={served.cert_file}",
                f"--grpc-server-key={served.key_file}",
                f"--grpc-root-cert={served.ca_file}",
            ]
        with owner_only_log(self.log_path) as log:
            self.process = subprocess.Popen(
                guarded(command),  # dies with whoever started it
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=0o077,
                start_new_session=True,  # stopped by whoever started it, not by a terminal's Ctrl-C
            )

    def wait_ready(self, model_names: tuple[str, ...] = REQUIRED_MODELS, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.process and self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.process.returncode}; see {self.log_path}")
                try:
                    if all(client.is_model_ready(name) for name in model_names):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise TimeoutError(f"models {', '.join(model_names)} not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (Triton unloads its models and exits), then waits; returns the exit status."""
        return terminate(self.process, timeout_s)
