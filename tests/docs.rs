//! The documentation says what the code is: every module of the library is named in lib.rs's
//! layout and in the README's, every drop reason the datapath counts is listed in the README,
//! and the README's two commands work in a root shell without `sudo`.

use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// The modules `lib.rs` declares.
fn modules() -> Vec<String> {
    read("src/lib.rs").lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';').to_string()).collect()
}

#[test]
fn every_module_is_in_both_layouts() {
    let lib = read("src/lib.rs");
    let doc: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let readme = read("README.md");
    let layout = readme.split("## Layout").nth(1).and_then(|s| s.split("\n## ").next()).expect("README has a Layout section");
    let mods = modules();
    assert!(mods.len() > 10, "{mods:?}");
    for m in mods {
        assert!(doc.contains(&format!("`{m}`")), "lib.rs's layout does not name `{m}`");
        let dir = format!("src/{m}/");
        let file = format!("src/{m}.rs");
        let in_io = m == "sys" && layout.contains("src/sys/");
        assert!(layout.contains(&dir) || layout.contains(&file) || in_io, "README's layout does not name {m}");
    }
}

#[test]
fn every_drop_reason_is_documented() {
    let readme = read("README.md");
    for r in vrouter::switch::stats::DropReason::ALL {
        assert!(readme.contains(&format!("`{}`", r.name())), "README does not list the drop reason `{}`", r.name());
    }
}

#[test]
fn the_two_commands_need_no_sudo() {
    let readme = read("README.md");
    let block = readme.split("## The two commands").nth(1).and_then(|s| s.split("\n## ").next()).unwrap();
    let cmds: Vec<&str> = block.lines().map(str::trim).filter(|l| l.contains("scripts/") && l.ends_with(|_| true) && !l.starts_with('#') && l.split_whitespace().next().is_some_and(|w| w == "bash" || w == "sudo" || w.starts_with("scripts/"))).collect();
    assert_eq!(cmds.len(), 2, "{block}");
    for c in cmds {
        assert!(!c.starts_with("sudo"), "a fresh root machine may have no sudo: {c}");
        let script = c.split_whitespace().find(|w| w.starts_with("scripts/")).unwrap();
        let text = read(script);
        // Root runs it directly; only another user goes through sudo, and only if there is one.
        assert!(text.contains("command -v sudo"), "{script} assumes sudo");
    }
}
