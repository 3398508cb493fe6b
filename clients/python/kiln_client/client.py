"""The client: one gRPC channel at a time, following the leader on UNAVAILABLE."""

import pathlib
import time
import uuid
from typing import Iterable, Iterator, List, Optional, Sequence

import grpc

try:
    from ._pb.kiln.v1 import kiln_pb2 as pb
    from ._pb.kiln.v1 import kiln_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - a checkout without generated stubs
    raise ImportError("kiln_client's stubs are missing: run `python3 clients/python/generate.py`") from e

#: Metadata key in which a follower names the leader's address.
LEADER_METADATA = "kiln-leader"
#: Most jobs the scheduler accepts in one Submit call.
MAX_JOBS_PER_SUBMIT = 10_000

TaskState = pb.TaskState

#: Batch states (`Batch.state`) after which no more manifest lines are admitted.
BATCH_FINAL_STATES = frozenset({"done", "cancelled", "failed"})


class KilnError(Exception):
    """A call the scheduler refused or could not answer; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


#: The name every scheduler certificate carries (what `kiln tls init` writes), checked whatever
#: address was dialled.
SCHEDULER_SERVER_NAME = "scheduler.kiln"


class Client:
    """Calls `kiln.v1.Scheduler` on any of `addresses` (``http://host:7450``).

    Against a cluster that runs TLS, pass ``ca`` (the cluster CA's PEM file) and either a client
    certificate (``cert`` and ``key``, as `kiln tls init` / `kiln tls cert` write them) or a
    bearer ``token`` (`kiln tls token`); the role it carries decides what the calls may do.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        timeout: float = 10.0,
        retry_for: float = 15.0,
        *,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        token: Optional[str] = None,
        server_name: str = SCHEDULER_SERVER_NAME,
    ):
        if not addresses:
            raise ValueError("give at least one scheduler address")
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs its key too (and the key its certificate)")
        if (cert or token) and not ca:
            raise ValueError("a certificate or token is sent over TLS only: give ca too")
        self._credentials = None
        self._server_name = server_name
        if ca:
            read = lambda path: pathlib.Path(path).read_bytes()
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read(ca),
                private_key=read(key) if key else None,
                certificate_chain=read(cert) if cert else None,
            )
            if token:
                self._credentials = grpc.composite_channel_credentials(
                    self._credentials, grpc.access_token_call_credentials(token)
                )
        self._addresses = [a.strip() for a in addresses if a.strip()]
        self._timeout = timeout
        self._retry_for = retry_for
        self._target: Optional[str] = None
        self._channel: Optional[grpc.Channel] = None
        self._stub: Optional[pb_grpc.SchedulerStub] = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = self._target = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------

    def submit(self, jobs: Iterable[pb.EncodeJob]) -> List[pb.SubmitResult]:
        """Submits jobs (split into calls of at most 10,000); one result per job, in order.
        Submitting a known request_id again returns the existing task (`created` is False)."""
        results: List[pb.SubmitResult] = []
        batch: List[pb.EncodeJob] = []
        for job in jobs:
            batch.append(job)
            if len(batch) == MAX_JOBS_PER_SUBMIT:
                results.extend(self._call("Submit", pb.SubmitRequest(jobs=batch)).results)
                batch = []
        if batch:
            results.extend(self._call("Submit", pb.SubmitRequest(jobs=batch)).results)
        return results

    def task(self, task_id: Optional[int] = None, request_id: Optional[str] = None) -> pb.Task:
        """One task with its history, by id or by request id."""
        if (task_id is None) == (request_id is None):
            raise ValueError("give exactly one of task_id and request_id")
        request = pb.GetTaskRequest(task_id=task_id) if task_id is not None else pb.GetTaskRequest(request_id=request_id)
        return self._call("GetTask", request)

    def tasks(
        self,
        state: int = TaskState.TASK_STATE_UNSPECIFIED,
        queue: str = "",
        release_id: Optional[int] = None,
        page_size: int = 1000,
    ) -> Iterator[pb.Task]:
        """Every task matching the filter, fetched a page at a time."""
        after = 0
        while True:
            request = pb.ListTasksRequest(state=state, queue=queue, after_id=after, limit=page_size)
            if release_id is not None:
                request.release_id = release_id
            page = self._call("ListTasks", request)
            yield from page.tasks
            if page.next_after_id == 0:
                return
            after = page.next_after_id

    def cancel(self, task_id: int) -> pb.Task:
        return self._call("Cancel", pb.CancelRequest(task_id=task_id)).task

    def requeue_dead_letters(self, **selection) -> int:
        """Requeues dead letters selected like `kiln dlq requeue` (task_ids, queue, release_id,
        error_contains, all=True); returns how many."""
        return self._call("RequeueDeadLetters", pb.DeadLetterFilter(**selection)).count

    def status(self) -> pb.StatusResponse:
        """Counts (live and all-time), rates, queues, workers and slots."""
        return self._call("Status", pb.StatusRequest())

    def workers(self) -> List[pb.WorkerInfo]:
        return list(self._call("ListWorkers", pb.ListWorkersRequest()).workers)

    def wait(self, request_ids: Sequence[str], timeout: float = 600.0, poll: float = 0.5) -> List[pb.Task]:
        """Waits until every task named by `request_ids` has finished (succeeded, dead-lettered
        or cancelled) and returns them; TimeoutError names how many are still open."""
        terminal = {TaskState.TASK_STATE_SUCCEEDED, TaskState.TASK_STATE_DEAD_LETTERED, TaskState.TASK_STATE_CANCELLED}
        deadline = time.monotonic() + timeout
        open_ids = list(request_ids)
        done = {}
        while True:
            for rid in list(open_ids):
                t = self.task(request_id=rid)
                if t.state in terminal:
                    done[rid] = t
                    open_ids.remove(rid)
            if not open_ids:
                return [done[r] for r in request_ids]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(open_ids)} of {len(request_ids)} tasks still open after {timeout} s")
            time.sleep(poll)

    # -- catalog batches -------------------------------------------------------------------

    def submit_batch(
        self,
        source: str,
        *,
        name: str = "",
        format: str = "",
        queue: str = "",
        priority: int = 0,
        window: int = 0,
        on_bad_line: str = "stop",
        webhook: str = "",
        request_id: str = "",
    ) -> pb.Batch:
        """Submits a manifest (JSONL or CSV) as a catalog batch: the leader reads `source` (a
        path or URL every scheduler can read: /nfs/m.jsonl, s3://…, gs://…, az://…, http(s)://…)
        and admits its lines a window at a time. Empty or zero arguments take the scheduler's
        defaults (`format` from the source's extension, `window` from its config). `on_bad_line`
        is "stop" (the batch fails at the first bad line) or "skip" (counted and passed over).

        The same `request_id` returns the same batch; without one, a fresh id is sent so that a
        retried call cannot create a second batch (it is in the returned `spec.request_id`)."""
        spec = pb.BatchSpec(
            name=name,
            source=source,
            format=format,
            queue=queue,
            priority=priority,
            window=window,
            on_bad_line=on_bad_line,
            webhook=webhook,
            request_id=request_id or str(uuid.uuid4()),
        )
        return self._call("SubmitBatch", spec)

    def batch(self, batch_id: int) -> pb.Batch:
        """One batch: its state, counters, cursor and first bad lines."""
        return self._call("GetBatch", pb.GetBatchRequest(id=batch_id))

    def batches(self) -> List[pb.Batch]:
        """Every batch the cluster knows."""
        return list(self._call("ListBatches", pb.ListBatchesRequest()).batches)

    def pause_batch(self, batch_id: int) -> pb.Batch:
        """Stops admitting lines (tasks already admitted go on); pausing a paused batch is a no-op."""
        return self._control_batch(batch_id, "pause")

    def resume_batch(self, batch_id: int) -> pb.Batch:
        """Admits lines again; resuming a running batch is a no-op."""
        return self._control_batch(batch_id, "resume")

    def cancel_batch(self, batch_id: int) -> pb.Batch:
        """Stops admitting lines and cancels the batch's queued tasks (leased ones finish).
        Cancelling a batch already cancelled returns it; one done or failed raises
        `KilnError` (FAILED_PRECONDITION)."""
        try:
            return self._control_batch(batch_id, "cancel")
        except KilnError as e:
            # A retried cancel whose first attempt took effect (or a second cancel) lands here.
            if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                current = self.batch(batch_id)
                if current.state == "cancelled":
                    return current
            raise

    def requeue_batch(self, batch_id: int) -> int:
        """Requeues the batch's dead letters (a finished batch runs again); returns how many."""
        return self._call("RequeueBatch", pb.GetBatchRequest(id=batch_id)).count

    def wait_batch(self, batch_id: int, timeout: Optional[float] = None, poll: float = 0.5) -> pb.Batch:
        """Waits until the batch has finished: done, cancelled or failed, with none of its tasks
        still queued or leased (`live == 0`), and returns it. TimeoutError after `timeout`
        seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            b = self.batch(batch_id)
            if b.state in BATCH_FINAL_STATES and b.live == 0:
                return b
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"batch {batch_id} still {b.state} with {b.live} live tasks after {timeout} s "
                    f"({b.line} lines read, {b.succeeded} succeeded)"
                )
            time.sleep(poll)

    def _control_batch(self, batch_id: int, action: str) -> pb.Batch:
        return self._call("ControlBatch", pb.BatchControlRequest(id=batch_id, action=action))

    # -- plumbing --------------------------------------------------------------------------

    def _connect(self, target: str) -> pb_grpc.SchedulerStub:
        if self._target != target:
            self.close()
            host = target.split("://", 1)[-1].rstrip("/")
            if self._credentials is None:
                self._channel = grpc.insecure_channel(host)
            else:
                options = [("grpc.ssl_target_name_override", self._server_name)]
                self._channel = grpc.secure_channel(host, self._credentials, options=options)
            self._stub = pb_grpc.SchedulerStub(self._channel)
            self._target = target
        assert self._stub is not None
        return self._stub

    def _call(self, method: str, request):
        """Calls `method`, following a follower's pointer to the leader and trying the other
        addresses while none answers, for up to `retry_for` seconds. Every call is idempotent."""
        deadline = time.monotonic() + self._retry_for
        candidates = list(self._addresses)
        target = self._target or candidates[0]
        attempt = 0
        while True:
            stub = self._connect(target)
            try:
                return getattr(stub, method)(request, timeout=self._timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise KilnError(code, e.details() or "") from None
                if time.monotonic() > deadline:
                    raise KilnError(code, f"no scheduler answered ({e.details()})") from None
                leader = dict(e.trailing_metadata() or ()).get(LEADER_METADATA)
                attempt += 1
                if leader and leader != target:
                    target = leader
                else:
                    target = candidates[attempt % len(candidates)]
                    time.sleep(min(0.05 * attempt, 0.5))
