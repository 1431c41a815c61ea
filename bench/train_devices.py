"""Data-parallel training speed: images/s of conv GANomaly training on 1 vs N devices (JAX).

Each device count trains in its own process, through the same code path as
``anomaly train --devices N`` (``detectors.training.data_parallel`` around the detector's own
network and ``fit``); images/s is the median over epochs 2..n (epoch 1 pays for compilation).
On a machine without accelerators, ``--virtual-cpu-devices K`` splits the host CPU into K
XLA devices, which only checks that the sharded path runs: the devices share the same cores,
so no speed-up can be expected there.

    # GPU machine (all GPUs visible):
    python bench/train_devices.py --devices 1 2 4 8 --side 64 --batch-size 256
    # smoke run on a CPU:
    python bench/train_devices.py --devices 1 2 --virtual-cpu-devices 2 --images 1024 \\
        --out bench/results/train_devices-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import keras, numpy as np
from detectors.ganomaly import GANomaly, GANomalyNet
from detectors.training import data_parallel, resolve_devices, shardable, weight_devices

n_devices, n_images, side, batch, epochs = (int(a) for a in sys.argv[1:6])
rng = np.random.default_rng(0)
images = rng.uniform(size=(n_images, side, side, 1)).astype("float32")
det = GANomaly(batch_size=batch, filters=32, latent_dim=100, devices=n_devices)
det.input_shape_ = images.shape[1:]
devices = resolve_devices(n_devices, batch)


class Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.t)


timer = Timer()
with data_parallel(devices):
    det.subnets_ = det._build_subnets()
    net = GANomalyNet(det.subnets_, det._build_discriminator, 1.0, 50.0, 1.0)
    net.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), jit_compile="auto")
    x = shardable(det._to_model(images), devices)
    net.fit(x, epochs=epochs, batch_size=batch, verbose=0, callbacks=[timer])
print(json.dumps({
    "devices": max(1, len(devices)),
    "device_kind": str(keras.distribution.list_devices()[0]),
    "weights_on": weight_devices(net),
    "images_per_s": len(x) / float(np.median(timer.seconds[1:])),
    "epoch_seconds": timer.seconds,
}))
"""


def measure(n_devices: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if args.virtual_cpu_devices:
        flag = f"--xla_force_host_platform_device_count={args.virtual_cpu_devices}"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    command = [sys.executable, "-c", WORKER, str(n_devices), str(args.images), str(args.side)]
    command += [str(args.batch_size), str(args.epochs)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{n_devices} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--virtual-cpu-devices", type=int, default=0)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "train_devices.json")
    args = parser.parse_args()
    results = []
    for n in args.devices:
        results.append(measure(n, args))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["images_per_s"]
    print(f"| devices | device | images/s | speed-up vs {results[0]['devices']} |")
    print("|---:|---|---:|---:|")
    for r in results:
        r["speedup"] = r["images_per_s"] / base
        print(
            f"| {r['devices']} | {r['device_kind']} | {r['images_per_s']:.0f} | "
            f"{r['speedup']:.2f} |"
        )
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "virtual_cpu_devices": args.virtual_cpu_devices,
        "images": args.images,
        "side": args.side,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
