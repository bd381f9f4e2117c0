//! Reload and apply, the control side: a new config is read, validated and built into the
//! datapath's tables here, on the control thread, off the datapath thread; the loop then only
//! opens the devices the change adds and swaps the tables in between two batches
//! (`io::reload`). `ctl reload`, SIGHUP and `ctl apply` all take this one path.
//!
//! Invariants: one change at a time (the lock on [`Applier`] is held from staging to the
//! loop's answer); the slots (`build::Numbering`) of the running config are the base of the
//! next, so names keep their slots; a refused change leaves the running config, the config
//! file and the slots exactly as they were; `ctl apply` writes the file (temp file, fsync,
//! rename, fsync of the directory) only after the loop applied the change, so a restart comes
//! back with what is running.

use super::{Envelope, Request, Response};
use crate::build::{self, Numbering};
use crate::config::schema::Config;
use crate::config::ConfigError;
use crate::datapath::DatapathConfig;
use crossbeam_channel::Sender;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What is running: the config and its slots.
pub struct Current {
    /// The file's config with the VTEPs EVPN learned as VXLAN peers (`build::with_learned`).
    pub config: Config,
    /// The file's config alone (what `diff` compares against).
    pub base: Config,
    pub hash: String,
    /// VTEPs learned over BGP EVPN, with their VNIs.
    pub learned: Learned,
    pub ids: Numbering,
    /// The config file (`reload` reads it, `apply` replaces it).
    pub path: PathBuf,
}

/// A validated config, built, on its way to the loop.
pub struct Staged {
    pub config: Config,
    pub base: Config,
    pub learned: Learned,
    pub hash: String,
    pub ids: Numbering,
    /// The slots it was built on (the running ones).
    pub prev: Numbering,
    pub dp: DatapathConfig,
    pub services: build::ServiceSpec,
    pub vms: Vec<crate::router::meta::VmSpec>,
    /// What changed, for the reply.
    pub counts: Value,
    pub changed: usize,
    /// Its devices, opened already; shared with the control side, which closes them if it
    /// gives up on the change (so a retry can open the same taps again at once).
    pub devices: std::sync::Arc<Mutex<Option<crate::io::reload::DevicePlan>>>,
    /// Who has the change: [`PENDING`] until the loop takes it ([`TAKEN`]) or the control side
    /// gives up waiting ([`ABANDONED`]); whoever moves it first decides, so a change the
    /// caller was told failed is never applied later.
    pub claim: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

/// VTEPs learned over EVPN and the VNIs each carries.
pub type Learned = std::collections::BTreeMap<std::net::Ipv4Addr, crate::bgp::VtepVnis>;

pub const PENDING: u8 = 0;
pub const TAKEN: u8 = 1;
pub const ABANDONED: u8 = 2;

impl Staged {
    /// The loop's side of the claim: true if it may apply the change.
    pub fn take(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.claim.compare_exchange(PENDING, TAKEN, SeqCst, SeqCst).is_ok()
    }
}

/// The control side's reload state, shared by the connection threads and the SIGHUP thread.
pub struct Applier {
    current: Mutex<Current>,
}

/// How long a change may wait for the loop to take it.
const LOOP_WAIT: Duration = Duration::from_secs(10);

fn invalid(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid(d) => {
            let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
            format!("{}\nrefused: the running config keeps serving", lines.join("\n"))
        }
        e => format!("{e}\nrefused: the running config keeps serving"),
    }
}

impl Applier {
    pub fn new(config: Config, hash: String, path: PathBuf) -> Self {
        let ids = Numbering::assign(None, &config);
        Applier { current: Mutex::new(Current { base: config.clone(), config, hash, learned: Learned::new(), ids, path }) }
    }

    /// EVPN learned a new set of VTEPs: they become (or stop being) VXLAN peer ports through
    /// the same staged apply as a config change. The config file is not touched.
    pub fn set_learned(&self, learned: Learned, loop_tx: &Sender<Envelope>, wake: &dyn Fn()) -> Response {
        let t = Instant::now();
        let Ok(mut cur) = self.current.lock() else { return Response::err("reload state poisoned") };
        if cur.learned == learned {
            return Response::ok(json!({"changes": 0}));
        }
        let (base, hash) = (cur.base.clone(), cur.hash.clone());
        match Self::stage_built(&cur, base, hash, learned) {
            Ok(st) => Self::commit(&mut cur, st, None, loop_tx, wake, t),
            Err(e) => Response::err(e),
        }
    }

    /// The slots the loop starts with.
    pub fn ids(&self) -> Numbering {
        self.current.lock().map(|c| c.ids.clone()).unwrap_or_default()
    }

    /// Builds `text` (read from `shown` for messages) on the running config's slots.
    fn stage(cur: &Current, text: &str, shown: &Path) -> Result<Staged, String> {
        // Relative user_data_files are the config file's neighbours, wherever the text came from.
        let dir = cur.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let v = crate::config::parse_at(text, shown, dir).map_err(invalid)?;
        Self::stage_built(cur, v.config, v.hash, cur.learned.clone())
    }

    /// Builds a validated file config `base`, with the VTEPs `learned` added, on the running
    /// config's slots.
    fn stage_built(cur: &Current, base: Config, hash: String, learned: Learned) -> Result<Staged, String> {
        let config = build::with_learned(base.clone(), &learned);
        let ids = Numbering::assign(Some(&cur.ids), &config);
        let changes = crate::config::diff::diff(&cur.config, &config);
        let counts = serde_json::to_value(crate::config::diff::counts(&changes)).unwrap_or_default();
        let devices = crate::io::reload::plan(&cur.config, &cur.ids, &config, &ids)?;
        Ok(Staged {
            devices: std::sync::Arc::new(Mutex::new(Some(devices))),
            dp: build::datapath_config(&config, &ids),
            services: build::services(&config, &ids),
            vms: build::metadata(&config, &ids),
            prev: cur.ids.clone(),
            ids,
            hash,
            counts,
            changed: changes.len(),
            config,
            base,
            learned,
            claim: Default::default(),
        })
    }

    /// `ctl diff`: what applying `text` would change, against the running config (built here,
    /// on the connection's thread: a large config never pauses forwarding to be compared).
    pub fn diff(&self, text: &str, shown: &str) -> Response {
        let Ok(cur) = self.current.lock() else { return Response::err("reload state poisoned") };
        let dir = cur.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match crate::config::parse_at(text, Path::new(shown), dir) {
            Ok(new) => {
                let changes = crate::config::diff::diff(&cur.base, &new.config);
                Response::ok(json!({"changes": changes, "counts": crate::config::diff::counts(&changes)}))
            }
            Err(ConfigError::Invalid(d)) => Response::err(d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
            Err(e) => Response::err(e.to_string()),
        }
    }

    /// `ctl reload` and SIGHUP: the config file, again.
    pub fn reload(&self, loop_tx: &Sender<Envelope>, wake: &dyn Fn()) -> Response {
        let t = Instant::now();
        let Ok(mut cur) = self.current.lock() else { return Response::err("reload state poisoned") };
        let text = match std::fs::read_to_string(&cur.path) {
            Ok(t) => t,
            Err(e) => return Response::err(format!("{}: {e}\nrefused: the running config keeps serving", cur.path.display())),
        };
        let path = cur.path.clone();
        match Self::stage(&cur, &text, &path) {
            Ok(st) => Self::commit(&mut cur, st, None, loop_tx, wake, t),
            Err(e) => Response::err(e),
        }
    }

    /// `ctl apply`: a whole config pushed over the socket (`shown`: where the client read it).
    pub fn apply(&self, text: &str, shown: &str, loop_tx: &Sender<Envelope>, wake: &dyn Fn()) -> Response {
        let t = Instant::now();
        let Ok(mut cur) = self.current.lock() else { return Response::err("reload state poisoned") };
        let st = match Self::stage(&cur, text, Path::new(shown)) {
            Ok(st) => st,
            Err(e) => return Response::err(e),
        };
        // Written (not yet in place) before the loop applies, so a disk that refuses the file
        // refuses the change too.
        let tmp = match write_temp(&cur.path, text) {
            Ok(p) => p,
            Err(e) => return Response::err(format!("{}: cannot write: {e}\nrefused: the running config keeps serving", cur.path.display())),
        };
        Self::commit(&mut cur, st, Some(tmp), loop_tx, wake, t)
    }

    fn commit(cur: &mut Current, st: Staged, tmp: Option<PathBuf>, loop_tx: &Sender<Envelope>, wake: &dyn Fn(), t: Instant) -> Response {
        let (config, ids, base, hash, learned) = (st.config.clone(), st.ids.clone(), st.base.clone(), st.hash.clone(), st.learned.clone());
        let build_ms = t.elapsed().as_secs_f64() * 1e3;
        let claim = st.claim.clone();
        let devices = st.devices.clone();
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        let env = Envelope { request: Request::Reload, reply: rtx, capture: None, staged: Some(Box::new(st)) };
        let sent = loop_tx.try_send(env);
        let resp = match sent {
            Err(_) => Response::err("datapath busy or stopping; nothing applied, the running config keeps serving"),
            Ok(()) => {
                wake();
                match rrx.recv_timeout(LOOP_WAIT) {
                    Ok(r) => r,
                    Err(_) => {
                        use std::sync::atomic::Ordering::SeqCst;
                        if claim.compare_exchange(PENDING, ABANDONED, SeqCst, SeqCst).is_ok() {
                            // Closes what the change opened (taps it created disappear).
                            drop(devices.lock().ok().and_then(|mut d| d.take()));
                            Response::err("datapath did not take the change in time; nothing applied, the running config keeps serving")
                        } else {
                            // The loop is applying it: its answer comes.
                            rrx.recv().unwrap_or_else(|_| Response::err("vrouter stopped while applying the change"))
                        }
                    }
                }
            }
        };
        if !resp.ok {
            if let Some(tmp) = tmp {
                let _ = std::fs::remove_file(tmp);
            }
            return resp;
        }
        cur.config = config;
        cur.ids = ids;
        cur.base = base;
        cur.hash = hash;
        cur.learned = learned;
        let mut data = resp.data.unwrap_or_else(|| json!({}));
        if let Some(tmp) = tmp {
            if let Err(e) = put_in_place(&tmp, &cur.path) {
                // Running, but a restart would come back with the old file: say so loudly.
                tracing::error!(path = %cur.path.display(), "applied, but the config file could not be replaced: {e}");
                data["warning"] = format!("applied, but {} could not be replaced ({e}): a restart would load the old config", cur.path.display()).into();
            } else {
                data["written"] = cur.path.display().to_string().into();
            }
        }
        data["build_ms"] = round(build_ms).into();
        data["total_ms"] = round(t.elapsed().as_secs_f64() * 1e3).into();
        Response::ok(data)
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// The file a config path names (a symlink's target: the link stays a link).
fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The text in a new file beside the config file, with the file's owner and mode (user data
/// may be in it: never more readable than the file it replaces), flushed to disk.
fn write_temp(path: &Path, text: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let path = real(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "config".into());
    let tmp = path.with_file_name(format!(".{name}.apply-{}", std::process::id()));
    let old = std::fs::metadata(&path).ok();
    // Never through whatever sits at the temp name (a stale file, or a planted symlink).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    if let Some(m) = &old {
        // The owner first (it may clear set-id bits), then the mode.
        let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(tmp)
}

/// Renames the temp file over `path` (its target, if a symlink) and makes the rename durable.
fn put_in_place(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let path = &real(path);
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// SIGHUP: a thread that runs the same reload as `ctl reload` for each signal.
pub fn on_sighup(applier: std::sync::Arc<Applier>, loop_tx: Sender<Envelope>, wake: impl Fn() + Send + 'static) -> std::io::Result<()> {
    use std::io::Read;
    let (mut rx, tx) = std::os::unix::net::UnixStream::pair()?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, tx)?;
    std::thread::Builder::new().name("sighup".into()).spawn(move || {
        let mut b = [0u8; 16];
        while rx.read(&mut b).is_ok_and(|n| n > 0) {
            let r = applier.reload(&loop_tx, &wake);
            match (r.ok, r.error) {
                (true, _) => tracing::info!(result = %r.data.unwrap_or_default(), "SIGHUP: config reloaded"),
                (false, e) => tracing::error!("SIGHUP: reload refused: {}", e.unwrap_or_default()),
            }
        }
    })?;
    Ok(())
}
