//! The dependency graph between a crate's top-level modules, read from the
//! paths its source files name, and a cycle search over it.
//!
//! A file `src/a.rs` or `src/a/**.rs` belongs to the top-level module `a`; the
//! crate roots (`src/lib.rs`, `src/main.rs`) belong to none. An edge `a → b`
//! is a `crate::b…` path (also inside a `use crate::{…}` group or a string,
//! such as serde's `default = "crate::b::f"`) or a `super::…` path that climbs
//! to the crate root and then names `b`, written in a file of `a`. Line
//! comments (`//`, so also doc links) are not read. Simple on purpose: a path
//! counts wherever it is written, tests included.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

/// Top-level module → the top-level modules its files name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleGraph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl ModuleGraph {
    /// Reads every `.rs` file under `src` (a crate's `src` directory).
    pub fn of_dir(src: &Path) -> io::Result<Self> {
        let mut files = Vec::new();
        collect(src, &mut files)?;
        let mut located = Vec::new();
        for file in files {
            let relative = file.strip_prefix(src).unwrap_or(&file);
            let mut path: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if path.last().is_some_and(|last| last == "mod") {
                path.pop();
            }
            if path.len() == 1 && (path[0] == "lib" || path[0] == "main") {
                continue;
            }
            located.push((path, fs::read_to_string(&file)?));
        }
        let modules: BTreeSet<String> = located.iter().map(|(path, _)| path[0].clone()).collect();
        let mut graph = ModuleGraph::default();
        for module in &modules {
            graph.edges.insert(module.clone(), BTreeSet::new());
        }
        for (path, text) in &located {
            for target in named_modules(path, text) {
                if target != path[0] && modules.contains(&target) {
                    graph
                        .edges
                        .entry(path[0].clone())
                        .or_default()
                        .insert(target);
                }
            }
        }
        Ok(graph)
    }

    /// The modules and the modules each one names.
    pub fn edges(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.edges
    }

    /// A cycle, as `[a, b, …, a]`, or `None` when the graph is acyclic.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Open,
            Done,
        }
        fn visit<'g>(
            graph: &'g ModuleGraph,
            node: &'g str,
            states: &mut BTreeMap<&'g str, State>,
            stack: &mut Vec<&'g str>,
        ) -> Option<Vec<String>> {
            states.insert(node, State::Open);
            stack.push(node);
            for next in graph.edges.get(node).into_iter().flatten() {
                match states.get(next.as_str()) {
                    Some(State::Open) => {
                        let start = stack.iter().position(|n| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[start..].iter().map(|n| (*n).to_owned()).collect();
                        cycle.push(next.clone());
                        return Some(cycle);
                    }
                    Some(State::Done) => {}
                    None => {
                        if let Some(cycle) = visit(graph, next, states, stack) {
                            return Some(cycle);
                        }
                    }
                }
            }
            stack.pop();
            states.insert(node, State::Done);
            None
        }
        let mut states = BTreeMap::new();
        for node in self.edges.keys() {
            if !states.contains_key(node.as_str())
                && let Some(cycle) = visit(self, node, &mut states, &mut Vec::new())
            {
                return Some(cycle);
            }
        }
        None
    }
}

/// Panics, naming the cycle and the whole graph, when the top-level modules
/// of the crate whose `src` directory is `src` name each other in a cycle.
pub fn assert_acyclic(src: &Path) {
    let graph = ModuleGraph::of_dir(src)
        .unwrap_or_else(|error| panic!("reading {}: {error}", src.display()));
    assert!(
        graph.edges().len() > 1,
        "{} holds fewer than two top-level modules",
        src.display()
    );
    if let Some(cycle) = graph.find_cycle() {
        panic!(
            "module cycle in {}: {}\nthe graph: {:#?}",
            src.display(),
            cycle.join(" -> "),
            graph.edges()
        );
    }
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// The top-level module names that the paths in `text` (a file whose module
/// path is `path`) start with.
fn named_modules(path: &[String], text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            // `://` is a URL in a string, not a comment.
            Some(at) if !line[..at].ends_with(':') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let boundary = !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if boundary && rest.starts_with("crate::") {
            let after = &rest["crate::".len()..];
            names.extend(first_segments(after));
            at += "crate::".len();
        } else if boundary && rest.starts_with("super::") {
            let mut after = rest;
            let mut ups = 0;
            while let Some(stripped) = after.strip_prefix("super::") {
                after = stripped;
                ups += 1;
            }
            // `path` has one element per level; climbing all of them reaches the root.
            if ups == path.len() {
                names.extend(first_segments(after));
            }
            at += rest.len() - after.len();
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    names
}

/// The first identifier of a path, or of each item of a `{…}` group.
fn first_segments(after: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = after.strip_prefix('{') else {
        return vec![ident(after)];
    };
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                names.push(ident(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_groups_and_super() {
        let path = vec!["a".to_owned()];
        let text = "use crate::{b::X, c, self};\n// crate::d in a comment\n\
                    #[serde(default = \"crate::e::f\")]\nfn g() { super::h::i(); crate::j::k() }";
        assert_eq!(
            named_modules(&path, text),
            ["b", "c", "self", "e", "h", "j"]
        );
        let nested = vec!["a".to_owned(), "x".to_owned()];
        assert_eq!(
            named_modules(&nested, "use super::y; use super::super::z;"),
            ["z"]
        );
    }

    #[test]
    fn finds_a_cycle_and_accepts_a_dag() {
        let mut graph = ModuleGraph::default();
        let edge = |g: &mut ModuleGraph, a: &str, b: &str| {
            g.edges.entry(a.into()).or_default().insert(b.into());
            g.edges.entry(b.into()).or_default();
        };
        edge(&mut graph, "config", "registry");
        edge(&mut graph, "registry", "modes");
        edge(&mut graph, "modes", "mode");
        assert_eq!(graph.find_cycle(), None);
        edge(&mut graph, "modes", "config");
        assert_eq!(
            graph.find_cycle(),
            Some(vec![
                "config".to_owned(),
                "registry".into(),
                "modes".into(),
                "config".into()
            ])
        );
    }
}
