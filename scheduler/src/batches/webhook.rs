//! Webhooks: on the leader, POST each final event of a batch (done, failed, cancelled) to its
//! webhook, signed, retried with backoff, and recorded in the ledger once delivered.
//!
//! Which events are owed is replicated state (`events` and `notified` of each batch), so a new
//! leader carries on where the old one stopped. Between a delivery and its `BatchNotified`
//! committing, a failover can send an event twice; every delivery carries the same
//! `X-Kiln-Delivery` id for the same event, so receivers drop the repeat.
//!
//! ```text
//!  POST <webhook>
//!  Content-Type: application/json
//!  X-Kiln-Event: done | failed | cancelled
//!  X-Kiln-Delivery: batch-<id>-event-<n>
//!  X-Kiln-Signature: sha256=<hex HMAC-SHA256 of the body with the shared secret>
//!  {"delivery": …, "event": "done", "batch": {id, name, source, state, counts…}}
//! ```

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use kiln_config::BatchOptions;
use kiln_ledger::batches::BatchRecord;
use kiln_ledger::Command;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::handle::Handle;

const POLL: Duration = Duration::from_millis(200);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// An event still owed, and how its delivery is going.
struct Attempts {
    tried: u32,
    next_at: Instant,
}

/// The body of one delivery.
pub fn body(record: &BatchRecord, event: u32) -> Vec<u8> {
    let c = &record.counts;
    let value = serde_json::json!({
        "delivery": delivery_id(record.id, event),
        "event": record.state.as_str(),
        "batch": {
            "id": record.id,
            "name": record.spec.name,
            "source": record.spec.source,
            "state": record.state.as_str(),
            "error": record.error,
            "admitted": c.admitted,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "dead_lettered": c.dead_lettered,
            "cancelled": c.cancelled,
            "bad_lines": c.bad_lines,
            "duplicates": c.duplicates,
            "created_at_ms": record.created_at,
            "finished_at_ms": record.finished_at,
        },
    });
    value.to_string().into_bytes()
}

pub fn delivery_id(batch: u64, event: u32) -> String {
    format!("batch-{batch}-event-{event}")
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`, as GitHub and Stripe sign theirs.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Runs until `stop` turns true.
pub(crate) async fn run(handle: Handle, opts: BatchOptions, secret: Option<Vec<u8>>, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(opts.webhook_timeout).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client: batch webhooks are off");
            return;
        }
    };
    let mut owed: HashMap<(u64, u32), Attempts> = HashMap::new();
    while super::next_round(&mut stop, POLL).await {
        let default = opts.webhook.clone();
        let due = handle
            .read(move |l, node| {
                if !node.is_leader {
                    return Vec::new();
                }
                l.batches()
                    .iter()
                    .filter(|b| b.notified < b.events)
                    .filter_map(|b| b.spec.webhook.clone().or_else(|| default.clone()).map(|url| (b.clone(), url)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        owed.retain(|(batch, event), _| due.iter().any(|(b, _)| b.id == *batch && b.notified < *event));
        for (record, url) in due {
            let event = record.notified + 1;
            let attempts = owed.entry((record.id, event)).or_insert(Attempts { tried: 0, next_at: Instant::now() });
            if Instant::now() < attempts.next_at {
                continue;
            }
            let payload = body(&record, event);
            attempts.tried += 1;
            let delivered = match deliver(&client, &url, &record, event, payload, secret.as_deref()).await {
                Ok(()) => true,
                Err(error) if attempts.tried >= opts.webhook_attempts => {
                    tracing::error!(batch = record.id, event, %url, %error, tried = attempts.tried,
                        "batch webhook given up");
                    true
                }
                Err(error) => {
                    let wait = FIRST_RETRY.saturating_mul(1 << (attempts.tried - 1).min(6)).min(MAX_RETRY);
                    tracing::warn!(batch = record.id, event, %url, %error, retry_in = ?wait, "batch webhook failed");
                    attempts.next_at = Instant::now() + wait;
                    false
                }
            };
            if delivered {
                owed.remove(&(record.id, event));
                if let Err(e) = handle.propose(Command::BatchNotified { batch: record.id, event }).await {
                    tracing::warn!(batch = record.id, event, error = %e, "could not record a webhook delivery");
                }
            }
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    record: &BatchRecord,
    event: u32,
    body: Vec<u8>,
    secret: Option<&[u8]>,
) -> Result<(), String> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-kiln-event", record.state.as_str())
        .header("x-kiln-delivery", delivery_id(record.id, event));
    if let Some(secret) = secret {
        request = request.header("x-kiln-signature", signature(secret, &body));
    }
    let response = request.body(body).send().await.map_err(|e| e.to_string())?;
    match response.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("the receiver answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
