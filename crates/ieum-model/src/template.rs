//! `${…}` templates and conditions in `Saga` and `Flow` resources.
//!
//! The expression language is [CEL](https://cel.dev) (the `cel` crate, the maintained
//! successor of `cel-interpreter`). Why CEL rather than jq (`jaq`):
//! - it is what Kubernetes (`ValidatingAdmissionPolicy`, CRD validation rules), Envoy and
//!   Istio already use for configuration expressions, so users of ieum's Kubernetes-shaped
//!   resources meet a language they may know;
//! - it is deliberately not Turing-complete: no loops or recursion, evaluation time is
//!   linear in the expression, so a definition applied by anyone cannot stall the server;
//! - field access reads like the config language's examples (`steps.flight.body.id`),
//!   with `has()`, `size()`, comparisons, `? :`, and list macros (`map`, `filter`,
//!   `exists`) for conditions.
//!
//! jq is a fine transformation language, but its recursion and generators make bounding
//! the cost of a server-side expression harder, and its syntax (`.steps.flight.body.id`,
//! `|`) reads less like the surrounding YAML.
//!
//! A template is a string with `${expression}` parts; `$${` writes a literal `${`. A
//! template that is exactly one `${…}` yields the expression's value (an object stays an
//! object); otherwise each part's value is written into the string (strings as they are,
//! other values as JSON). Expressions are compiled when a resource is applied, so syntax
//! errors are reported then, with the field path.
//!
//! Variables: `input` (the request body), `steps` (each earlier step by name, with
//! `status`, `headers` and `body`), and in sagas `execution` (its `id`). A step name with
//! `-` is read with brackets: `steps["book-flight"].body.id`.

use std::collections::BTreeSet;

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text written as is.
    Literal(String),
    /// A CEL expression (the text between `${` and `}`).
    Expr(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The parts, in order.
    pub parts: Vec<Part>,
}

impl Template {
    /// Splits `s` into literal text and expressions. Braces and quotes inside an
    /// expression are balanced, so CEL map literals and strings with `}` work.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if s[i..].starts_with("$${") {
                lit.push_str("${");
                i += 3;
                continue;
            }
            if s[i..].starts_with("${") {
                let start = i + 2;
                let end = expression_end(s, start)
                    .ok_or_else(|| format!("`${{` at offset {i} is not closed by `}}`"))?;
                let expr = s[start..end].trim();
                if expr.is_empty() {
                    return Err(format!("`${{}}` at offset {i} is empty"));
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(Part::Expr(expr.to_owned()));
                i = end + 1;
                continue;
            }
            let c = s[i..].chars().next().unwrap_or_default();
            lit.push(c);
            i += c.len_utf8().max(1);
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template { parts })
    }

    /// The expressions, in order.
    pub fn exprs(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template is exactly one expression (its value is kept as is).
    pub fn single(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Expr(e)] => Some(e),
            _ => None,
        }
    }
}

/// Where the `}` closing an expression starting at `start` is.
fn expression_end(s: &str, start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (off, c) in s[start..].char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(start + off),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Checks that `expr` is a CEL expression using only `variables`; the error says why not.
pub fn check_expr(expr: &str, variables: &[&str]) -> Result<(), String> {
    let program = cel::Program::compile(expr).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_owned();
        format!("`{expr}` is not a valid CEL expression: {first}")
    })?;
    let refs = program.references();
    let bound = macro_bound(expr);
    for v in refs.variables() {
        if !variables.contains(&v) && !bound.contains(v) {
            return Err(format!(
                "`{expr}` reads `{v}`, which is not defined here: use {}",
                variables
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// Names bound by comprehension macros (`list.map(x, …)`), which are not variables.
fn macro_bound(expr: &str) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for m in [".map(", ".filter(", ".exists(", ".all(", ".exists_one("] {
        for (i, _) in expr.match_indices(m) {
            let rest = expr[i + m.len()..].trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 && rest[end..].trim_start().starts_with(',') {
                out.insert(&rest[..end]);
            }
        }
    }
    out
}

/// Parses `s` and checks every expression in it.
pub fn check(s: &str, variables: &[&str]) -> Result<Template, String> {
    let t = Template::parse(s)?;
    for e in t.exprs() {
        check_expr(e, variables)?;
    }
    Ok(t)
}

/// Every template string inside a JSON value (strings at any depth; object keys are
/// literal).
pub fn strings_in(value: &serde_json::Value, out: &mut Vec<(String, String)>, path: &str) {
    match value {
        serde_json::Value::String(s) => out.push((path.to_owned(), s.clone())),
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                strings_in(v, out, &format!("{path}[{i}]"));
            }
        }
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                strings_in(v, out, &format!("{path}.{k}"));
            }
        }
        _ => {}
    }
}

/// The step names an expression reads (`steps.NAME` and `steps["NAME"]`).
pub fn steps_read(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("steps") {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        let after = rest[i + 5..].trim_start();
        rest = &rest[i + 5..];
        if !before_ok {
            continue;
        }
        if let Some(a) = after.strip_prefix('.') {
            let name: String = a
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        } else if let Some(a) = after.strip_prefix('[') {
            let a = a.trim_start();
            if let Some(q) = a.chars().next().filter(|c| *c == '"' || *c == '\'')
                && let Some(end) = a[1..].find(q)
            {
                out.insert(a[1..1 + end].to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_literals_and_expressions() {
        let t = Template::parse("/cancel/${steps.flight.body.id}?x=${ {'a': '}'}.a }").unwrap();
        assert_eq!(
            t.parts,
            [
                Part::Literal("/cancel/".into()),
                Part::Expr("steps.flight.body.id".into()),
                Part::Literal("?x=".into()),
                Part::Expr("{'a': '}'}.a".into()),
            ]
        );
        assert_eq!(
            Template::parse("${input.flight}").unwrap().single(),
            Some("input.flight")
        );
        assert_eq!(
            Template::parse("cost $${x} é").unwrap().parts,
            [Part::Literal("cost ${x} é".into())]
        );
        assert!(Template::parse("/a/${input.x").is_err());
        assert!(Template::parse("/a/${ }").is_err());
    }

    #[test]
    fn expressions_are_compiled_and_their_variables_checked() {
        assert!(check("${input.a + 1}", &["input", "steps"]).is_ok());
        let e = check("${input.a +}", &["input"]).unwrap_err();
        assert!(e.contains("not a valid CEL expression"), "{e}");
        // Names bound by macros are not variables.
        assert!(check("${input.items.map(x, x.id)}", &["input"]).is_ok());
        assert!(check("${input.items.exists(i, i.n > 1)}", &["input"]).is_ok());
        let e = check("${inputs.a}", &["input", "steps"]).unwrap_err();
        assert!(e.contains("reads `inputs`"), "{e}");
    }

    #[test]
    fn step_references_are_found_in_both_spellings() {
        let got = steps_read("steps.flight.body.id + steps['book-hotel'].body.x + mysteps.z");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["book-hotel", "flight"]
        );
    }
}
