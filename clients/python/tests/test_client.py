"""The Python client against a real three-node Kiln cluster and a real worker (jobs and
catalog batches).

Run from the repository root after `cargo build -p kiln` and `python3 clients/python/generate.py`:

    python3 -m unittest discover -s clients/python/tests -v

`KILN_BIN` names the kiln binary (default: $CARGO_TARGET_DIR/debug/kiln, else target/debug/kiln).
"""

import json
import math
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
import wave

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path.insert(0, str(HERE.parent))

from kiln_client import Client, EncodeJob, KilnError, TaskState  # noqa: E402
import grpc  # noqa: E402


def kiln_binary() -> pathlib.Path:
    if os.environ.get("KILN_BIN"):
        return pathlib.Path(os.environ["KILN_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "kiln"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tone(path: pathlib.Path, seconds: float = 2.0, rate: int = 22_050) -> None:
    frames = b"".join(
        struct.pack("<h", int(12_000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def fresh_dir(cls) -> "tuple[pathlib.Path, pathlib.Path]":
    """The kiln binary and a new temporary directory for a test class (skipped without a binary)."""
    binary = kiln_binary()
    if not binary.is_file():
        raise unittest.SkipTest(f"no kiln binary at {binary}: run `cargo build -p kiln` first")
    cls.dir = tempfile.TemporaryDirectory()
    return binary, pathlib.Path(cls.dir.name)


class ClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        binary, root = fresh_dir(cls)
        ports = [(free_port(), free_port()) for _ in range(3)]
        cls.addresses = [f"http://127.0.0.1:{g}" for g, _ in ports]
        cls.processes = []
        cls.logs = []
        for node_id, (grpc_port, http_port) in enumerate(ports, start=1):
            config = root / f"node-{node_id}.toml"
            lines = [
                "[scheduler]",
                f"node_id = {node_id}",
                f'data_dir = "{root / f"node-{node_id}"}"',
                f'listen = "127.0.0.1:{grpc_port}"',
                f'http_listen = "127.0.0.1:{http_port}"',
                'raft_tick = "50ms"',
            ]
            for peer_id, address in enumerate(cls.addresses, start=1):
                lines += ["[[scheduler.peers]]", f"id = {peer_id}", f'address = "{address}"']
            config.write_text("\n".join(lines) + "\n")
            cls._start(binary, ["scheduler", "--config", str(config)], root / f"node-{node_id}.log")
        cls.masters, derivatives = root / "masters", root / "derivatives"
        cls.masters.mkdir()
        for i in range(3):
            write_tone(cls.masters / f"tone-{i}.wav")
        worker = [
            "--scheduler", ",".join(cls.addresses), "worker", "--id", "py-worker", "--slots", "2", "--no-pin",
            "--masters", str(cls.masters), "--derivatives", str(derivatives),
        ]
        cls._start(binary, worker, root / "worker.log")

    @classmethod
    def _start(cls, binary, args, log_path):
        log = open(log_path, "wb")
        cls.logs.append((log_path, log))
        cls.processes.append(subprocess.Popen([str(binary), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL))

    @classmethod
    def tearDownClass(cls):
        for p in cls.processes:
            p.kill()
            p.wait()
        for _, log in cls.logs:
            log.close()
        cls.dir.cleanup()

    def logs_text(self) -> str:
        return "\n".join(f"---- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path, _ in self.logs)

    def leader_and_followers(self, client: Client):
        cluster = client.status().cluster
        leader = cluster.leader_address
        return leader, [a for a in self.addresses if a != leader]

    def wait_for_workers(self, client: Client):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if any(w.id == "py-worker" and w.connected for w in client.workers()):
                    return
            except KilnError:
                pass
            time.sleep(0.2)
        self.fail("the worker never connected\n" + self.logs_text())

    def test_jobs_submitted_from_python_render_and_can_be_followed(self):
        with Client(self.addresses) as client:
            self.wait_for_workers(client)
            _, followers = self.leader_and_followers(client)
        # Start at a follower: the client must follow the leader to submit.
        with Client(followers) as client:
            jobs = [
                EncodeJob(
                    request_id=str(uuid.uuid4()),
                    release_id=42,
                    asset_id=i,
                    asset_guid=f"tone-{i}.wav",
                    derivative_assets=["loudness", "bpm"],
                )
                for i in range(3)
            ]
            results = client.submit(jobs)
            self.assertEqual(len(results), 3)
            self.assertTrue(all(r.created for r in results))
            again = client.submit(jobs[:1])
            self.assertEqual((again[0].task_id, again[0].created), (results[0].task_id, False), "idempotent")

            done = client.wait([j.request_id for j in jobs], timeout=120)
            states = [t.state for t in done]
            self.assertEqual(states, [TaskState.TASK_STATE_SUCCEEDED] * 3, self.logs_text())
            self.assertIn("loudness", done[0].result.metadata_json)

            listed = list(client.tasks(release_id=42, page_size=2))
            self.assertEqual(sorted(t.id for t in listed), sorted(r.task_id for r in results), "all pages")
            status = client.status()
            self.assertGreaterEqual(status.total.succeeded, 3)
            one = client.task(task_id=results[1].task_id)
            self.assertEqual(one.job.asset_guid, "tone-1.wav")

    def write_manifest(self, name: str, lines) -> pathlib.Path:
        """A JSONL manifest in the cluster's directory (the schedulers run on this machine)."""
        path = pathlib.Path(self.dir.name) / name
        path.write_text("".join(line + "\n" for line in lines))
        return path

    @staticmethod
    def manifest_line(release_id: int, asset_id: int, asset_guid: str) -> str:
        return json.dumps({
            "request_id": str(uuid.uuid4()),
            "release_id": release_id,
            "asset_id": asset_id,
            "asset_guid": asset_guid,
            "derivative_assets": ["loudness", "bpm"],
        })

    def test_a_manifest_submitted_as_a_batch_runs_to_done_skipping_its_bad_line(self):
        # One master per line, so no two tasks write the same derivatives.
        (self.masters / "batch").mkdir(exist_ok=True)
        for i in range(30):
            write_tone(self.masters / "batch" / f"tone-{i}.wav")
        lines = [self.manifest_line(43, i, f"batch/tone-{i}.wav") for i in range(30)]
        bad_at = 12  # 0-based index in the file: line 13
        lines.insert(bad_at, "not json")
        manifest = self.write_manifest("catalog.jsonl", lines)
        with Client(self.addresses) as client:
            self.wait_for_workers(client)
            options = dict(name="py-catalog", on_bad_line="skip", window=10)
            submitted = client.submit_batch(str(manifest), **options)
            self.assertEqual(submitted.spec.name, "py-catalog")
            self.assertEqual(submitted.spec.window, 10)
            self.assertTrue(submitted.spec.request_id, "the client sends a request id")
            again = client.submit_batch(str(manifest), **options, request_id=submitted.spec.request_id)
            self.assertEqual(again.id, submitted.id, "idempotent by request_id")

            done = client.wait_batch(submitted.id, timeout=300)
            self.assertEqual(done.state, "done", f"{done}\n{self.logs_text()}")
            self.assertEqual(done.admitted, 30)
            self.assertEqual(done.bad_lines, 1)
            self.assertEqual(done.succeeded, 30)
            self.assertEqual((done.live, done.dead_lettered, done.duplicates), (0, 0, 0))
            self.assertEqual(done.first_bad_lines[0].line, bad_at + 1)
            self.assertTrue(done.source_done)
            self.assertEqual(done.line, 31)
            self.assertIn(submitted.id, [b.id for b in client.batches()])
            self.assertEqual(client.batch(submitted.id).state, "done")

    def test_a_batch_can_be_paused_resumed_and_cancelled(self):
        # A queue no worker serves: the batch's tasks stay queued until it is cancelled.
        lines = [self.manifest_line(44, i, f"tone-{i % 3}.wav") for i in range(20)]
        manifest = self.write_manifest("held.jsonl", lines)
        with Client(self.addresses) as client:
            b = client.submit_batch(str(manifest), queue="py-held", window=5)
            deadline = time.monotonic() + 30
            while b.admitted < 5:
                self.assertLess(time.monotonic(), deadline, f"the batch never filled its window\n{b}")
                time.sleep(0.1)
                b = client.batch(b.id)
            self.assertEqual(client.pause_batch(b.id).state, "paused")
            self.assertEqual(client.pause_batch(b.id).state, "paused", "pausing twice is a no-op")
            self.assertEqual(client.resume_batch(b.id).state, "running")
            cancelled = client.cancel_batch(b.id)
            self.assertEqual(cancelled.state, "cancelled")
            self.assertEqual(client.cancel_batch(b.id).state, "cancelled", "cancelling twice returns it")
            finished = client.wait_batch(b.id, timeout=30)
            self.assertEqual((finished.state, finished.admitted, finished.cancelled, finished.live),
                             ("cancelled", 5, 5, 0))
            self.assertEqual(client.requeue_batch(b.id), 0, "no dead letters")
            with self.assertRaises(KilnError) as caught:
                client.batch(999_999)
            self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_a_refused_call_raises_with_the_grpc_code(self):
        with Client(self.addresses) as client:
            bad = EncodeJob(request_id=str(uuid.uuid4()), asset_guid="x.wav", derivative_assets=["no-such-renderer"])
            with self.assertRaises(KilnError) as caught:
                client.submit([bad])
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("unknown renderer", caught.exception.message)
            with self.assertRaises(KilnError) as caught:
                client.task(task_id=999_999)
            self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)


if __name__ == "__main__":
    unittest.main()


class TlsTest(unittest.TestCase):
    """One scheduler with mutual TLS: the Python client with an admin certificate, a submit
    token, and without credentials."""

    @classmethod
    def setUpClass(cls):
        binary, root = fresh_dir(cls)
        cls.tls = root / "tls"
        subprocess.run([str(binary), "tls", "init", str(cls.tls), "--nodes", "1", "--workers", "0"], check=True,
                       capture_output=True)
        token = subprocess.run([str(binary), "tls", "token", "--role", "submit", "--name", "notebook", "-o", "json"],
                               check=True, capture_output=True)
        import json
        minted = json.loads(token.stdout)
        cls.token = minted["token"]
        grpc_port, http_port = free_port(), free_port()
        cls.addresses = [f"https://127.0.0.1:{grpc_port}"]
        config = root / "node.toml"
        config.write_text("\n".join([
            "[scheduler]",
            f'data_dir = "{root / "data"}"',
            f'listen = "127.0.0.1:{grpc_port}"',
            f'http_listen = "127.0.0.1:{http_port}"',
            'raft_tick = "50ms"',
            f'tokens = [{{ name = "notebook", role = "submit", sha256 = "{minted["sha256"]}" }}]',
            "[scheduler.tls]",
            f'ca_file = "{cls.tls / "ca.pem"}"',
            f'cert_file = "{cls.tls / "node-1.pem"}"',
            f'key_file = "{cls.tls / "node-1-key.pem"}"',
        ]) + "\n")
        cls.log_path = root / "node.log"
        cls.log = open(cls.log_path, "wb")
        cls.process = subprocess.Popen([str(binary), "scheduler", "--config", str(config)], stdout=cls.log,
                                       stderr=cls.log, stdin=subprocess.DEVNULL)

    @classmethod
    def tearDownClass(cls):
        cls.process.kill()
        cls.process.wait()
        cls.log.close()
        cls.dir.cleanup()

    def admin(self) -> Client:
        t = self.tls
        return Client(self.addresses, ca=str(t / "ca.pem"), cert=str(t / "admin.pem"), key=str(t / "admin-key.pem"))

    def test_an_admin_certificate_reads_and_a_submit_token_cannot_requeue(self):
        with self.admin() as client:
            status = client.status()
            self.assertEqual(status.cluster.leader_id, 1, self.log_path.read_text(errors="replace")[-2000:])
        with Client(self.addresses, ca=str(self.tls / "ca.pem"), token=self.token) as client:
            client.status()
            with self.assertRaises(KilnError) as refused:
                client.requeue_dead_letters(all=True)
            self.assertEqual(refused.exception.code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("needs the admin role", refused.exception.message)

    def test_without_credentials_the_cluster_refuses(self):
        with Client(self.addresses, ca=str(self.tls / "ca.pem"), retry_for=2) as client:
            with self.assertRaises(KilnError) as refused:
                client.status()
            self.assertEqual(refused.exception.code, grpc.StatusCode.UNAUTHENTICATED)
