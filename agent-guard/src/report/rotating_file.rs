//! A JSON Lines file rotated by size: `events.jsonl` is renamed `events.jsonl.1` (and each
//! older `.N` to `.N+1`, the oldest kept one dropped) when the next line would take it over
//! its bound. A line is never split across files.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would take the file over this many bytes; 0: never rotate.
    pub max_bytes: u64,
    /// How many rotated files to keep besides the current one.
    pub keep: u32,
}

pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens `path` for appending, creating it (mode 0600) and its directory if needed.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            rotation,
            file,
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline in one `write`, rotating first when the file would
    /// grow past its bound (a file holding no line yet takes any line).
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.append_terminated(&buf)
    }

    /// [`append`](Self::append) for a line that already ends with its newline, so a
    /// caller that reuses its buffer writes without copying.
    pub fn append_terminated(&mut self, line: &[u8]) -> io::Result<()> {
        debug_assert_eq!(line.last(), Some(&b'\n'));
        let len = line.len() as u64;
        if self.rotation.max_bytes > 0 && self.size > 0 && self.size + len > self.rotation.max_bytes
        {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    /// The name of the `n`th rotated file (`n` ≥ 1).
    pub fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.rotation.keep));
            for n in (1..self.rotation.keep).rev() {
                match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Opens `path` for appending, creating it readable and writable by its owner only.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = RotatingFile::open(
            &path,
            Rotation {
                max_bytes: 20,
                keep: 2,
            },
        )
        .unwrap();
        for n in 0..7 {
            file.append(format!("line-{n}-xxxx").as_bytes()).unwrap(); // 12 bytes each
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "line-6-xxxx\n");
        assert_eq!(read(&file.rotated(1)), "line-5-xxxx\n");
        assert_eq!(read(&file.rotated(2)), "line-4-xxxx\n");
        assert!(!file.rotated(3).exists());
    }

    #[test]
    fn a_reopened_file_counts_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let rotation = Rotation {
            max_bytes: 30,
            keep: 1,
        };
        RotatingFile::open(&path, rotation)
            .unwrap()
            .append(b"0123456789012345678")
            .unwrap();
        let mut again = RotatingFile::open(&path, rotation).unwrap();
        again.append(b"0123456789").unwrap();
        assert_eq!(std::fs::read_to_string(again.rotated(1)).unwrap().len(), 20);
    }
}
