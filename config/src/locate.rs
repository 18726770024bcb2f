//! Finds where a JSON path stands in the source text, so that an error
//! found after parsing (weights that do not sum, an unknown pool) can still
//! name its line and column.
//!
//! serde_json keeps no spans, so this walks the text once with a small
//! scanner that understands just enough JSON to skip values.

/// One step of a JSON path: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `.key`
    Key(String),
    /// `[index]`
    Index(usize),
}

/// Renders a path the way errors print it: `routes[0].split.weights`.
pub fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            // A key that would not read back as one (a control byte, a
            // separator): quoted and escaped as JSON, so an error stays one
            // line.
            Segment::Key(key)
                if key.is_empty()
                    || key
                        .chars()
                        .any(|c| c.is_control() || matches!(c, '.' | '[' | ']' | '"')) =>
            {
                out.push('[');
                out.push_str(&serde_json::to_string(key).expect("a string serializes"));
                out.push(']');
            }
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(index) => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Returns the 1-based line and column of the value at `path`, or of the
/// deepest ancestor that exists when the path goes further than the text.
pub fn locate(source: &str, path: &[Segment]) -> (usize, usize) {
    let bytes = source.as_bytes();
    let mut scanner = Scanner { bytes, pos: 0 };
    scanner.skip_ws();
    let mut best = scanner.pos;
    for segment in path {
        match scanner.enter(segment) {
            Some(pos) => best = pos,
            None => break,
        }
    }
    line_column(source, best)
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Moves to the value named by `segment` inside the value at `pos`.
    fn enter(&mut self, segment: &Segment) -> Option<usize> {
        self.skip_ws();
        match (segment, self.peek()?) {
            (Segment::Key(wanted), b'{') => {
                self.pos += 1;
                loop {
                    self.skip_ws();
                    if self.peek()? == b'}' {
                        return None;
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.peek()? != b':' {
                        return None;
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if key == *wanted {
                        return Some(self.pos);
                    }
                    self.skip_value()?;
                    self.skip_ws();
                    if self.peek()? == b',' {
                        self.pos += 1;
                    }
                }
            }
            (Segment::Index(wanted), b'[') => {
                self.pos += 1;
                let mut index = 0;
                loop {
                    self.skip_ws();
                    if self.peek()? == b']' {
                        return None;
                    }
                    if index == *wanted {
                        return Some(self.pos);
                    }
                    self.skip_value()?;
                    index += 1;
                    self.skip_ws();
                    if self.peek()? == b',' {
                        self.pos += 1;
                    }
                }
            }
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    let raw = &self.bytes[start..self.pos - 1];
                    return serde_json::from_slice::<String>(
                        &[b"\"".as_slice(), raw, b"\"".as_slice()].concat(),
                    )
                    .ok();
                }
                _ => {}
            }
        }
        None
    }

    fn skip_value(&mut self) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                while let Some(b) = self.peek() {
                    match b {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
                None
            }
            _ => {
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values() {
        let source = "{\n  \"a\": [1, {\"b\": \"x\"}],\n  \"c\": {\n    \"d\": 5\n  }\n}";
        let path = [Segment::Key("c".into()), Segment::Key("d".into())];
        assert_eq!(locate(source, &path), (4, 10));
        let path = [
            Segment::Key("a".into()),
            Segment::Index(1),
            Segment::Key("b".into()),
        ];
        assert_eq!(locate(source, &path), (2, 18));
        assert_eq!(render(&path), "a[1].b");
    }

    #[test]
    fn missing_path_falls_back_to_deepest_ancestor() {
        let source = "{\"a\": {\"b\": 1}}";
        let path = [Segment::Key("a".into()), Segment::Key("zz".into())];
        assert_eq!(locate(source, &path), (1, 7));
    }

    #[test]
    fn strings_with_brackets_and_escapes_are_skipped() {
        let source = r#"{"x": "a}]\"{", "y": 2}"#;
        assert_eq!(locate(source, &[Segment::Key("y".into())]), (1, 22));
    }
}
