"""A Python client for Kiln's scheduler: submit jobs and catalog batches, follow them, list
tasks and workers.

    from kiln_client import Client, EncodeJob
    kiln = Client(["http://sched-1:7450", "http://sched-2:7450"])
    kiln.submit([EncodeJob(request_id="…", asset_guid="a/b.wav", derivative_assets=["bpm", "key"])])
    print(kiln.status().total.succeeded)

Any member's address works: the client follows the leader, as `kiln` does.
"""

from .client import BATCH_FINAL_STATES, Client, KilnError, TaskState, pb

EncodeJob = pb.EncodeJob

__all__ = ["BATCH_FINAL_STATES", "Client", "EncodeJob", "KilnError", "TaskState", "pb"]
