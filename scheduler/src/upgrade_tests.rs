//! A node never applies what it does not support: it halts on a committed command beyond it, and
//! refuses to start from a snapshot with a feature it does not support.

use std::path::Path;
use std::time::Duration;

use kiln_ledger::features::FENCED_SESSIONS;
use kiln_ledger::{Command, LedgerConfig, Outcome, Support};
use tokio::sync::{mpsc, oneshot};

use crate::node::{Node, NodeConfig, Request, RunError, StartError, Transport};

struct Nowhere;

impl Transport for Nowhere {
    fn send(&mut self, _messages: Vec<raft::prelude::Message>) {}
}

fn config(dir: &Path, support: Support) -> NodeConfig {
    NodeConfig {
        id: 1,
        data_dir: dir.join("node-1"),
        members: vec![(1, "test://1".into())],
        join: false,
        force_new_cluster: false,
        ledger: LedgerConfig::default(),
        tick: Duration::from_millis(50),
        election_ticks: 10,
        max_batch: 64,
        batch_window: Duration::ZERO,
        // Every entry is snapshotted, so a restart starts from a snapshot holding the flags.
        snapshot_every: 1,
        clock: || 1_700_000_000_000,
        randomized_election: false,
        metrics: Default::default(),
        support,
    }
}

fn open(dir: &Path, support: Support) -> Result<Node, StartError> {
    let (tx, _rx) = mpsc::unbounded_channel();
    Node::open(config(dir, support), Box::new(Nowhere), tx)
}

/// Proposes `cmd` on a lone node and runs rounds until it is answered or the node stops.
fn propose(node: &mut Node, cmd: Command) -> Result<Outcome, RunError> {
    let (reply, mut rx) = oneshot::channel();
    node.round(vec![Request::Propose { cmd, reply }], true)?;
    for _ in 0..20 {
        if let Ok(answer) = rx.try_recv() {
            return Ok(answer.expect("proposed").expect("applied"));
        }
        node.round(Vec::new(), true)?;
    }
    panic!("no answer")
}

fn lead(node: &mut Node) {
    for _ in 0..5 {
        node.round(Vec::new(), true).expect("round");
    }
    assert!(node.node_status().is_leader);
}

#[test]
fn a_node_that_does_not_support_a_committed_command_halts_instead_of_applying_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = open(dir.path(), Support::emulating(1)).expect("open");
    lead(&mut node);
    let err = propose(&mut node, Command::EnableFeature { name: FENCED_SESSIONS.into() }).expect_err("unsupported");
    assert!(matches!(err, RunError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("EnableFeature"), "{err}");
    assert!(!node.ledger().features().is_enabled(FENCED_SESSIONS), "nothing of the batch was applied");
}

#[test]
fn a_node_restarted_as_a_release_without_an_enabled_feature_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut node = open(dir.path(), Support::this_build()).expect("open");
        lead(&mut node);
        let enabled = propose(&mut node, Command::EnableFeature { name: FENCED_SESSIONS.into() }).expect("applied");
        assert_eq!(enabled, Outcome::Count(1));
        // One more entry, so the snapshot certainly covers the flag.
        propose(&mut node, Command::ExpireLeases).expect("applied");
    }
    let err = open(dir.path(), Support::emulating(1)).err().expect("refused");
    assert!(matches!(err, StartError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains(FENCED_SESSIONS), "{err}");
    // The release that supports it starts from the same data.
    let node = open(dir.path(), Support::this_build()).expect("open");
    assert!(node.ledger().features().is_enabled(FENCED_SESSIONS));
}
