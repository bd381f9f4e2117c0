//! Durable state on disk: the DHCP lease log in `state_dir`.
//!
//! The log is append-only text, one record per line. A writer thread takes batches of records
//! from the datapath, appends them and fsyncs once per batch (group commit), and only then
//! reports exactly which sequence numbers it made durable ([`StoreEvent::Durable`]), so the
//! datapath never sends a DHCP ACK for a lease that a crash could lose.
//!
//! Invariants:
//! - Records reach the disk in sequence order and none is skipped: a batch whose write or
//!   fsync fails is kept and retried (with backoff, new records joining it) until it is on
//!   disk, so `Durable { first, last }` is always the next contiguous range.
//! - The file never holds a torn line in the middle: after a failed write the file is cut back
//!   to its last durable length before anything else is appended (if it cannot be cut, it is
//!   reopened and cut again on the next try).
//! - While writes fail the datapath is told ([`StoreEvent::Failing`], once per distinct error)
//!   and told again when they succeed ([`StoreEvent::Healthy`]).
//! - The log stays proportional to the live leases: when the lines appended since the last
//!   compaction exceed a bound, the writer (never the datapath thread) writes the live records
//!   it keeps track of to a temporary file, fsyncs it, renames it over the log and fsyncs the
//!   directory, so a crash at any point leaves either the old log or the new one.
//!
//! At start the log is read back (a torn last line, from a crash mid-write, is skipped by the
//! decoder) and rewritten compactly the same way.

use crate::dhcp::LogLine;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Batches of lease log lines, to the writer thread.
pub type Batches = Sender<Vec<LogLine>>;

/// What the writer thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Records `first..=last` are on disk (written and fsynced).
    Durable { first: u64, last: u64 },
    /// Writing failed (the error as text); the records are kept and retried.
    Failing(String),
    /// Writing succeeds again after a failure.
    Healthy,
    /// The log was compacted to this many lines while running.
    Compacted(usize),
}

/// How the writer retries and when it compacts.
#[derive(Debug, Clone, Copy)]
pub struct WriterOpts {
    /// The first retry after a failure; doubled each time up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Compact once the lines appended since the last compaction exceed this and twice the
    /// live records.
    pub compact_after: usize,
}

impl Default for WriterOpts {
    fn default() -> Self {
        WriterOpts { backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2), compact_after: 16_384 }
    }
}

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
    pub fn rewrite<'a>(&self, lines: impl IntoIterator<Item = &'a str>) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("log.tmp");
        let r = (|| {
            let mut f = File::create(&tmp).map_err(ctx(&tmp))?;
            let mut text = String::new();
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            f.write_all(text.as_bytes()).map_err(ctx(&tmp))?;
            f.sync_all().map_err(ctx(&tmp))?;
            std::fs::rename(&tmp, &self.path).map_err(ctx(&self.path))?;
            if let Some(dir) = self.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(ctx(dir))?;
            }
            Ok(())
        })();
        if r.is_err() {
            // A half-written temporary file must not hold on to the space it took.
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn open_append(&self) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(&self.path)
    }

    /// Starts the writer thread; `live` are the records the log holds now (what start-up
    /// compaction wrote). Batches go in; [`StoreEvent`]s come out, each followed by `wake`.
    pub fn spawn_writer(
        self,
        live: Vec<LogLine>,
        opts: WriterOpts,
        wake: impl Fn() + Send + 'static,
    ) -> Result<(Batches, Receiver<StoreEvent>), StoreError> {
        let file = self.open_append().map_err(ctx(&self.path))?;
        // Appends start after the last whole line: a torn tail (a crash mid-write, when the
        // start-up compaction could not run) must not have the next record glued onto it.
        let good = whole_lines_len(&self.path).map_err(ctx(&self.path))?;
        file.set_len(good).map_err(ctx(&self.path))?;
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<LogLine>>();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<StoreEvent>();
        let live = live.into_iter().map(|l| (l.key, l.line)).collect();
        let mut w = Writer { log: self, file: Some(file), good, live, appended: 0, opts, failing: None, dir_unsynced: false };
        let path = w.log.path.clone();
        std::thread::Builder::new()
            .name("lease-log".into())
            .spawn(move || {
                let report = |e: StoreEvent| {
                    let ok = ev_tx.send(e).is_ok();
                    wake();
                    ok
                };
                w.run(&rx, &report);
            })
            .map_err(ctx(&path))?;
        Ok((tx, ev_rx))
    }
}

/// The writer thread's state.
struct Writer {
    log: LeaseLog,
    /// `None` after a failure left the file in a state we could not repair in place.
    file: Option<File>,
    /// The log's length after its last durable write: nothing past it is trusted.
    good: u64,
    /// Per address (network name and address), the line that keeps it taken.
    live: HashMap<String, String>,
    /// Lines appended since the last compaction.
    appended: usize,
    opts: WriterOpts,
    /// The error writes fail with, while they do.
    failing: Option<String>,
    /// A compaction failed after (maybe) renaming: the directory must be fsynced before any
    /// record is reported durable, or a crash could bring the old log back without them.
    dir_unsynced: bool,
}

/// The length of the file up to and including its last newline.
fn whole_lines_len(path: &Path) -> io::Result<u64> {
    match std::fs::read(path) {
        Ok(b) => Ok(b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i as u64 + 1)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Vec<LogLine>>, report: &dyn Fn(StoreEvent) -> bool) {
        let mut pending: Vec<LogLine> = Vec::new();
        let mut backoff = self.opts.backoff;
        loop {
            if pending.is_empty() {
                match rx.recv() {
                    Ok(b) => pending.extend(b),
                    Err(_) => return,
                }
            } else {
                // Retrying: wait out the backoff, taking new records meanwhile.
                match rx.recv_timeout(backoff) {
                    Ok(b) => pending.extend(b),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // Group commit: everything queued meanwhile goes in the same fsync.
            while let Ok(more) = rx.try_recv() {
                pending.extend(more);
            }
            if pending.is_empty() {
                continue;
            }
            match self.append(&pending) {
                Ok(()) => {
                    backoff = self.opts.backoff;
                    let (first, last) = (pending[0].seq, pending[pending.len() - 1].seq);
                    for l in pending.drain(..) {
                        if l.live {
                            self.live.insert(l.key, l.line);
                        } else {
                            self.live.remove(&l.key);
                        }
                        self.appended += 1;
                    }
                    if self.failing.take().is_some() {
                        tracing::warn!(path = %self.log.path.display(), "lease log writes again; leases are acknowledged");
                        if !report(StoreEvent::Healthy) {
                            return;
                        }
                    }
                    if !report(StoreEvent::Durable { first, last }) {
                        return;
                    }
                    if self.appended > self.opts.compact_after.max(2 * self.live.len()) {
                        if let Some(n) = self.compact() {
                            if !report(StoreEvent::Compacted(n)) {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                    let msg = e.to_string();
                    if self.failing.as_deref() != Some(msg.as_str()) {
                        tracing::error!(path = %self.log.path.display(), records = pending.len(), "lease log write failed, new leases are not acknowledged until it succeeds: {msg}");
                        self.failing = Some(msg.clone());
                        if !report(StoreEvent::Failing(msg)) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Appends the lines and fsyncs; on failure cuts the file back to its last durable length.
    fn append(&mut self, lines: &[LogLine]) -> io::Result<()> {
        if self.dir_unsynced {
            if let Some(dir) = self.log.path.parent() {
                File::open(dir).and_then(|d| d.sync_all())?;
            }
            self.dir_unsynced = false;
        }
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.line);
            text.push('\n');
        }
        let file = match self.file.take() {
            Some(f) => f,
            None => {
                let f = self.log.open_append()?;
                // Whatever a failed write left past the durable end goes first.
                f.set_len(self.good)?;
                f
            }
        };
        let mut f = file;
        match f.write_all(text.as_bytes()).and_then(|_| f.sync_data()) {
            Ok(()) => {
                self.good += text.len() as u64;
                self.file = Some(f);
                Ok(())
            }
            Err(e) => {
                // A torn line must not stay for the next append to be glued onto; if the cut
                // fails too, the file is reopened and cut before the next try.
                if f.set_len(self.good).is_ok() {
                    self.file = Some(f);
                }
                Err(e)
            }
        }
    }

    /// Rewrites the log as its live records (off the datapath thread). `None` if it could not
    /// (the old log stays and is appended to; compaction is tried again later).
    fn compact(&mut self) -> Option<usize> {
        let mut lines: Vec<&str> = self.live.values().map(String::as_str).collect();
        lines.sort_unstable();
        let n = lines.len();
        let len: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let r = self.log.rewrite(lines);
        // Either way, wait for as many new lines again before the next attempt.
        self.appended = 0;
        match r {
            Ok(()) => {
                // The handle points at the file the rename replaced: appends go to the new one,
                // opened (and cut to its known length) on the next write.
                self.file = None;
                self.good = len;
                tracing::info!(path = %self.log.path.display(), lines = n, "lease log compacted");
                Some(n)
            }
            Err(e) => {
                // Failing after the rename (the directory's fsync) leaves the new log in place:
                // reopen by name either way; both files end on a durable whole line.
                self.file = None;
                self.dir_unsynced = true;
                if let Ok(n) = whole_lines_len(&self.log.path) {
                    self.good = n;
                }
                tracing::warn!(path = %self.log.path.display(), "lease log compaction failed, appending to the log as it is: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, key: &str, live: bool) -> LogLine {
        LogLine { seq, key: key.into(), line: format!("{} {key} {seq}", if live { "lease" } else { "release" }), live }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vrouter-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn rewrite_read_and_group_commit() {
        let dir = dir("gc");
        let log = LeaseLog::new(&dir).unwrap();
        assert!(log.read().unwrap().is_empty());
        log.rewrite(["a", "b"]).unwrap();
        assert_eq!(log.read().unwrap(), vec!["a", "b"]);
        let (tx, ev) = LeaseLog::new(&dir).unwrap().spawn_writer(Vec::new(), WriterOpts::default(), || {}).unwrap();
        tx.send(vec![line(1, "n 1", true), line(2, "n 2", true)]).unwrap();
        tx.send(vec![line(3, "n 3", true)]).unwrap();
        let mut next = 1;
        while next <= 3 {
            match ev.recv_timeout(Duration::from_secs(5)).unwrap() {
                StoreEvent::Durable { first, last } => {
                    assert_eq!(first, next, "ranges are contiguous");
                    next = last + 1;
                }
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(log.read().unwrap(), vec!["a", "b", "lease n 1 1", "lease n 2 2", "lease n 3 3"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write that fails half-way (the file cannot grow past a limit, as on a full disk) is
    /// cut back, retried, and reported durable only once the whole batch is on disk; the log
    /// never holds a torn line.
    #[test]
    fn a_failed_write_is_cut_back_and_retried_until_durable() {
        let dir = dir("fail");
        let log = LeaseLog::new(&dir).unwrap();
        log.rewrite(["lease n 0 0"]).unwrap();
        let path = log.path().to_path_buf();
        let opts = WriterOpts { backoff: Duration::from_millis(5), max_backoff: Duration::from_millis(20), compact_after: 1 << 20 };
        let mut w = Writer { log, file: None, good: 12, live: HashMap::new(), appended: 0, opts, failing: None, dir_unsynced: false };
        // RLIMIT_FSIZE would kill the process with SIGXFSZ; a read-only handle fails the same
        // way as a full disk does for the writer: the write errs and nothing durable is lost.
        w.file = Some(File::open(&path).unwrap());
        let batch = vec![line(1, "n 1", true), line(2, "n 2", true)];
        assert!(w.append(&batch).is_err());
        // Simulate a torn write the failed call could have left, then retry.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"lease n 1 ").unwrap();
        w.file = None;
        w.append(&batch).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "lease n 0 0\nlease n 1 1\nlease n 2 2\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Running compaction: the log stays bounded by the live records and holds exactly them.
    #[test]
    fn the_log_is_compacted_while_running() {
        let dir = dir("compact");
        let log = LeaseLog::new(&dir).unwrap();
        log.rewrite(["lease n 9 0"]).unwrap();
        let opts = WriterOpts { compact_after: 50, ..WriterOpts::default() };
        let (tx, ev) = LeaseLog::new(&dir).unwrap().spawn_writer(vec![line(0, "n 9", true)], opts, || {}).unwrap();
        let mut seq = 0;
        let mut compacted = 0;
        for round in 0..40u64 {
            let mut b = Vec::new();
            for k in 0..5 {
                seq += 1;
                // Addresses 0..5 renewed over and over; address 9 released in round 10.
                b.push(line(seq, &format!("n {k}"), true));
            }
            if round == 10 {
                seq += 1;
                b.push(line(seq, "n 9", false));
            }
            tx.send(b).unwrap();
            loop {
                match ev.recv_timeout(Duration::from_secs(5)).unwrap() {
                    StoreEvent::Durable { last, .. } if last == seq => break,
                    StoreEvent::Compacted(n) => {
                        compacted += 1;
                        assert!(n <= 6);
                    }
                    _ => {}
                }
            }
            let lines = log.read().unwrap();
            assert!(lines.len() <= 60, "round {round}: {} lines", lines.len());
        }
        drop(tx);
        assert!(compacted >= 2, "compacted {compacted} times");
        // Every address's latest line is there, and the released one is gone.
        let lines = log.read().unwrap();
        for k in 0..5 {
            let last = lines.iter().rev().find(|l| l.starts_with(&format!("lease n {k} "))).unwrap();
            assert_eq!(last, &format!("lease n {k} {}", seq - 4 + k));
        }
        assert!(!lines.iter().any(|l| l.contains("n 9")), "{lines:?}");
        assert!(!dir.join("leases.log.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A log with a torn last line (the start-up compaction could not run) gets new records on
    /// a line of their own.
    #[test]
    fn appends_never_glue_onto_a_torn_tail() {
        let dir = dir("torn");
        let log = LeaseLog::new(&dir).unwrap();
        std::fs::write(log.path(), "lease n 1 1\nlease n 2").unwrap();
        let (tx, ev) = LeaseLog::new(&dir).unwrap().spawn_writer(Vec::new(), WriterOpts::default(), || {}).unwrap();
        tx.send(vec![line(5, "n 5", true)]).unwrap();
        assert_eq!(ev.recv_timeout(Duration::from_secs(5)).unwrap(), StoreEvent::Durable { first: 5, last: 5 });
        assert_eq!(log.read().unwrap(), vec!["lease n 1 1", "lease n 5 5"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
