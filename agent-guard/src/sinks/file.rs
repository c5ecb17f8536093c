//! The file sink: JSON Lines in a file of its own, rotated by size like the audit log.
use std::path::Path;

use super::{queue::Inbox, Control};
use crate::report::rotating_file::{RotatingFile, Rotation};

/// Appends each line; ends when the queue closes. A file that cannot be opened or written
/// loses the line (counted) and is opened again for the next one, so a full disk or a
/// removed directory heals by itself.
pub fn run(path: &Path, rotation: Rotation, inbox: Inbox, control: Control) {
    let mut file: Option<RotatingFile> = None;
    while let Some(line) = inbox.recv() {
        let written = match &mut file {
            Some(f) => f.append(line.text.as_bytes()),
            None => RotatingFile::open(path, rotation).and_then(|mut f| {
                let written = f.append(line.text.as_bytes());
                file = Some(f);
                written
            }),
        };
        match written {
            Ok(()) => control.stats.add_delivered(1),
            Err(e) => {
                control
                    .stats
                    .set_error(format!("writing {}: {e}", path.display()));
                control.stats.add_dropped(1, line.sequence, line.sequence);
                file = None;
            }
        }
    }
}
