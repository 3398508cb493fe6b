//! The `kiln.v1.Scheduler` service: what the CLI and scripts call. Thin: parse, propose or read,
//! convert.

use kiln_ledger::{Command, Outcome};
use kiln_proto::v1::{self, scheduler_server::Scheduler};
use kiln_types::{RendererName, RequestId, TaskId, WorkerId, BUILTIN_RENDERERS};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::handle::Handle;
use crate::node::now_ms;
use crate::status::{from_propose, from_rejection};

/// Most jobs accepted in one Submit call; clients split larger manifests.
pub const MAX_JOBS_PER_SUBMIT: usize = 10_000;

pub struct Api {
    handle: Handle,
    /// For what only the leader's sessions know (busy slots, prefetch depth).
    hub: std::sync::Arc<crate::sessions::Hub>,
    /// What this node reports it can apply (rolling upgrades).
    support: kiln_ledger::Support,
    /// Defaults for catalog batches.
    batch_options: kiln_config::BatchOptions,
}

impl Api {
    pub fn new(
        handle: Handle,
        hub: std::sync::Arc<crate::sessions::Hub>,
        support: kiln_ledger::Support,
        batch_options: kiln_config::BatchOptions,
    ) -> Self {
        Self { handle, hub, support, batch_options }
    }

    /// The batch as the leader has it now.
    async fn batch(&self, id: u64) -> Result<v1::Batch, Status> {
        let found = self
            .handle
            .read_fresh(move |l, _| l.batches().get(id).map(|b| crate::batches::api::to_pb(b, now_ms())))
            .await
            .map_err(from_propose)?;
        found.ok_or_else(|| Status::not_found(format!("no batch {id}")))
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, Status> {
        self.handle.propose(cmd).await.map_err(from_propose)?.map_err(from_rejection)
    }
}

fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("unexpected ledger outcome: {outcome:?}"))
}

#[tonic::async_trait]
impl Scheduler for Api {
    async fn submit(&self, request: Request<v1::SubmitRequest>) -> Result<Response<v1::SubmitResponse>, Status> {
        let jobs = request.into_inner().jobs;
        if jobs.len() > MAX_JOBS_PER_SUBMIT {
            return Err(Status::invalid_argument(format!(
                "{} jobs in one call; send at most {MAX_JOBS_PER_SUBMIT} per call",
                jobs.len()
            )));
        }
        let mut parsed = Vec::with_capacity(jobs.len());
        for (i, pb) in jobs.into_iter().enumerate() {
            let request_id = pb.request_id.clone();
            let job = convert::job_from_pb(pb)
                .map_err(|e| Status::invalid_argument(format!("job {} (request_id {request_id:?}): {e}", i + 1)))?;
            if let Some(unknown) = job.derivative_assets.iter().find(|r| !known_renderer(r)) {
                return Err(Status::invalid_argument(format!(
                    "job {} (request_id {request_id:?}): unknown renderer `{unknown}` (known: {})",
                    i + 1,
                    BUILTIN_RENDERERS.join(", ")
                )));
            }
            parsed.push(job);
        }
        match self.propose(Command::Submit { jobs: parsed }).await? {
            Outcome::Submitted(results) => Ok(Response::new(convert::submitted_to_pb(results))),
            other => Err(unexpected(other)),
        }
    }

    async fn get_task(&self, request: Request<v1::GetTaskRequest>) -> Result<Response<v1::Task>, Status> {
        let key = request.into_inner().key.ok_or_else(|| Status::invalid_argument("give a task_id or request_id"))?;
        let found = match key {
            v1::get_task_request::Key::TaskId(id) => self
                .handle
                .read_fresh(move |l, _| l.task(TaskId(id)).map(|t| convert::task_to_pb(t, true)))
                .await
                .map_err(from_propose)?,
            v1::get_task_request::Key::RequestId(rid) => {
                let rid = RequestId::new(rid).map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.handle
                    .read_fresh(move |l, _| l.task_by_request(&rid).map(|t| convert::task_to_pb(t, true)))
                    .await
                    .map_err(from_propose)?
            }
        };
        found.map(Response::new).ok_or_else(|| {
            Status::not_found("no such task (it may have been garbage-collected; see `kiln status` totals)")
        })
    }

    async fn list_tasks(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 1000,
            n => (n as usize).min(10_000),
        };
        let filter = convert::task_filter_from_pb(&r, limit)?;
        let with_history = r.with_history;
        let _turn = self.handle.heavy_read_turn().await;
        let tasks = self
            .handle
            .read_fresh(move |l, _| {
                l.list(&filter).into_iter().map(|t| convert::task_to_pb(t, with_history)).collect::<Vec<_>>()
            })
            .await
            .map_err(from_propose)?;
        let next_after_id = if tasks.len() == limit { tasks.last().map_or(0, |t| t.id) } else { 0 };
        Ok(Response::new(v1::ListTasksResponse { tasks, next_after_id }))
    }

    async fn cancel(&self, request: Request<v1::CancelRequest>) -> Result<Response<v1::CancelResponse>, Status> {
        let id = TaskId(request.into_inner().task_id);
        self.propose(Command::Cancel { task: id }).await?;
        let task = self
            .handle
            .read(move |l, _| l.task(id).map(|t| convert::task_to_pb(t, false)))
            .await
            .map_err(from_propose)?;
        Ok(Response::new(v1::CancelResponse { task }))
    }

    async fn requeue_dead_letters(
        &self,
        request: Request<v1::DeadLetterFilter>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let filter = convert::dead_letter_filter_from_pb(request.into_inner()).map_err(convert::Invalid::from)?;
        match self.propose(Command::RequeueDeadLetters { filter }).await? {
            Outcome::Count(count) => Ok(Response::new(v1::CountResponse { count })),
            other => Err(unexpected(other)),
        }
    }

    async fn purge_dead_letters(
        &self,
        request: Request<v1::DeadLetterFilter>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let filter = convert::dead_letter_filter_from_pb(request.into_inner()).map_err(convert::Invalid::from)?;
        match self.propose(Command::PurgeDeadLetters { filter }).await? {
            Outcome::Count(count) => Ok(Response::new(v1::CountResponse { count })),
            other => Err(unexpected(other)),
        }
    }

    async fn status(&self, _request: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        let now = now_ms();
        let status =
            self.handle.read(move |l, node| convert::status_to_pb(l, node, now)).await.map_err(from_propose)?;
        Ok(Response::new(status))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let mut workers: Vec<v1::WorkerInfo> = self
            .handle
            .read(|l, _| l.workers().into_iter().map(|w| convert::listed_worker_to_pb(w, l.features())).collect())
            .await
            .map_err(from_propose)?;
        let live = self.hub.live();
        for w in &mut workers {
            if let Some(l) = kiln_types::WorkerId::new(w.id.clone()).ok().and_then(|id| live.get(&id)) {
                w.busy_slots = l.busy_slots;
                w.buffered = l.buffered;
            }
        }
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn drain_worker(&self, request: Request<v1::DrainWorkerRequest>) -> Result<Response<v1::WorkerInfo>, Status> {
        let id = WorkerId::new(request.into_inner().worker_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        drainable(&self.handle, &id).await?;
        self.propose(Command::DrainWorker { worker: id.clone() }).await?;
        let info = self
            .handle
            .read(move |l, _| l.worker(&id).map(|w| convert::listed_worker_to_pb(w, l.features())))
            .await
            .map_err(from_propose)?;
        info.map(Response::new).ok_or_else(|| Status::internal("the drained worker is gone from the ledger"))
    }

    /// This node's own view, served by whichever node is asked (it is how nodes are compared).
    async fn cluster(&self, _request: Request<v1::ClusterRequest>) -> Result<Response<v1::ClusterResponse>, Status> {
        let support = self.support.clone();
        let response = self
            .handle
            .read(move |l, status| v1::ClusterResponse {
                // O(1): kept up to date by every command, not computed from the whole ledger.
                ledger_digest: l.digest(),
                support: Some(convert::support_to_pb(&support, l.features())),
                ..convert::cluster_to_pb(status)
            })
            .await
            .map_err(from_propose)?;
        Ok(Response::new(response))
    }

    async fn change_membership(
        &self,
        request: Request<v1::MembershipRequest>,
    ) -> Result<Response<v1::ClusterResponse>, Status> {
        let change = convert::member_change_from_pb(request.into_inner())?;
        // A leader elected a moment ago (removing the old leader hands leadership over first)
        // refuses membership changes until it has applied its first entry: wait that out here
        // rather than fail the operator's command.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.handle.change_membership(change.clone()).await.map_err(from_propose)? {
                Ok(_) => break,
                Err(e) if e == crate::node::CONF_CHANGE_PENDING && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(Status::failed_precondition(e)),
            }
        }
        let status = self.handle.status().await.map_err(from_propose)?;
        Ok(Response::new(convert::cluster_to_pb(&status)))
    }

    /// This node's own support, served by whichever node is asked (it is how the leader learns it).
    async fn support(&self, _request: Request<v1::SupportRequest>) -> Result<Response<v1::NodeSupport>, Status> {
        let support = self.support.clone();
        let report =
            self.handle.read(move |l, _| convert::support_to_pb(&support, l.features())).await.map_err(from_propose)?;
        Ok(Response::new(report))
    }

    async fn list_features(
        &self,
        _request: Request<v1::ListFeaturesRequest>,
    ) -> Result<Response<v1::ListFeaturesResponse>, Status> {
        let features = crate::upgrade::list(&self.handle, &self.support).await?;
        Ok(Response::new(v1::ListFeaturesResponse { features }))
    }

    async fn enable_feature(
        &self,
        request: Request<v1::EnableFeatureRequest>,
    ) -> Result<Response<v1::Feature>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(crate::upgrade::enable(&self.handle, &self.support, name.trim()).await?))
    }

    async fn submit_batch(&self, request: Request<v1::BatchSpec>) -> Result<Response<v1::Batch>, Status> {
        let spec = crate::batches::api::spec_from_pb(request.into_inner(), &self.batch_options).await?;
        let id = crate::batches::api::submit(&self.handle, &self.support, spec).await?;
        Ok(Response::new(self.batch(id).await?))
    }

    async fn get_batch(&self, request: Request<v1::GetBatchRequest>) -> Result<Response<v1::Batch>, Status> {
        Ok(Response::new(self.batch(request.into_inner().id).await?))
    }

    async fn list_batches(
        &self,
        _request: Request<v1::ListBatchesRequest>,
    ) -> Result<Response<v1::ListBatchesResponse>, Status> {
        let now = now_ms();
        let batches = self
            .handle
            .read_fresh(move |l, _| l.batches().iter().map(|b| crate::batches::api::to_pb(b, now)).collect())
            .await
            .map_err(from_propose)?;
        Ok(Response::new(v1::ListBatchesResponse { batches }))
    }

    async fn control_batch(&self, request: Request<v1::BatchControlRequest>) -> Result<Response<v1::Batch>, Status> {
        let r = request.into_inner();
        let action = crate::batches::api::action_from_pb(&r.action)?;
        self.propose(Command::BatchControl { batch: r.id, action }).await?;
        Ok(Response::new(self.batch(r.id).await?))
    }

    async fn requeue_batch(
        &self,
        request: Request<v1::GetBatchRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let id = request.into_inner().id;
        let filter = self
            .handle
            .read_fresh(move |l, _| crate::batches::api::dead_letters(l, id))
            .await
            .map_err(from_propose)?
            .ok_or_else(|| Status::not_found(format!("no batch {id}")))?;
        if filter.task_ids.is_empty() {
            return Ok(Response::new(v1::CountResponse { count: 0 }));
        }
        match self.propose(Command::RequeueDeadLetters { filter }).await? {
            Outcome::Count(count) => Ok(Response::new(v1::CountResponse { count })),
            other => Err(unexpected(other)),
        }
    }
}

/// Whether an operator may drain `id` now: a worker never seen is NOT_FOUND, one not connected
/// FAILED_PRECONDITION (the ledger would mark it, and its next registration clear it, for nothing).
/// The API and the dashboard both ask this before proposing `DrainWorker`.
pub(crate) async fn drainable(handle: &Handle, id: &WorkerId) -> Result<(), Status> {
    let worker = id.clone();
    match handle.read_fresh(move |l, _| l.worker(&worker).map(|w| w.connected)).await.map_err(from_propose)? {
        None => Err(Status::not_found(format!("no worker {id} has ever registered"))),
        Some(false) => Err(Status::failed_precondition(format!("worker {id} is not connected: nothing to drain"))),
        Some(true) => Ok(()),
    }
}

/// Renderer names accepted at submit: the built-ins (plugins extend this later).
pub fn known_renderer(name: &RendererName) -> bool {
    BUILTIN_RENDERERS.contains(&name.as_str())
}
