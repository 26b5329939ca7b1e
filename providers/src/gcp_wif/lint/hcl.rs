//! A structural reader of the HCL subset our Terraform module uses: blocks (`type "label" {
//! … }`), attributes (`name = expression`), comments (`#`, `//`, `/* */`), string templates
//! with `${…}` interpolations and heredocs. It keeps each attribute's expression as source
//! text; [`string_literals`] and [`single_string`] read the strings inside it.
//!
//! There is no HCL crate in the workspace. This reader is deliberately strict about the
//! structure it accepts (an unbalanced brace or an unterminated string is an error, so the
//! lint fails rather than passes) and makes no attempt to evaluate expressions: the lint
//! only relies on literal strings and on the exact text of a few references. The test suite
//! cross-checks the module with a real HCL parser (tests/gcp_tf_parse.py, python-hcl2).

/// One attribute or nested block of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// `name = expression`, the expression as source text without comments.
    Attr {
        /// The attribute name.
        name: String,
        /// The expression text.
        expr: String,
    },
    /// A nested block.
    Block(Block),
}

/// A block: `kind "label" … { items }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    /// The block type (`resource`, `variable`, `oidc`, …).
    pub(crate) kind: String,
    /// Its labels, unquoted.
    pub(crate) labels: Vec<String>,
    /// Its body.
    pub(crate) items: Vec<Item>,
}

impl Block {
    /// The expression text of attribute `name`, if set.
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.items.iter().find_map(|i| match i {
            Item::Attr { name: n, expr } if n == name => Some(expr.as_str()),
            _ => None,
        })
    }

    /// The nested blocks of type `kind`.
    pub(crate) fn blocks<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
        self.items.iter().filter_map(move |i| match i {
            Item::Block(b) if b.kind == kind => Some(b),
            _ => None,
        })
    }

    /// Every attribute expression of this block and its nested blocks.
    pub(crate) fn exprs(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for i in &self.items {
            match i {
                Item::Attr { expr, .. } => out.push(expr.as_str()),
                Item::Block(b) => out.extend(b.exprs()),
            }
        }
        out
    }
}

struct Reader<'a> {
    s: &'a [char],
    pos: usize,
    line: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err(&self, msg: &str) -> String {
        format!("line {}: {msg}", self.line)
    }

    /// Skips a comment starting here, if any; true when one was skipped. A line comment
    /// stops before its newline.
    fn skip_comment(&mut self) -> Result<bool, String> {
        match (self.peek(), self.peek_at(1)) {
            (Some('#'), _) | (Some('/'), Some('/')) => {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
                Ok(true)
            }
            (Some('/'), Some('*')) => {
                self.pos += 2;
                loop {
                    match (self.peek(), self.peek_at(1)) {
                        (Some('*'), Some('/')) => {
                            self.pos += 2;
                            return Ok(true);
                        }
                        (Some(_), _) => {
                            self.bump();
                        }
                        (None, _) => return Err(self.err("unterminated /* comment")),
                    }
                }
            }
            _ => Ok(false),
        }
    }

    /// Skips blanks, newlines and comments.
    fn skip_space(&mut self) -> Result<(), String> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some(_) if self.skip_comment()? => {}
                _ => return Ok(()),
            }
        }
    }

    /// Skips blanks and comments on the current line (not the newline).
    fn skip_inline_space(&mut self) -> Result<(), String> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() && c != '\n' => {
                    self.bump();
                }
                Some('#' | '/') if self.skip_comment()? => {}
                _ => return Ok(()),
            }
        }
    }

    fn ident(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-'))
        {
            out.push(c);
            self.bump();
        }
        out
    }

    /// Copies a quoted string template (opening quote at the cursor) into `out`, quotes
    /// included, following `${…}` / `%{…}` interpolations (which may hold strings).
    fn string(&mut self, out: &mut String) -> Result<(), String> {
        let start = self.line;
        if let Some(q) = self.bump() {
            out.push(q);
        }
        loop {
            match self.bump() {
                None | Some('\n') => return Err(format!("line {start}: unterminated string")),
                Some('\\') => {
                    out.push('\\');
                    match self.bump() {
                        Some(c) => out.push(c),
                        None => return Err(format!("line {start}: unterminated string")),
                    }
                }
                Some('"') => {
                    out.push('"');
                    return Ok(());
                }
                Some(c @ ('$' | '%')) if self.peek() == Some('{') => {
                    out.push(c);
                    self.interpolation(out)?;
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// Copies `{ … }` of an interpolation (cursor at `{`) into `out`.
    fn interpolation(&mut self, out: &mut String) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated interpolation")),
                Some('"') => self.string(out)?,
                Some(c) => {
                    self.bump();
                    out.push(c);
                    if c == '{' {
                        depth += 1;
                    } else if c == '}' {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Copies a heredoc (cursor at `<<`) into `out` as a quoted string literal.
    fn heredoc(&mut self, out: &mut String) -> Result<(), String> {
        self.pos += 2;
        if self.peek() == Some('-') {
            self.bump();
        }
        let tag = self.ident();
        if tag.is_empty() {
            return Err(self.err("heredoc without a delimiter"));
        }
        while self.peek().is_some_and(|c| c != '\n') {
            self.bump();
        }
        self.bump();
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            while let Some(c) = self.peek().filter(|c| *c != '\n') {
                line.push(c);
                self.bump();
            }
            if line.trim() == tag {
                break;
            }
            if self.bump().is_none() {
                return Err(self.err(&format!("heredoc {tag} is not closed")));
            }
            body.push(line);
        }
        out.push('"');
        for c in body.join("\n").chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        Ok(())
    }

    /// Reads an expression up to the newline (or `}`/`,` of the enclosing body) at bracket
    /// depth 0; comments are dropped.
    fn expression(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut stack: Vec<char> = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some('"') => self.string(&mut out)?,
                Some('<') if self.peek_at(1) == Some('<') => self.heredoc(&mut out)?,
                Some('#') => {
                    self.skip_comment()?;
                }
                Some('/') if matches!(self.peek_at(1), Some('/' | '*')) => {
                    self.skip_comment()?;
                }
                Some('\n') if stack.is_empty() => break,
                Some('}') if stack.is_empty() => break,
                Some(c) => {
                    match c {
                        '(' => stack.push(')'),
                        '[' => stack.push(']'),
                        '{' => stack.push('}'),
                        // A closer must match the innermost opener.
                        ')' | ']' | '}' if stack.pop() != Some(c) => {
                            return Err(self.err(&format!("unbalanced {c}")));
                        }
                        _ => {}
                    }
                    self.bump();
                    out.push(c);
                }
            }
        }
        if !stack.is_empty() {
            return Err(self.err("unclosed bracket in expression"));
        }
        Ok(out.trim().to_owned())
    }

    /// Reads body items until `}` (nested) or the end of the file (top level).
    fn body(&mut self, nested: bool) -> Result<Vec<Item>, String> {
        let mut items = Vec::new();
        loop {
            self.skip_space()?;
            match self.peek() {
                None if nested => return Err(self.err("missing }")),
                None => return Ok(items),
                Some('}') if nested => {
                    self.bump();
                    return Ok(items);
                }
                Some(_) => {}
            }
            // A quoted name is a map key (`"google.subject" = …`).
            let name = if self.peek() == Some('"') {
                let mut raw = String::new();
                self.string(&mut raw)?;
                unquote(&raw)
            } else {
                self.ident()
            };
            if name.is_empty() {
                return Err(self.err(&format!(
                    "expected an attribute or a block, found {:?}",
                    self.peek().unwrap_or(' ')
                )));
            }
            self.skip_inline_space()?;
            if self.peek() == Some('=') && self.peek_at(1) != Some('=') {
                self.bump();
                self.skip_inline_space()?;
                let expr = self.expression()?;
                if expr.is_empty() {
                    return Err(self.err(&format!("attribute {name} has no value")));
                }
                items.push(Item::Attr { name, expr });
                continue;
            }
            let mut labels = Vec::new();
            loop {
                self.skip_inline_space()?;
                match self.peek() {
                    Some('"') => {
                        let mut raw = String::new();
                        self.string(&mut raw)?;
                        labels.push(unquote(&raw));
                    }
                    Some('{') => {
                        self.bump();
                        break;
                    }
                    Some(c) if c.is_alphanumeric() || c == '_' => labels.push(self.ident()),
                    _ => return Err(self.err(&format!("block {name}: expected a label or {{"))),
                }
            }
            let items_of_block = self.body(true)?;
            items.push(Item::Block(Block {
                kind: name,
                labels,
                items: items_of_block,
            }));
        }
    }
}

/// Parses one Terraform file into its top-level blocks.
///
/// # Errors
/// When the text is not well-formed HCL of the subset this reader knows (the message names
/// the line).
pub(crate) fn parse(text: &str) -> Result<Vec<Block>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut r = Reader {
        s: &chars,
        pos: 0,
        line: 1,
    };
    let mut blocks = Vec::new();
    for item in r.body(false)? {
        match item {
            Item::Block(b) => blocks.push(b),
            Item::Attr { name, .. } => {
                return Err(format!("top-level attribute {name} outside a block"));
            }
        }
    }
    Ok(blocks)
}

/// The content of a quoted literal (`"…"` with its escapes resolved; `${…}` kept as text).
pub(crate) fn unquote(raw: &str) -> String {
    let inner = raw
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(raw);
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every quoted string literal in `expr` (top level and inside interpolations), unquoted.
pub(crate) fn string_literals(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars.get(i) == Some(&'"') {
            let mut r = Reader {
                s: &chars,
                pos: i,
                line: 1,
            };
            let mut raw = String::new();
            if r.string(&mut raw).is_err() {
                break;
            }
            // Strings inside this one's interpolations count too.
            let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
            out.push(unquote(&raw));
            for nested in nested_interpolation_strings(inner) {
                out.push(nested);
            }
            i = r.pos;
        } else {
            i += 1;
        }
    }
    out
}

fn nested_interpolation_strings(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        let after = rest.get(at + 2..).unwrap_or("");
        if after.contains('"') {
            out.extend(string_literals(after));
            break;
        }
        rest = after;
    }
    out
}

/// The value of `expr` when it is exactly one string literal.
pub(crate) fn single_string(expr: &str) -> Option<String> {
    let t = expr.trim();
    if !t.starts_with('"') {
        return None;
    }
    let chars: Vec<char> = t.chars().collect();
    let mut r = Reader {
        s: &chars,
        pos: 0,
        line: 1,
    };
    let mut raw = String::new();
    r.string(&mut raw).ok()?;
    (r.pos == chars.len()).then(|| unquote(&raw))
}

/// The `"key" = "value"` (or `key = "value"`) pairs of a map expression `{ … }`, in order.
pub(crate) fn map_pairs(expr: &str) -> Option<Vec<(String, String)>> {
    let t = expr.trim();
    let body = t.strip_prefix('{')?.strip_suffix('}')?;
    let mut text = format!("m {{\n{body}\n}}\n");
    // Map entries may be separated by commas.
    text = text.replace(",\n", "\n");
    let blocks = parse(&text).ok()?;
    let block = blocks.first()?;
    block
        .items
        .iter()
        .map(|i| match i {
            Item::Attr { name, expr } => Some((name.clone(), single_string(expr)?)),
            Item::Block(_) => None,
        })
        .collect()
}
