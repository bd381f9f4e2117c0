//! Loading and validating the account's TOML config.
//!
//! `load` reads the file, deserializes it into the schema (unknown keys are errors), runs every
//! cross-check, and returns either a [`Validated`] config with its warnings, or all problems found.
//! Every message carries the file, the line and the key path. Invariant: a `Validated` config has
//! unique names, MACs, IPs, ifnames, VLAN ids and VNIs, resolvable references, and addresses
//! inside their networks, so the datapath builder can index without checking again.

pub mod diff;
pub mod locate;
pub mod schema;
pub mod types;
mod validate;
pub use validate::parse_route_target;

use locate::{KeyPath, Locator};
pub use schema::Config;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem (or warning) in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// The key path, e.g. `port[1].mac`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.file.display(), l, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file was read but has problems; each names its line and key.
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// A config that passed every check, with the warnings worth printing.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: Config,
    pub path: PathBuf,
    pub warnings: Vec<Diagnostic>,
    /// A hash of the text it was read from (is the file on disk still the running config?).
    pub hash: String,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    let src = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&src, path)
}

/// Validates config text read from `path` (messages name it; `user_data_file` is relative to
/// its directory).
pub fn parse(src: &str, path: &Path) -> Result<Validated, ConfigError> {
    parse_at(src, path, path.parent().unwrap_or(Path::new(".")))
}

/// Validates config text; `path` names it in messages, `dir` is where relative
/// `user_data_file`s are (a config pushed by `ctl apply` is read as the config file it will be).
pub fn parse_at(src: &str, path: &Path, dir: &Path) -> Result<Validated, ConfigError> {
    let loc = Locator::new(src);
    let diag = |line: Option<usize>, key: String, message: String| Diagnostic {
        file: path.to_path_buf(),
        line,
        key,
        message,
    };
    let mut config: Config = match toml_edit::de::from_str(src) {
        Ok(c) => c,
        Err(e) => {
            let line = e.span().map(|r| loc.line_of(r.start));
            let key = match (e.span(), line) {
                (Some(r), _) if !loc.is_syntax_error() => loc.path_at(r.start).map(|p| p.to_string()),
                (_, Some(l)) => loc.key_on_line(l),
                _ => None,
            }
            .unwrap_or_else(|| "(top level)".into());
            let mut msg = e.message().trim().replace('\n', " ");
            if loc.is_syntax_error() {
                msg = format!("TOML syntax error: {msg}");
            }
            return Err(ConfigError::Invalid(vec![diag(line, key, msg)]));
        }
    };
    let mut out = validate::Report::default();
    validate::check(&config, &mut out);
    // User data: inline, or read from its file now (the file's size checked against the cap).
    let max = config.router.user_data_max;
    for (i, pt) in config.ports.iter_mut().enumerate() {
        pt.user_data_bytes = pt.user_data.as_ref().map(|u| u.as_bytes().to_vec());
        if let Some(f) = &pt.user_data_file {
            let at = crate::kp!("port", i, "user_data_file");
            match std::fs::read(dir.join(f)) {
                Ok(b) if b.len() > max => out.errors.push((at, format!("{}: {} bytes is over [router] user_data_max ({max})", f.display(), b.len()))),
                Ok(b) => pt.user_data_bytes = Some(b),
                Err(e) => out.errors.push((at, format!("{}: {e}", dir.join(f).display()))),
            }
        }
    }
    // WireGuard keys: read now, from files their owner alone may read.
    if let Some(wg) = config.wireguard.as_mut() {
        match read_key(&dir.join(&wg.private_key_file)) {
            Ok(k) => wg.private_key = Some(k),
            Err(m) => out.errors.push((crate::kp!("wireguard", "private_key_file"), m)),
        }
        let own = wg.private_key.map(|k| k.public());
        for (i, p) in wg.peer.iter_mut().enumerate() {
            if let (Some(own), Ok(k)) = (own, crate::vpn::Key::from_base64(&p.public_key)) {
                if own == k {
                    out.errors.push((crate::kp!("wireguard", "peer", i, "public_key"), "is the router's own public key".into()));
                }
            }
            if let Some(f) = &p.preshared_key_file {
                match read_key(&dir.join(f)) {
                    Ok(k) => p.preshared_key = Some(k),
                    Err(m) => out.errors.push((crate::kp!("wireguard", "peer", i, "preshared_key_file"), m)),
                }
            }
        }
    }
    let to_diag = |(p, m): (KeyPath, String)| diag(loc.line_of_path(&p), p.to_string(), m);
    let errors: Vec<Diagnostic> = out.errors.into_iter().map(to_diag).collect();
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    let warnings = out.warnings.into_iter().map(to_diag).collect();
    Ok(Validated { config, path: path.to_path_buf(), warnings, hash: crate::control::telemetry::fnv64(src.as_bytes()) })
}

/// A key file as `wg genkey` / `wg genpsk` write it: base64 of 32 bytes, readable by its
/// owner only (like wg-quick, which refuses to use a world-readable key with a warning; here
/// it is an error, since the file outlives any warning).
fn read_key(path: &Path) -> Result<crate::vpn::Key, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("{}: mode {:o} lets others read the key (chmod 600 it)", path.display(), meta.permissions().mode() & 0o777));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::vpn::Key::from_base64(&text).map_err(|m| format!("{}: {m}", path.display()))
}

impl Config {
    /// The state directory (leases): configured, or `/var/lib/vrouter/NAME`.
    pub fn state_dir(&self) -> PathBuf {
        self.router.state_dir.clone().unwrap_or_else(|| PathBuf::from(format!("/var/lib/vrouter/{}", self.router.name)))
    }

    /// The control socket path: configured, or `/run/vrouter/NAME.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.router
            .control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/vrouter/{}.sock", self.router.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_ports_is_an_error_not_a_wrapped_id() {
        let mut t = String::from("[router]\nname = \"t\"\n[[network]]\nname = \"n\"\ncidr = \"10.0.0.0/8\"\n");
        for i in 0..4097 {
            t += &format!("[[port]]\nname = \"p{i}\"\nnetwork = \"n\"\nkind = \"tap\"\nifname = \"t{i}\"\nport_security = false\n");
        }
        let Err(ConfigError::Invalid(d)) = parse(&t, Path::new("big.toml")) else { panic!("accepted") };
        assert!(d.iter().any(|d| d.key == "port" && d.message.contains("at most 4096")), "{d:?}");
    }

    #[test]
    fn coalesce_us_defaults_to_50_and_is_bounded() {
        let t = |extra: &str| format!("[router]\nname = \"t\"\n{extra}[[network]]\nname = \"n\"\ncidr = \"10.0.0.0/24\"\n");
        let ok = |extra: &str| parse(&t(extra), Path::new("c.toml")).map(|v| v.config.router.coalesce_us).map_err(|e| format!("{e:?}"));
        assert_eq!(ok(""), Ok(50));
        assert_eq!(ok("coalesce_us = 0\n"), Ok(0));
        assert_eq!(ok("coalesce_us = 1000\n"), Ok(1000));
        let Err(ConfigError::Invalid(d)) = parse(&t("coalesce_us = 1001\n"), Path::new("c.toml")) else { panic!("accepted") };
        assert!(d.iter().any(|d| d.key == "router.coalesce_us" && d.line == Some(3) && d.message.contains("at most 1000")), "{d:?}");
    }

    #[test]
    fn flow_cache_defaults_to_on_and_a_change_is_a_router_key_change() {
        let t = |extra: &str| format!("[router]\nname = \"t\"\n{extra}[[network]]\nname = \"n\"\ncidr = \"10.0.0.0/24\"\n");
        let on = parse(&t(""), Path::new("c.toml")).unwrap().config;
        let off = parse(&t("flow_cache = false\n"), Path::new("c.toml")).unwrap().config;
        assert!(on.router.flow_cache && !off.router.flow_cache);
        let d = diff::diff(&on, &off);
        assert!(format!("{d:?}").contains("flow_cache"), "{d:?}");
        assert!(parse(&t("flow_cache = \"no\"\n"), Path::new("c.toml")).is_err());
    }
}
