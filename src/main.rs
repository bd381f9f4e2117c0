//! The `vrouter` command: argument parsing and output formatting only; the library does the work.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vrouter::config::{self, ConfigError};
use vrouter::control::{self, Request, Table};

#[derive(Parser)]
#[command(name = "vrouter", version, about = "Userspace virtual switch/router: one process per cloud account")]
struct Cli {
    /// Log lines as text (default) or as JSON objects, one per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the account in the foreground until SIGINT/SIGTERM.
    Run {
        #[arg(short, long, default_value = "conf/vrouter.toml")]
        config: PathBuf,
        /// Also serve the control protocol on this virtio-serial port (the system VM's line
        /// to its host: /dev/virtio-ports/org.vrouter.ctl), besides the control socket.
        #[arg(long, value_name = "PORT")]
        control_serial: Option<PathBuf>,
    },
    /// Validate a config file and print a summary; exit 1 with file:line: messages on error.
    Check {
        #[arg(short, long, default_value = "conf/vrouter.toml")]
        config: PathBuf,
    },
    /// Talk to a running vrouter over its control socket.
    Ctl {
        /// Control socket (default: the only socket in /run/vrouter); before or after the
        /// subcommand.
        #[arg(short, long, global = true)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        cmd: CtlCmd,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Print a table.
    Show {
        table: ShowTable,
        /// `show metadata PORT`: only that VM.
        port: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What applying FILE (or `-`: stdin) would add, change and remove, by name; nothing is
    /// applied.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a VM's one-time password (read from stdin) for CloudStack's password server.
    SetPassword { port: String },
    /// Re-read the config file and apply the difference (also SIGHUP).
    Reload {
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate FILE (or `-`: stdin), apply it live and make it the config file (written
    /// atomically), so a restart comes back with it. Refused whole if invalid.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view: per-port packets/s and bit/s both ways, drops/s by reason, flows, leases
    /// and load-balancer backends, refreshed every second; q quits.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Run the health checks; exit 0 healthy, 1 degraded, 2 failing.
    Health {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Capture a port's frames as pcapng (several ports: comma-separated), until COUNT frames
    /// or interrupted; `-w -` (the default when stdout is not a terminal) streams to stdout.
    Capture {
        port: String,
        #[arg(short = 'w', long)]
        write: Option<PathBuf>,
        #[arg(short = 'c', long)]
        count: Option<u64>,
        #[arg(long, value_enum, default_value = "both")]
        direction: CaptureDir,
        /// Also the frames the pipeline dropped on the port, their reason in a pcapng comment.
        #[arg(long)]
        drops: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CaptureDir {
    In,
    Out,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum ShowTable {
    Ports,
    Fdb,
    Leases,
    Conntrack,
    Lb,
    Stats,
    Metadata,
    /// WireGuard peers: endpoint, last handshake, bytes, drops.
    Vpn,
    /// BGP EVPN sessions: state, uptime, routes in and out, errors.
    Bgp,
    /// EVPN per VNI: the flood list of VTEPs, remote MACs, local MACs advertised.
    Evpn,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("VROUTER_LOG").ok().and_then(|s| s.parse().ok()).unwrap_or(tracing::Level::INFO);
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_max_level(filter).with_writer(std::io::stderr).with_target(false);
    match cli.log_format {
        LogFormat::Json => fmt.json().init(),
        // NO_COLOR (no-color.org): a serial console is a terminal whose log ends up in a file.
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()).init(),
    }
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vrouter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_or_report(path: &Path) -> Result<Option<config::Validated>> {
    match config::load(path) {
        Ok(v) => {
            for w in &v.warnings {
                eprintln!("{}:{}: warning: {}: {}", w.file.display(), w.line.unwrap_or(0), w.key, w.message);
            }
            Ok(Some(v))
        }
        Err(ConfigError::Invalid(diags)) => {
            for d in diags {
                eprintln!("{d}");
            }
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Check { config } => {
            let Some(v) = load_or_report(&config)? else { return Ok(ExitCode::FAILURE) };
            let c = &v.config;
            println!(
                "{}: ok: router {}, {} network(s), {} port(s), {} uplink(s), {} warning(s)",
                config.display(),
                c.router.name,
                c.networks.len(),
                c.ports.len(),
                c.uplinks.len(),
                v.warnings.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { config, control_serial } => {
            let Some(v) = load_or_report(&config)? else { return Ok(ExitCode::FAILURE) };
            vrouter::io::run(&v, control_serial.as_deref()).context("vrouter run")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ctl { socket, cmd } => {
            let socket = match socket {
                Some(s) => s,
                None => default_socket()?,
            };
            match cmd {
                CtlCmd::Diff { file, json } => {
                    let (config, path) = read_config_arg(&file)?;
                    let Some(data) = refused_is_failure(control::request(&socket, &Request::Diff { config, path }))? else {
                        return Ok(ExitCode::FAILURE);
                    };
                    if json {
                        println!("{}", serde_json::to_string_pretty(&data)?);
                    } else {
                        let rows = data["changes"].as_array().cloned().unwrap_or_default();
                        if rows.is_empty() {
                            println!("no changes");
                        } else {
                            print!("{}", table(&rows, &["op", "kind", "id"]));
                        }
                    }
                }
                CtlCmd::SetPassword { port } => {
                    let mut pw = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut pw)?;
                    let pw = pw.trim_end_matches(['\n', '\r']).to_string();
                    if pw.is_empty() || pw.len() > 256 || pw.contains(['\n', '\r']) {
                        bail!("the password (one line on stdin, at most 256 bytes) is empty or not one line");
                    }
                    control::request(&socket, &Request::SetPassword { port: port.clone(), password: pw })?;
                    println!("password set for {port}: served once to the VM, then forgotten");
                }
                CtlCmd::Show { table, port, json } => {
                    let t = match table {
                        ShowTable::Ports => Table::Ports,
                        ShowTable::Fdb => Table::Fdb,
                        ShowTable::Leases => Table::Leases,
                        ShowTable::Conntrack => Table::Conntrack,
                        ShowTable::Lb => Table::Lb,
                        ShowTable::Stats => Table::Stats,
                        ShowTable::Metadata => Table::Metadata,
                        ShowTable::Vpn => Table::Vpn,
                        ShowTable::Bgp => Table::Bgp,
                        ShowTable::Evpn => Table::Evpn,
                    };
                    let data = if t == Table::Conntrack {
                        fetch_pages(&socket)?
                    } else {
                        control::request(&socket, &Request::Show { table: t, offset: None })?
                    };
                    let data = match (&port, t) {
                        (Some(p), Table::Metadata) => {
                            let mut d = data;
                            if let Some(v) = d.get_mut("vms").and_then(Value::as_array_mut) {
                                v.retain(|r| r["port"] == p.as_str());
                            }
                            d
                        }
                        (Some(_), _) => bail!("a PORT filter is for `show metadata` only"),
                        (None, _) => data,
                    };
                    if json {
                        println!("{}", serde_json::to_string_pretty(&data)?);
                    } else {
                        print!("{}", render(t, &data));
                    }
                }
                CtlCmd::Top { interval } => top(&socket, interval)?,
                CtlCmd::Health { json } => {
                    let data = control::request(&socket, &Request::Health)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&data)?);
                    } else {
                        let rows = data["checks"].as_array().cloned().unwrap_or_default();
                        print!("{}", table(&rows, &["check", "status", "detail"]));
                        println!("overall: {}", cell(&data["status"]));
                    }
                    return Ok(ExitCode::from(match data["status"].as_str() {
                        Some("ok") => 0,
                        Some("degraded") => 1,
                        _ => 2,
                    }));
                }
                CtlCmd::Reload { json } | CtlCmd::Apply { json, .. } => {
                    let req = match &cmd {
                        CtlCmd::Apply { file, .. } => {
                            let (config, path) = read_config_arg(file)?;
                            Request::Apply { config, path }
                        }
                        _ => Request::Reload,
                    };
                    let Some(data) = refused_is_failure(control::request(&socket, &req))? else {
                        return Ok(ExitCode::FAILURE);
                    };
                    if json {
                        println!("{}", serde_json::to_string_pretty(&data)?);
                    } else {
                        println!("{}", applied_summary(&data));
                    }
                }
                CtlCmd::Capture { port, write, count, direction, drops } => {
                    use std::io::IsTerminal;
                    let direction = match direction {
                        CaptureDir::In => control::capture::Direction::In,
                        CaptureDir::Out => control::capture::Direction::Out,
                        CaptureDir::Both => control::capture::Direction::Both,
                    };
                    let to_stdout = write.as_ref().is_none_or(|w| w.as_os_str() == "-");
                    if to_stdout && std::io::stdout().is_terminal() {
                        bail!("pcapng is binary: give -w FILE, or pipe it (-w - | tcpdump -r -)");
                    }
                    let (mut r, _) = control::open_stream(&socket, &Request::Capture { port, count, direction, drops })?;
                    let sum = match &write {
                        Some(w) if w.as_os_str() != "-" => {
                            let mut f = std::io::BufWriter::new(std::fs::File::create(w).with_context(|| w.display().to_string())?);
                            control::capture::receive(&mut r, &mut f)
                        }
                        _ => control::capture::receive(&mut r, &mut std::io::stdout().lock()),
                    };
                    match sum {
                        Ok(s) if s.lost > 0 => eprintln!("{} frame(s) captured, {} lost (the queue was full: the reader is too slow)", s.captured, s.lost),
                        Ok(s) => eprintln!("{} frame(s) captured, 0 lost", s.captured),
                        // The reader of a pipe went away (tcpdump -c): a normal end.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                        Err(e) => bail!("capture: {e}"),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The terminal in raw mode (keys arrive one by one, unechoed) until dropped.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn new() -> RawTerminal {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails (not a terminal).
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to our termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return RawTerminal(None);
        }
        let mut raw = t;
        // ISIG off too: Ctrl-C arrives as a key (and quits), so Drop restores the terminal.
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; TCSANOW applies it at once.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        RawTerminal(Some(t))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Waits up to `ms` for a key on stdin; true if it was `q` (or stdin closed).
fn quit_key(ms: i32) -> bool {
    let mut p = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the call.
    if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
        return false;
    }
    let mut b = [0u8; 16];
    // SAFETY: reads into our buffer, at most its length.
    let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
    n == 0 || b[..n.max(0) as usize].iter().any(|&c| c == b'q' || c == b'Q' || c == 3)
}

/// `ctl top`: samples the router every `interval` seconds and redraws until q.
fn top(socket: &Path, interval: f64) -> Result<()> {
    use vrouter::control::top::{render, Sample};
    let _raw = RawTerminal::new();
    let clock = std::time::Instant::now();
    let sample = || -> Result<Sample> {
        let stats = control::request(socket, &Request::Show { table: Table::Stats, offset: None })?;
        let leases = control::request(socket, &Request::Show { table: Table::Leases, offset: None }).ok();
        let lb = control::request(socket, &Request::Show { table: Table::Lb, offset: None }).ok();
        Ok(Sample::from_json(clock.elapsed().as_secs_f64(), &stats, leases.as_ref(), lb.as_ref()))
    };
    let title = socket.display().to_string();
    let mut prev = sample()?;
    let ms = (interval.clamp(0.1, 60.0) * 1000.0) as i32;
    loop {
        if quit_key(ms) {
            break;
        }
        let cur = sample()?;
        let screen = render(&title, &prev, &cur).replace('\n', "\r\n");
        print!("\x1b[H\x1b[2J{screen}");
        use std::io::Write;
        std::io::stdout().flush()?;
        prev = cur;
    }
    println!();
    Ok(())
}

/// Reads the conntrack table page by page (each page is bounded work for the datapath).
fn fetch_pages(socket: &Path) -> Result<Value> {
    let mut flows = Vec::new();
    let mut offset = None;
    let mut head;
    loop {
        let mut page = control::request(socket, &Request::Show { table: Table::Conntrack, offset })?;
        if let Some(Value::Array(rows)) = page.get_mut("flows").map(Value::take) {
            flows.extend(rows);
        }
        offset = page.get("next").and_then(Value::as_u64).map(|n| n as usize);
        head = page;
        if offset.is_none() {
            break;
        }
    }
    let mut out = serde_json::json!({"count": head["count"], "max": head["max"]});
    out["flows"] = Value::Array(flows);
    Ok(out)
}

fn default_socket() -> Result<PathBuf> {
    let dir = Path::new("/run/vrouter");
    let socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "sock")).collect())
        .unwrap_or_default();
    let list = socks.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no -s SOCKET given and no control socket in {} (is vrouter running? its config's control_socket says where)", dir.display()),
        _ => bail!("no -s SOCKET given and several vrouters run: {list}; pass one with -s"),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.contains_key("network") && o.contains_key("vlan") => {
            format!("{}:{}", cell(&o["network"]), cell(&o["vlan"]))
        }
        other => other.to_string(),
    }
}

fn table(rows: &[Value], cols: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|c| cell(&r[*c])).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let line = |vals: Vec<&str>| {
        let s: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        s.join("  ").trim_end().to_string() + "\n"
    };
    out += &line(cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>().iter().map(|s| s.as_str()).collect());
    for r in &cells {
        out += &line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

fn render(t: Table, data: &Value) -> String {
    let empty = Vec::new();
    match t {
        Table::Ports => {
            let rows: Vec<Value> = data.as_array().unwrap_or(&empty).iter().map(|r| {
                let mut r = r.clone();
                if r["mode"] == "trunk" {
                    r["network"] = r["networks"].clone();
                }
                r
            }).collect();
            table(&rows, &["name", "kind", "ifname", "state", "mode", "network", "offload", "macs_learned", "rx_frames", "tx_frames", "drops"])
        }
        Table::Fdb => table(data.as_array().unwrap_or(&empty), &["network", "mac", "port", "type", "age_secs"]),
        Table::Stats => {
            let ports = data["ports"].as_array().unwrap_or(&empty);
            let lat = |k: &str| {
                let h = &data["latency"][k];
                format!("p50 {} / p99 {} / max {} ns over {}", h["p50_ns"], h["p99_ns"], h["max_ns"], h["count"])
            };
            let mut out = format!(
                "uptime {}s, {} MAC entries\ntotals: rx {} frames / {} bytes, tx {} frames / {} bytes, {} software-segmented, {} coalesced, drops {}\n\
                 latency: per frame (decision + writes or queueing) {}; per write {}\n                 small-frame bursts to taps by {}: {} bursts, {} frames, p50 {} / p99 {} / max {} frames\n                 receive coalescing: {} pauses, {} ms of continuous small UDP input\n\
                 routed {} packets, {} of them by the flow cache ({} fills)\n\n",
                data["uptime_secs"], data["fdb_entries"], data["totals"]["rx_frames"], data["totals"]["rx_bytes"],
                data["totals"]["tx_frames"], data["totals"]["tx_bytes"], data["totals"]["tx_sw_segmented"],
                data["totals"]["tx_coalesced"], cell(&data["totals"]["drops"]), lat("frame"), lat("write"),
                data["latency"]["tap_io"].as_str().unwrap_or("?"), data["latency"]["tx_burst"]["count"],
                data["latency"]["tx_burst"]["frames"], data["latency"]["tx_burst"]["p50"], data["latency"]["tx_burst"]["p99"],
                data["latency"]["tx_burst"]["max"], data["latency"]["rx_coalesce"]["pauses"], data["latency"]["rx_coalesce"]["busy_windows"],
                data["router"]["forwarded"], data["flow_cache"]["hits"], data["flow_cache"]["fills"]
            );
            let rows: Vec<Value> = ports.iter().map(|p| {
                let mut p = p.clone();
                let d = p["drops"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")).unwrap_or_default();
                p["drops"] = Value::String(if d.is_empty() { "-".into() } else { d });
                p
            }).collect();
            out += &table(&rows, &["name", "rx_frames", "rx_bytes", "rx_gso_frames", "tx_frames", "tx_bytes", "tx_sw_segmented", "tx_coalesced", "mac_moves", "drops"]);
            out
        }
        Table::Metadata => {
            let rows: Vec<Value> = data["vms"].as_array().unwrap_or(&empty).iter().map(|r| {
                let mut r = r.clone();
                r["keys"] = r["public_keys"].as_array().map_or(0, |k| k.len()).into();
                r
            }).collect();
            let mut out = table(&rows, &["port", "network", "ip", "instance_id", "hostname", "public_ip", "keys", "user_data_bytes", "password_pending"]);
            out += &format!("counters: {}\n", data["counters"]);
            out
        }
        Table::Leases => {
            let rows: Vec<Value> = data["leases"].as_array().unwrap_or(&empty).to_vec();
            let mut out = table(&rows, &["network", "ip", "mac", "hostname", "state", "expires_in_secs"]);
            out += &format!("counters: {}\n", data["counters"]);
            let st = &data["store"];
            if st["ok"] == Value::Bool(false) {
                out += &format!(
                    "lease log: FAILING ({}): new leases are not acknowledged; {} ACKs wait for the disk\n",
                    st["error"].as_str().unwrap_or("?"),
                    st["acks_waiting"]
                );
            } else {
                out += "lease log: ok\n";
            }
            out
        }
        Table::Conntrack => {
            let rows: Vec<Value> = data["flows"].as_array().unwrap_or(&empty).iter().map(|r| {
                let mut r = r.clone();
                r["original"] = format!("{}:{} -> {}:{}", cell(&r["src"]), r["sport"], cell(&r["dst"]), r["dport"]).into();
                r["reply"] = format!("{}:{} -> {}:{}", cell(&r["reply_src"]), r["reply_sport"], cell(&r["reply_dst"]), r["reply_dport"]).into();
                r
            }).collect();
            let mut out = table(&rows, &["proto", "state", "original", "reply", "expires_secs", "packets", "bytes"]);
            out += &format!("{} of at most {} flows\n", data["count"], data["max"]);
            out
        }
        Table::Vpn => {
            let mut out = format!(
                "listen {} address {} mtu {} public key {}\n",
                cell(&data["listen"]), cell(&data["address"]), data["mtu"], cell(&data["public_key"])
            );
            let rows: Vec<Value> = data["peers"].as_array().unwrap_or(&empty).iter().map(|p| {
                let mut p = p.clone();
                p["allowed"] = p["allowed_ips"].as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default().into();
                p["handshake"] = match p["last_handshake_secs"].as_u64() {
                    Some(s) => format!("{s}s ago").into(),
                    None => "never".into(),
                };
                p["drops"] = (p["source_not_allowed"].as_u64().unwrap_or(0) + p["rejected"].as_u64().unwrap_or(0) + p["no_endpoint"].as_u64().unwrap_or(0)).into();
                p
            }).collect();
            out += &table(&rows, &["name", "endpoint", "allowed", "handshake", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "drops"]);
            out += &format!(
                "dropped: strangers {} malformed {} replays {} bad_auth {} under_load {} rate_limited {} (cookies sent {})\n",
                data["strangers"], data["malformed"], data["replays"], data["bad_auth"], data["under_load"], data["rate_limited"], data["cookies_sent"]
            );
            out
        }
        Table::Bgp => {
            let mut out = format!("local AS {} router-id {} VTEP {}, {} routes advertised\n", data["asn"], cell(&data["router_id"]), cell(&data["local"]), data["advertised"]);
            let rows: Vec<Value> = data["neighbors"].as_array().unwrap_or(&empty).iter().map(|n| {
                let mut n = n.clone();
                n["uptime"] = match n["uptime_secs"].as_u64() {
                    Some(s) => format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60).into(),
                    None => match n["retry_in_secs"].as_u64() {
                        Some(r) => format!("retry {r}s").into(),
                        None => "-".into(),
                    },
                };
                n["state"] = if n["dampened"] == true { "dampened".into() } else { n["state"].clone() };
                n["errors"] = n["counters"]["errors_sent"].clone();
                n["refused"] = n["counters"]["routes_refused"].clone();
                n["flaps"] = n["counters"]["flaps"].clone();
                n["last"] = n["last_error"].as_str().unwrap_or("").into();
                n
            }).collect();
            out += &table(&rows, &["address", "remote_as", "state", "uptime", "routes_in", "routes_out", "refused", "errors", "flaps", "last"]);
            out
        }
        Table::Evpn => {
            let mut out = String::new();
            let nets = data["networks"].as_array().cloned().unwrap_or_default();
            for n in &nets {
                let vni = n["vni"].as_u64().unwrap_or(0).to_string();
                let v = &data["evpn"]["vnis"][&vni];
                let flood: Vec<String> = v["flood"].as_array().unwrap_or(&empty).iter().map(cell).collect();
                let local = data["local_macs"][&vni].as_array().map_or(0, |a| a.len());
                out += &format!(
                    "{} vni {} rd {} rt {}\n  flood to: {}\n  local MACs advertised: {}\n",
                    cell(&n["name"]), vni, cell(&n["rd"]),
                    n["route_targets"].as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default(),
                    if flood.is_empty() { "(none)".to_string() } else { flood.join(" ") }, local
                );
                let rows: Vec<Value> = v["macs"].as_object().map(|m| m.iter().map(|(mac, r)| serde_json::json!({
                    "mac": mac, "vtep": r["vtep"], "seq": r["seq"],
                    "ips": r["ips"].as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default(),
                })).collect()).unwrap_or_default();
                for line in table(&rows, &["mac", "vtep", "seq", "ips"]).lines() {
                    out += &format!("  {line}\n");
                }
            }
            out
        }
        Table::Lb => {
            let mut out = String::new();
            for lb in data.as_array().unwrap_or(&empty) {
                out += &format!(
                    "{} {}:{}/{} {} check {} refused {}\n",
                    cell(&lb["name"]), cell(&lb["vip"]), lb["port"], cell(&lb["protocol"]), cell(&lb["algorithm"]),
                    cell(&lb["health_check"]), lb["refused"]
                );
                let rows = lb["backends"].as_array().unwrap_or(&empty);
                for line in table(rows, &["address", "weight", "state", "active", "total", "checks_ok", "checks_failed", "passive_failures", "last_failure"]).lines() {
                    out += &format!("  {line}\n");
                }
            }
            if out.is_empty() {
                out = "no [[load_balancer]] configured\n".into();
            }
            out
        }
    }
}

/// A config given as `-f FILE` (or `-`: stdin) and the name messages use for it.
fn read_config_arg(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)?;
        Ok((s, "(stdin)".to_string()))
    } else {
        Ok((std::fs::read_to_string(file).with_context(|| file.display().to_string())?, file.display().to_string()))
    }
}

/// One line for a reload's or apply's reply: what changed, and how long it took.
fn applied_summary(d: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = d["changes"].as_object() {
        for (kind, ops) in m {
            if let Some(ops) = ops.as_object() {
                for (op, n) in ops {
                    parts.push(format!("{kind} {op} {n}"));
                }
            }
        }
    }
    let what = if parts.is_empty() { "no changes".to_string() } else { parts.join(", ") };
    let mut line = format!(
        "applied: {what}; {} ms in all, datapath paused {} ms",
        d["total_ms"].as_f64().unwrap_or(0.0),
        d["pause_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(w) = d["written"].as_str() {
        line.push_str(&format!("; written to {w}"));
    }
    if let Some(r) = d["restart_needed"].as_array() {
        let keys: Vec<&str> = r.iter().filter_map(|k| k.as_str()).collect();
        line.push_str(&format!("; takes a restart: {}", keys.join(", ")));
    }
    if let Some(w) = d["warning"].as_str() {
        line.push_str(&format!("\nwarning: {w}"));
    }
    line
}

/// A reply's data; a refusal (an invalid config, say) is printed as it came and is `None`
/// (exit 1), anything else an error.
fn refused_is_failure(r: Result<serde_json::Value, control::ControlError>) -> anyhow::Result<Option<serde_json::Value>> {
    match r {
        Ok(d) => Ok(Some(d)),
        Err(control::ControlError::Refused(msg)) => {
            eprintln!("{msg}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
