//! Finds the line of a field path (`spec.backends[1].address`) in a YAML document,
//! so validation errors can say `file:line`. Block style is followed by
//! indentation; a key written in flow style (`{address: x}`) is found on the line
//! that holds it.

/// The 0-based line of `path` within `doc`, or the closest ancestor's line.
pub fn locate(doc: &str, path: &str) -> usize {
    let lines: Vec<&str> = doc.lines().collect();
    let mut from = 0usize; // first line of the current node's block
    let mut to = lines.len(); // end (exclusive)
    let mut indent: isize = -1; // indentation of the parent key
    let mut found = 0usize;
    for seg in segments(path) {
        let (hit, item) = match seg {
            Seg::Key(k) => (find_key(&lines, from, to, indent, k), false),
            Seg::Index(i) => (find_item(&lines, from, to, indent, i), true),
        };
        let Some((line, col)) = hit else { break };
        found = line;
        // The keys of a list item's mapping sit at the item's content column.
        indent = col as isize - isize::from(item);
        from = line;
        to = block_end(&lines, line, indent.max(0) as usize);
    }
    found
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The end of the block that starts at `line` with content at column `col`.
fn block_end(lines: &[&str], line: usize, col: usize) -> usize {
    for (i, l) in lines.iter().enumerate().skip(line + 1) {
        if !is_blank(l) && indent_of(l) <= col && !l.trim_start().starts_with("- ") {
            return i;
        }
        if !is_blank(l) && indent_of(l) < col {
            return i;
        }
    }
    lines.len()
}

fn find_key(
    lines: &[&str],
    from: usize,
    to: usize,
    parent: isize,
    key: &str,
) -> Option<(usize, usize)> {
    let block = format!("{key}:");
    let flow = [format!("{{{key}:"), format!(" {key}:"), format!(",{key}:")];
    for (i, l) in lines.iter().enumerate().take(to).skip(from) {
        if is_blank(l) {
            continue;
        }
        let t = l.trim_start();
        let t_item = t.strip_prefix("- ").unwrap_or(t);
        let col = indent_of(l) + (t.len() - t_item.len());
        if (col as isize > parent || i == from) && t_item.starts_with(&block) {
            return Some((i, col));
        }
        if let Some(pos) = flow.iter().filter_map(|f| l.find(f.as_str())).min() {
            if i > from || parent < 0 || pos as isize > parent {
                return Some((i, pos + 1));
            }
        }
    }
    None
}

fn find_item(
    lines: &[&str],
    from: usize,
    to: usize,
    parent: isize,
    index: usize,
) -> Option<(usize, usize)> {
    let mut n = 0;
    let mut item_col = None;
    for (i, l) in lines.iter().enumerate().take(to).skip(from + 1) {
        if is_blank(l) {
            continue;
        }
        let t = l.trim_start();
        let col = indent_of(l);
        if t.starts_with("- ") || t == "-" {
            if (col as isize) < parent && item_col.is_none() {
                continue;
            }
            match item_col {
                None => item_col = Some(col),
                Some(c) if c != col => continue,
                _ => {}
            }
            if n == index {
                return Some((i, col + 2));
            }
            n += 1;
        }
    }
    // Flow sequence on the key's line: point at that line.
    (from < lines.len()).then_some((from, parent.max(0) as usize))
}

#[cfg(test)]
mod tests {
    use super::locate;

    const DOC: &str = "apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata:
  name: chat
spec:
  path:
    value: chat
  backends:
    - address: 127.0.0.1:1
    - address: nope
      weight: 2
  keepalive: {interval: 5s, timeout: 10s}
";

    #[test]
    fn finds_block_and_flow_fields() {
        assert_eq!(locate(DOC, "spec.path.value"), 6);
        assert_eq!(locate(DOC, "spec.backends[1].address"), 9);
        assert_eq!(locate(DOC, "spec.backends[1].weight"), 10);
        assert_eq!(locate(DOC, "spec.backends[0]"), 8);
        assert_eq!(locate(DOC, "spec.keepalive.timeout"), 11);
        assert_eq!(locate(DOC, "metadata.name"), 3);
        assert_eq!(locate(DOC, "spec.nothing.here"), 4);
    }
}
