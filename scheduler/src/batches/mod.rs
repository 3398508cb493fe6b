//! Catalog batches in the shell: the leader's streaming admission (`admission`, reading
//! `source`), its webhooks (`webhook`), and what the API needs (`api`: checking a submission,
//! the batch as clients see it, with its rate and ETA).

pub(crate) mod admission;
pub(crate) mod api;
pub mod source;
pub mod webhook;
