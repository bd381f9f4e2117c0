//! Maps between positions in the TOML text and key paths such as `port[1].mac`, so every config
//! message names the file, the line and the key. Uses toml_edit's span-preserving document.

use std::fmt;
use std::ops::Range;
use toml_edit::{Document, Item, Table, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path inside the config document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }
    pub fn idx(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

/// Builds a path: `kp!("port", 1, "mac")`.
#[macro_export]
macro_rules! kp {
    ($($s:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut p = $crate::config::locate::KeyPath::default();
        $( p = $crate::config::locate::IntoSeg::push($s, p); )*
        p
    }};
}

pub trait IntoSeg {
    fn push(self, p: KeyPath) -> KeyPath;
}
impl IntoSeg for &str {
    fn push(self, p: KeyPath) -> KeyPath {
        p.key(self)
    }
}
impl IntoSeg for usize {
    fn push(self, p: KeyPath) -> KeyPath {
        p.idx(self)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if first {
            f.write_str("(top level)")?;
        }
        Ok(())
    }
}

/// The source text with its parsed span tree.
pub struct Locator<'a> {
    src: &'a str,
    doc: Option<Document<&'a str>>,
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

impl<'a> Locator<'a> {
    pub fn new(src: &'a str) -> Self {
        Locator { src, doc: Document::parse(src).ok() }
    }

    /// The text did not even parse as TOML.
    pub fn is_syntax_error(&self) -> bool {
        self.doc.is_none()
    }

    /// The key written on `line` (1-based), for messages about text that did not parse.
    pub fn key_on_line(&self, line: usize) -> Option<String> {
        let l = self.src.lines().nth(line.checked_sub(1)?)?;
        let k = l.split_once('=')?.0.trim();
        (!k.is_empty()).then(|| k.to_string())
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The line where `path` is written (the deepest part of it that exists in the text).
    pub fn line_of_path(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best: Option<Range<usize>> = None;
        for seg in &path.0 {
            let (next, span) = match (seg, node) {
                (Seg::Key(k), Node::Table(t)) | (Seg::Key(k), Node::Item(Item::Table(t))) => {
                    let span = t.key(k).and_then(|k| k.span());
                    (t.get(k).map(Node::Item), span)
                }
                (Seg::Key(k), Node::Value(Value::InlineTable(t)))
                | (Seg::Key(k), Node::Item(Item::Value(Value::InlineTable(t)))) => {
                    let span = t.key(k).and_then(|k| k.span());
                    (t.get(k).map(Node::Value), span)
                }
                (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => {
                    let t = a.get(*i);
                    (t.map(Node::Table), t.and_then(|t| t.span()))
                }
                (Seg::Index(i), Node::Value(Value::Array(a)))
                | (Seg::Index(i), Node::Item(Item::Value(Value::Array(a)))) => {
                    let v = a.get(*i);
                    (v.map(Node::Value), v.and_then(|v| v.span()))
                }
                _ => (None, None),
            };
            if span.is_some() {
                best = span;
            }
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        best.map(|r| self.line_of(r.start))
    }

    /// The deepest key path whose key or value covers `offset`.
    pub fn path_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        walk_table(doc.as_table(), KeyPath::default(), offset, &mut best);
        best
    }
}

fn covers(r: Option<Range<usize>>, off: usize) -> bool {
    r.is_some_and(|r| r.start <= off && off < r.end.max(r.start + 1))
}

fn consider(path: &KeyPath, best: &mut Option<KeyPath>) {
    if best.as_ref().is_none_or(|b| path.0.len() >= b.0.len()) {
        *best = Some(path.clone());
    }
}

fn walk_table(t: &Table, path: KeyPath, off: usize, best: &mut Option<KeyPath>) {
    if covers(t.span(), off) {
        consider(&path, best);
    }
    for (k, item) in t.iter() {
        let p = path.clone().key(k);
        if covers(t.key(k).and_then(|k| k.span()), off) {
            consider(&p, best);
        }
        walk_item(item, p, off, best);
    }
}

fn walk_item(item: &Item, path: KeyPath, off: usize, best: &mut Option<KeyPath>) {
    match item {
        Item::Table(t) => walk_table(t, path, off, best),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                walk_table(t, path.clone().idx(i), off, best);
            }
        }
        Item::Value(v) => walk_value(v, path, off, best),
        Item::None => {}
    }
}

fn walk_value(v: &Value, path: KeyPath, off: usize, best: &mut Option<KeyPath>) {
    if covers(v.span(), off) {
        consider(&path, best);
    }
    match v {
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_value(v, path.clone().idx(i), off, best);
            }
        }
        Value::InlineTable(t) => {
            for (k, v) in t.iter() {
                let p = path.clone().key(k);
                if covers(t.key(k).and_then(|k| k.span()), off) {
                    consider(&p, best);
                }
                walk_value(v, p, off, best);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[router]\nname = \"a\"\n\n[[port]]\nname = \"p0\"\n\n[[port]]\nname = \"p1\"\nmac = \"x\"\n\n[[load_balancer]]\nbackends = [{ ip = \"1.2.3.4\" },\n  { ip = \"bad\" }]\n";

    #[test]
    fn path_to_line() {
        let l = Locator::new(SRC);
        assert_eq!(l.line_of_path(&kp!("port", 1, "mac")), Some(9));
        assert_eq!(l.line_of_path(&kp!("port", 0, "name")), Some(5));
        assert_eq!(l.line_of_path(&kp!("router", "name")), Some(2));
        assert_eq!(l.line_of_path(&kp!("load_balancer", 0, "backends", 1, "ip")), Some(13));
        // A key that is absent resolves to its nearest written ancestor.
        assert_eq!(l.line_of_path(&kp!("port", 1, "ip")), Some(7));
    }

    #[test]
    fn offset_to_path() {
        let l = Locator::new(SRC);
        let off = SRC.find("\"bad\"").unwrap();
        assert_eq!(l.path_at(off).unwrap().to_string(), "load_balancer[0].backends[1].ip");
        assert_eq!(kp!("port", 1, "mac").to_string(), "port[1].mac");
    }
}
