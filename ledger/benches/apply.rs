//! How fast the pure state machine runs a task's whole life (submit, lease, complete), without
//! Raft or disk: the ceiling the scheduler shell can approach.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kiln_ledger::{Command, Ledger, LedgerConfig, Outcome, TaskResult, WorkerSpec};
use kiln_types::{AssetGuid, EncodeJob, QueueName, RendererName, RequestId, WorkerId};

const TASKS: usize = 10_000;

fn jobs() -> Vec<EncodeJob> {
    let renderers: kiln_types::RendererSet =
        ["loudness", "waveform"].into_iter().filter_map(|r| RendererName::new(r).ok()).collect();
    (0..TASKS)
        .filter_map(|i| {
            Some(EncodeJob {
                request_id: RequestId::new(format!("bench-{i}")).ok()?,
                release_id: 1,
                asset_id: i as i64,
                asset_guid: AssetGuid::new(format!("masters/{i}.wav")).ok()?,
                derivative_assets: renderers.clone(),
                queue: QueueName::default(),
                priority: 0,
                max_attempts: 3,
            })
        })
        .collect()
}

fn life_cycle(c: &mut Criterion) {
    let worker = WorkerId::new("bench").expect("valid worker id");
    let spec = WorkerSpec {
        id: worker.clone(),
        hostname: "bench".into(),
        slots: 64,
        cores: 64,
        memory_bytes: 0,
        speed_milli: 1000,
        queues: vec![QueueName::default()],
        version: String::new(),
    };
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(TASKS as u64));
    group.bench_function("submit+lease+complete", |b| {
        b.iter_batched(
            || {
                let mut l = Ledger::new(LedgerConfig::default());
                l.apply(Command::RegisterWorker { spec: spec.clone() }, 0);
                (l, jobs())
            },
            |(mut l, jobs)| {
                for chunk in jobs.chunks(1000) {
                    l.apply(Command::Submit { jobs: chunk.to_vec() }, 1);
                }
                let mut now = 2;
                while let Ok(Outcome::Leased(leases)) =
                    l.apply(Command::Lease { worker: worker.clone(), max: 64 }, now).outcome
                {
                    if leases.is_empty() {
                        break;
                    }
                    for lease in leases {
                        let result = TaskResult::default();
                        l.apply(
                            Command::Complete {
                                task: lease.task,
                                lease_seq: lease.lease_seq,
                                worker: worker.clone(),
                                result,
                            },
                            now,
                        );
                    }
                    now += 1;
                }
                l
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, life_cycle);
criterion_main!(benches);
