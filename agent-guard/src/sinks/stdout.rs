//! The stdout sink: each line on the daemon's standard output, for a supervisor (systemd's
//! journal, a container runtime) to collect.
use std::io::Write as _;

use super::{queue::Inbox, Control};

/// Writes what is queued in one go, then waits for more; ends when the queue closes.
pub fn run(inbox: Inbox, control: Control) {
    let mut buf = Vec::new();
    while let Some(first) = inbox.recv() {
        let mut batch = vec![first];
        while let Some(more) = inbox.try_recv() {
            batch.push(more);
        }
        buf.clear();
        for line in &batch {
            buf.extend_from_slice(line.text.as_bytes());
            buf.push(b'\n');
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => control.stats.add_delivered(batch.len() as u64),
            Err(e) => {
                control.stats.set_error(format!("writing to stdout: {e}"));
                let (first, last) = (batch[0].sequence, batch[batch.len() - 1].sequence);
                control.stats.add_dropped(batch.len() as u64, first, last);
            }
        }
    }
}
