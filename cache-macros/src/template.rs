//! Key and tag templates: literal text with `<placeholder>`s, `"user:<id>"`,
//! `"req:<req.user_id>"`. Tags follow the same rules as keys (they are rendered alike).
//!
//! The rules keep rendering injective (see the runtime's `key` module): literal text uses
//! letters, digits and `_ . - : / = @ + |`; two placeholders are separated by at least one of
//! `: / = @ + |`, characters escaped values never contain.

use syn::LitStr;

use redis_memo_rules::{is_literal, is_separator};

/// A parsed key template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The template as written, for the fingerprint and messages.
    pub(crate) source: String,
    pub(crate) segments: Vec<Segment>,
    pub(crate) lit: LitStr,
    /// `key` or `tag`, for messages.
    pub(crate) label: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Literal(String),
    Placeholder(Placeholder),
}

/// `<root.field.0>`: a parameter (or `self`) and a path of fields into it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placeholder {
    pub(crate) root: String,
    pub(crate) fields: Vec<String>,
    /// Byte offset of the `<` in the template, for messages.
    pub(crate) offset: usize,
}

impl Placeholder {
    pub(crate) fn display(&self) -> String {
        let mut text = format!("<{}", self.root);
        for field in &self.fields {
            text.push('.');
            text.push_str(field);
        }
        text.push('>');
        text
    }
}

impl Template {
    /// Parses a template; `label` (`key` or `tag`) names it in messages.
    pub(crate) fn parse(lit: &LitStr, label: &'static str) -> syn::Result<Template> {
        let source = lit.value();
        let segments = parse_segments(&source, label).map_err(|(offset, message)| {
            syn::Error::new_spanned(lit, pointing_at(label, &source, offset, &message))
        })?;
        Ok(Template {
            source,
            segments,
            lit: lit.clone(),
            label,
        })
    }

    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Placeholder(placeholder) => Some(placeholder),
            Segment::Literal(_) => None,
        })
    }

    /// An error message about the placeholder at `offset`, drawn under the template.
    pub(crate) fn message_at(&self, offset: usize, message: &str) -> String {
        pointing_at(self.label, &self.source, offset, message)
    }
}

/// `message`, then the template with a caret under the character at byte `offset`.
fn pointing_at(label: &str, source: &str, offset: usize, message: &str) -> String {
    let column = source[..offset.min(source.len())].chars().count();
    let prefix = format!("  {label} = \"");
    format!(
        "{message}\n{prefix}{source}\"\n{}^",
        " ".repeat(prefix.len() + column)
    )
}

fn parse_segments(source: &str, label: &str) -> Result<Vec<Segment>, (usize, String)> {
    if source.is_empty() {
        let example = if label == "tag" {
            "what the entries share, like \"org:<org_id>\""
        } else {
            "what identifies a call, like \"user:<id>\""
        };
        return Err((0, format!("the {label} template is empty; name {example}")));
    }
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match c {
            '<' => {
                let mut body = String::new();
                let mut closed = false;
                for (_, inner) in chars.by_ref() {
                    if inner == '>' {
                        closed = true;
                        break;
                    }
                    body.push(inner);
                }
                if !closed {
                    return Err((offset, "this `<` is never closed: write `<param>`".into()));
                }
                let placeholder = parse_placeholder(&body, offset)?;
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                check_separated(&segments, &placeholder)?;
                segments.push(Segment::Placeholder(placeholder));
            }
            '>' => {
                return Err((
                    offset,
                    "this `>` closes no placeholder; placeholders look like `<param>`".into(),
                ));
            }
            c if is_literal(c) => literal.push(c),
            c => {
                let why = match c {
                    '{' | '}' => "braces would break the Redis Cluster hash tag of the key",
                    '*' | '?' | '[' | ']' => {
                        "glob characters would make pattern invalidation match other keys"
                    }
                    '%' | '~' | '#' | ',' => "it is reserved for escaped values",
                    c if c.is_whitespace() => "keys contain no whitespace",
                    _ => "keys use only letters, digits and `_ . - : / = @ + |`",
                };
                return Err((
                    offset,
                    format!(
                        "`{}` is not allowed in a {label} template: {why}",
                        c.escape_default()
                    ),
                ));
            }
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

fn parse_placeholder(body: &str, offset: usize) -> Result<Placeholder, (usize, String)> {
    if body.is_empty() {
        return Err((
            offset,
            "empty placeholder `<>`: name a parameter, like `<id>`".into(),
        ));
    }
    let mut parts = body.split('.');
    let root = parts.next().unwrap_or_default().to_owned();
    let fields: Vec<String> = parts.map(str::to_owned).collect();
    if let Some(keyword) = std::iter::once(&root)
        .filter(|r| *r != "self")
        .chain(&fields)
        .find(|part| is_keyword(part))
    {
        return Err((
            offset,
            format!(
                "`{keyword}` in `<{body}>` is a Rust keyword; a placeholder names a parameter or a field, like `<req.kind>`"
            ),
        ));
    }
    let root_ok = is_identifier(&root);
    let fields_ok = fields.iter().all(|f| is_field_name(f) || is_tuple_index(f));
    if !root_ok || !fields_ok {
        return Err((
            offset,
            format!(
                "`<{body}>` is not a placeholder: write a parameter name or a field path, like `<id>` or `<req.user_id>`"
            ),
        ));
    }
    Ok(Placeholder {
        root,
        fields,
        offset,
    })
}

/// A named field: an identifier that is not a keyword (`<req.type>` cannot be written in Rust
/// either).
fn is_field_name(text: &str) -> bool {
    is_identifier(text) && !is_keyword(text)
}

/// A tuple index such as `0`, within `u32`.
fn is_tuple_index(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u32>().is_ok()
}

fn is_keyword(text: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue",
        "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "if",
        "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv",
        "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "try",
        "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
    ];
    KEYWORDS.contains(&text)
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text != "_"
}

/// Two placeholders need a separator between them, or `("1", "23")` and `("12", "3")` would
/// render alike.
fn check_separated(before: &[Segment], next: &Placeholder) -> Result<(), (usize, String)> {
    let Some(previous) = before.iter().rev().find_map(|s| match s {
        Segment::Placeholder(p) => Some(p),
        Segment::Literal(_) => None,
    }) else {
        return Ok(());
    };
    // Literal text is merged, so only the last segment can lie between the two placeholders.
    let separated =
        matches!(before.last(), Some(Segment::Literal(text)) if text.chars().any(is_separator));
    if separated {
        return Ok(());
    }
    Err((
        next.offset,
        format!(
            "`{}` must be separated from `{}` by one of `: / = @ + |`, or two different calls could share a key",
            next.display(),
            previous.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Segment>, String> {
        parse_segments(text, "key").map_err(|(_, message)| message)
    }

    #[test]
    fn literals_and_placeholders() {
        let segments = parse("user:<id>:<req.user_id>").unwrap();
        assert_eq!(segments.len(), 4);
        assert!(
            matches!(&segments[3], Segment::Placeholder(p) if p.root == "req" && p.fields == ["user_id"])
        );
    }

    #[test]
    fn refuses_what_would_break_injectivity_or_redis() {
        assert!(parse("user:<a><b>").unwrap_err().contains("separated"));
        assert!(parse("user:<a>-<b>").unwrap_err().contains("separated"));
        assert!(parse("user:{<a>}").unwrap_err().contains("hash tag"));
        assert!(parse("user:<a").unwrap_err().contains("never closed"));
        assert!(parse("user:<>").unwrap_err().contains("empty placeholder"));
        assert!(parse("user <a>").unwrap_err().contains("whitespace"));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("a:<1x>").unwrap_err().contains("not a placeholder"));
        assert!(parse("a:<req.type>").unwrap_err().contains("keyword"));
        assert!(parse("a:<match>").unwrap_err().contains("keyword"));
        assert!(
            parse("a:<p.99999999999>")
                .unwrap_err()
                .contains("not a placeholder")
        );
        assert!(parse("<a>:<b>").is_ok());
        assert!(parse("user:<p.0>").is_ok());
    }

    #[test]
    fn messages_point_at_the_character() {
        let message = pointing_at("key", "ab{c", 2, "bad");
        assert!(message.ends_with("           ^"), "{message:?}");
    }
}
