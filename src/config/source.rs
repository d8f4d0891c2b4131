//! The config text as a tree: YAML read once into a plain value, with the line and column of
//! every node kept beside it, so an error anywhere can say where it is.
//!
//! Typed deserialization stops at the first error; to report every type error at once, the
//! schema is deserialized again after each one with the offending node taken out, until it
//! goes through. A node taken out reads as absent, which the schema allows, and later checks
//! stay quiet about paths already reported ([`Reported`]).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::ConfigError;

/// The most type errors reported before giving up on a file.
const MAX_TYPE_ERRORS: usize = 64;

/// A parsed config document.
pub struct Document {
    pub value: Value,
    /// Line and column (1-based) of each node, by path (`routes[2].match.path`).
    locations: HashMap<String, (u64, u64)>,
}

impl Document {
    pub fn parse(text: &str) -> Result<Document, ConfigError> {
        let root: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| ConfigError {
            path: String::new(),
            message: format!("not valid YAML: {}", first_line(&e.to_string())),
            location: e.location().map(|l| (l.line(), l.column())),
        })?;
        let mut locations = HashMap::new();
        let value = flatten(root, String::new(), &mut locations);
        Ok(Document { value, locations })
    }

    /// Where `path` is, or its nearest ancestor that has a place.
    pub fn locate(&self, path: &str) -> Option<(u64, u64)> {
        let mut path = path;
        loop {
            if let Some(&at) = self.locations.get(path) {
                return Some(at);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Deserializes the whole document as `T`, collecting every type error with its path
    /// and location. `None` when nothing could be read at all.
    pub fn deserialize<T: DeserializeOwned>(&self, reported: &mut Reported) -> Option<T> {
        let mut errors = Vec::new();
        let mut value = self.value.clone();
        loop {
            match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(t) => {
                    reported.errors.extend(errors);
                    return Some(t);
                }
                Err(e) => {
                    let path = match e.path().to_string() {
                        p if p == "." => String::new(),
                        p => p,
                    };
                    let message = e.inner().to_string();
                    // A missing field is taken out with the mapping that misses it.
                    let (path, message, out) = match missing_field(&message) {
                        Some(field) => (join(&path, field), "missing".to_string(), path),
                        None => (path.clone(), message, path),
                    };
                    // A value taken out for being wrong is not missing as well.
                    if !reported.paths.contains(&path) {
                        let location = self.locate(&path);
                        errors.push(ConfigError {
                            path: path.clone(),
                            message,
                            location,
                        });
                        reported.paths.push(path);
                    }
                    if errors.len() >= MAX_TYPE_ERRORS || !take_out(&mut value, &out) {
                        reported.errors.extend(errors);
                        return None;
                    }
                }
            }
        }
    }
}

/// The errors found so far, and the paths they were found at: a later check says nothing
/// more about a path already reported, nor about its parts.
#[derive(Default)]
pub struct Reported {
    pub errors: Vec<ConfigError>,
    paths: Vec<String>,
}

impl Reported {
    /// Reports a problem found after deserialization (a semantic one).
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if !self.paths.iter().any(|p| inside(&path, p)) {
            self.push(path, message.into());
        }
    }

    /// Reports a problem with the shape of the mapping at `path` ("needs a task or an
    /// origin"), unless something in it was reported already, which may be the cause.
    pub fn shape_error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if !self
            .paths
            .iter()
            .any(|p| inside(&path, p) || inside(p, &path))
        {
            self.push(path, message.into());
        }
    }

    fn push(&mut self, path: String, message: String) {
        self.errors.push(ConfigError {
            path,
            message,
            location: None,
        });
    }

    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// Every error, each with the place of its path (or of the nearest thing around it that
    /// the file has), in the order of the file.
    pub fn in_file_order(mut self, doc: &Document) -> Vec<ConfigError> {
        for e in &mut self.errors {
            e.location = e.location.or_else(|| doc.locate(&e.path));
        }
        self.errors
            .sort_by_key(|e| e.location.unwrap_or((u64::MAX, u64::MAX)));
        self.errors
    }
}

/// Whether `inner` is `outer`, or lies inside it.
fn inside(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || (inner.starts_with(outer) && matches!(inner.as_bytes()[outer.len()], b'.' | b'['))
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// serde's "missing field `x`", as the field's name.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

fn first_line(text: &str) -> &str {
    let text = text.strip_prefix("error: ").unwrap_or(text);
    text.lines().next().unwrap_or(text)
}

/// Takes the node at `path` out of the tree: a mapping's key is removed, a list's item is
/// replaced by null (so the indices of the others stay). False when there is nothing to
/// take out (the root).
fn take_out(root: &mut Value, path: &str) -> bool {
    let steps = steps(path);
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut node = root;
    for step in parents {
        let next = match (node, step) {
            (Value::Object(map), Step::Key(k)) => map.get_mut(*k),
            (Value::Array(items), Step::Index(i)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (node, last) {
        (Value::Object(map), Step::Key(k)) => map.remove(*k).is_some(),
        (Value::Array(items), Step::Index(i)) => match items.get_mut(*i) {
            Some(item) if !item.is_null() => {
                *item = Value::Null;
                true
            }
            _ => false,
        },
        _ => false,
    }
}

enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        // A key may itself hold brackets (`0[]]`): anything that is not `[n]` is skipped,
        // and `take_out` then finds nothing and stops.
        while let Some(close) = rest.find(']') {
            if let Some(i) = rest.get(1..close).and_then(|n| n.parse().ok()) {
                out.push(Step::Index(i));
            }
            rest = rest.get(close + 1..).unwrap_or_default();
        }
    }
    out
}

/// Any YAML node, each child with its place in the text.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Text(String),
    List(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

fn flatten(node: Spanned<Node>, path: String, at: &mut HashMap<String, (u64, u64)>) -> Value {
    at.insert(
        path.clone(),
        (node.referenced.line(), node.referenced.column()),
    );
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(n) => Value::from(n),
        Node::Uint(n) => Value::from(n),
        Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Text(s) => Value::String(s),
        Node::List(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| flatten(item, format!("{path}[{i}]"), at))
                .collect(),
        ),
        Node::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let child = join(&path, &k);
                    (k, flatten(v, child, at))
                })
                .collect(),
        ),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Text(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Spanned<Node>>()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}
