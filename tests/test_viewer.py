"""ns-viewer opens a trained nifr model with our controls; the outputs it renders include a stable
PCA colouring of the features."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import websockets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def gui_messages(port: int, seconds: float) -> bytes:
    """What the viewer's server sends a new client in its first seconds (the GUI, as msgpack)."""
    received = b""
    async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            received += message if isinstance(message, bytes) else message.encode()
    return received


def test_viewer_loads_the_model_and_serves_its_controls(trained_tiny: Path) -> None:
    port = free_port()
    viewer = subprocess.Popen(
        [sys.executable, "-m", "nerfstudio.scripts.viewer.run_viewer", "--load-config", str(trained_tiny),
         "--viewer.websocket-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert viewer.poll() is None, "ns-viewer exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        messages = asyncio.run(gui_messages(port, seconds=15))
        assert b"Refresh feature PCA colours" in messages
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)


def test_the_rendered_outputs_include_a_stable_feature_colouring(trained_tiny: Path) -> None:
    """What the viewer renders per frame: feature_pca keeps its colours across frames until refreshed."""
    import torch

    from nifr_ns.pipeline import load_pipeline

    _, pipeline = load_pipeline(trained_tiny, test_mode="val")
    cameras = pipeline.datamanager.eval_dataset.cameras
    model = pipeline.model
    with torch.no_grad():
        first = model.get_outputs_for_camera(cameras[0:1])
        basis = model.feature_pca.basis.clone()
        model.get_outputs_for_camera(cameras[1:2])
        again = model.get_outputs_for_camera(cameras[0:1])
    assert first["feature_pca"].shape[-1] == 3
    assert torch.equal(model.feature_pca.basis, basis)
    assert torch.allclose(first["feature_pca"], again["feature_pca"])
    model.refresh_pca_button.cb_hook(model.refresh_pca_button)
    with torch.no_grad():
        model.get_outputs_for_camera(cameras[1:2])
    assert not torch.equal(model.feature_pca.basis, basis)
