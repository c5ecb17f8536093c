//! The webhook sink: batches of lines POSTed as JSON Lines (`application/x-ndjson`),
//! delivered at least once, across daemon restarts.
//!
//! Two threads: the spool thread takes lines off the sink's queue and appends them to the
//! disk [`spool`], so the queue drains at disk speed whatever the receiver does; the
//! sender thread reads batches from the spool's cursor, POSTs them, and moves the cursor
//! only on a 2xx. Any other answer, a timeout or a connection error retries the same batch
//! after an exponential backoff.
pub mod http;
pub mod spool;
pub mod url;

use std::{path::Path, sync::Arc, thread::JoinHandle, time::Duration};

use self::spool::Spool;
use super::{backoff::Backoff, config::WebhookConfig, queue, Control, SinkError};

/// How many queued lines the spool thread writes in one go at most.
const APPEND_MAX: usize = 1000;
/// How long the spool thread waits for a line before it considers an fsync.
const IDLE: Duration = Duration::from_millis(500);

pub(crate) fn start(
    name: &str,
    config: &WebhookConfig,
    spool_dir: &Path,
    inbox: queue::Inbox,
    control: Control,
) -> Result<Vec<JoinHandle<()>>, SinkError> {
    let spool = Spool::open(spool_dir, config.spool_max_bytes, control.stats.clone()).map_err(
        |source| SinkError::Spool {
            sink: name.to_owned(),
            path: spool_dir.to_owned(),
            source,
        },
    )?;
    let spool = Arc::new(spool);
    let thread_error = |source| SinkError::Thread {
        sink: name.to_owned(),
        source,
    };
    let writer = {
        let spool = spool.clone();
        super::spawn(&format!("{name}-spool"), move || fill(&spool, &inbox))
            .map_err(thread_error)?
    };
    let config = config.clone();
    let sender = super::spawn(name, move || send(&spool, &config, &control));
    match sender {
        Ok(sender) => Ok(vec![writer, sender]),
        // The writer ends by itself when the set drops the queue's other end.
        Err(e) => Err(thread_error(e)),
    }
}

/// The spool thread: queue to disk, until the queue closes.
fn fill(spool: &Spool, inbox: &queue::Inbox) {
    loop {
        match inbox.recv_timeout(IDLE) {
            queue::Next::Line(first) => {
                let mut lines = vec![first];
                while lines.len() < APPEND_MAX {
                    match inbox.try_recv() {
                        Some(line) => lines.push(line),
                        None => break,
                    }
                }
                spool.append(&lines);
            }
            queue::Next::Idle => {}
            queue::Next::Closed => break,
        }
        spool.sync_if_due();
    }
    spool.close();
}

/// The sender thread: spool to receiver, until the spool is closed and empty or the set
/// is abandoned.
fn send(spool: &Spool, config: &WebhookConfig, control: &Control) {
    let mut backoff = Backoff::default();
    loop {
        let batch = match spool.next_batch(config.batch_max, config.batch_wait, &control.abandon) {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(e) => {
                control.stats.set_error(format!("reading the spool: {e}"));
                if !backoff.wait(&control.abandon) {
                    return;
                }
                continue;
            }
        };
        loop {
            match http::post(&config.url, &batch.body, config.timeout, &control.abandon) {
                Ok(()) => {
                    control.stats.add_delivered(batch.lines);
                    if let Err(e) = spool.acknowledge(&batch) {
                        // Delivered all the same; the batch will be sent again after a
                        // restart.
                        control
                            .stats
                            .set_error(format!("saving the spool's cursor: {e}"));
                    }
                    backoff.reset();
                    break;
                }
                Err(http::PostError::Abandoned) => return,
                Err(e) => {
                    control.stats.set_error(error_chain(&e));
                    if !backoff.wait(&control.abandon) {
                        return;
                    }
                    if !spool.is_current(&batch) {
                        break;
                    }
                }
            }
        }
    }
}

/// An error with its sources, for `last_error`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
