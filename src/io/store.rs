//! Durable state on disk: the DHCP lease log in `state_dir`.
//!
//! The log is append-only text, one record per line. A writer thread takes batches of records
//! from the datapath, appends them and fsyncs once per batch (group commit), and only then
//! reports the highest sequence number it made durable, so the datapath never sends a DHCP ACK
//! for a lease that a crash could lose. At start the log is read back (a torn last line, from a
//! crash mid-write, is skipped by the decoder) and rewritten compactly: a temporary file with
//! the live records, fsynced, renamed over the log, and the directory fsynced, so a crash at any
//! point leaves either the old log or the new one.

use crossbeam_channel::{Receiver, Sender};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or a file in it could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn ctx(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Batches of lease log lines with their sequence numbers, to the writer thread.
pub type Batches = Sender<Vec<(u64, String)>>;

pub struct LeaseLog {
    path: PathBuf,
}

impl LeaseLog {
    /// The log `leases.log` in `dir` (created, mode 0700, if missing).
    pub fn new(dir: &Path) -> Result<LeaseLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(ctx(dir))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        Ok(LeaseLog { path: dir.join("leases.log") })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every line of the log (none if it does not exist yet).
    pub fn read(&self) -> Result<Vec<String>, StoreError> {
        match File::open(&self.path) {
            Ok(f) => BufReader::new(f).lines().map(|l| l.map_err(ctx(&self.path))).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ctx(&self.path)(e)),
        }
    }

    /// Replaces the log with `lines`, atomically and durably.
    pub fn rewrite(&self, lines: &[String]) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("log.tmp");
        let mut f = File::create(&tmp).map_err(ctx(&tmp))?;
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        f.write_all(text.as_bytes()).map_err(ctx(&tmp))?;
        f.sync_all().map_err(ctx(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(ctx(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(ctx(dir))?;
        }
        Ok(())
    }

    fn open_append(&self) -> Result<File, StoreError> {
        OpenOptions::new().create(true).append(true).open(&self.path).map_err(ctx(&self.path))
    }

    /// Starts the writer thread. Batches of `(seq, line)` go in; after each batch is written and
    /// fsynced, the highest seq comes out on the returned channel and `wake` is called.
    pub fn spawn_writer(self, wake: impl Fn() + Send + 'static) -> Result<(Batches, Receiver<u64>), StoreError> {
        let mut file = self.open_append()?;
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<(u64, String)>>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<u64>();
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("lease-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Group commit: everything queued meanwhile goes in the same fsync.
                    let mut batch = first;
                    while let Ok(more) = rx.try_recv() {
                        batch.extend(more);
                    }
                    let Some(max) = batch.iter().map(|(s, _)| *s).max() else { continue };
                    let mut text = String::new();
                    for (_, l) in &batch {
                        text.push_str(l);
                        text.push('\n');
                    }
                    // A lease must never be acknowledged unless it is on disk: on a write
                    // error, nothing is reported and the clients retry (their ACKs stay held).
                    match file.write_all(text.as_bytes()).and_then(|_| file.sync_data()) {
                        Ok(()) => {
                            if done_tx.send(max).is_err() {
                                return;
                            }
                            wake();
                        }
                        Err(e) => tracing::error!(path = %path.display(), "lease log write failed, leases not acknowledged: {e}"),
                    }
                }
            })
            .map_err(ctx(&self.path))?;
        Ok((tx, done_rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_read_and_group_commit() {
        let dir = std::env::temp_dir().join(format!("vrouter-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = LeaseLog::new(&dir).unwrap();
        assert!(log.read().unwrap().is_empty());
        log.rewrite(&["a".into(), "b".into()]).unwrap();
        assert_eq!(log.read().unwrap(), vec!["a", "b"]);
        let (tx, done) = LeaseLog::new(&dir).unwrap().spawn_writer(|| {}).unwrap();
        tx.send(vec![(1, "c".into()), (2, "d".into())]).unwrap();
        tx.send(vec![(3, "e".into())]).unwrap();
        let mut got = 0;
        while got < 3 {
            got = done.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        }
        assert_eq!(log.read().unwrap(), vec!["a", "b", "c", "d", "e"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
