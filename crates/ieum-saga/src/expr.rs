//! Evaluating `${…}` templates and conditions (CEL; see `ieum_model::template` for the
//! syntax and why CEL).

use ieum_model::template::{Part, Template};
use serde_json::Value;

/// The variables templates read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    vars: Vec<(&'static str, Value)>,
}

impl Scope {
    /// A scope with `input` and `steps`.
    pub(crate) fn new(input: &Value, steps: Value) -> Scope {
        Scope {
            vars: vec![("input", input.clone()), ("steps", steps)],
        }
    }

    /// Adds a variable.
    pub(crate) fn with(mut self, name: &'static str, value: Value) -> Scope {
        self.vars.push((name, value));
        self
    }

    fn context(&self) -> Result<cel::Context<'static, 'static>, String> {
        let mut ctx = cel::Context::default();
        for (name, value) in &self.vars {
            ctx.add_variable_from_value(*name, to_cel(value));
        }
        Ok(ctx)
    }
}

/// JSON to CEL, with whole numbers as `int` (not `uint`), so `input.id + 1` works as
/// people expect.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(a) => a.iter().map(to_cel).collect::<Vec<_>>().into(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<std::collections::HashMap<String, cel::Value>>()
            .into(),
    }
}

fn eval(expr: &str, ctx: &cel::Context<'_, '_>) -> Result<Value, String> {
    let program =
        cel::Program::compile(expr).map_err(|e| format!("`{expr}` does not compile: {e}"))?;
    let value = program
        .execute(ctx)
        .map_err(|e| format!("`{expr}` failed: {e}"))?;
    value
        .json()
        .map_err(|e| format!("`{expr}` has no JSON value: {e}"))
}

fn render_with(text: &str, ctx: &cel::Context<'_, '_>) -> Result<Value, String> {
    let t = Template::parse(text)?;
    if let Some(expr) = t.single() {
        return eval(expr, ctx);
    }
    let mut out = String::new();
    for part in &t.parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Expr(e) => match eval(e, ctx)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// Renders one template string to a value (a single `${…}` keeps its type).
pub(crate) fn render(text: &str, scope: &Scope) -> Result<Value, String> {
    render_with(text, &scope.context()?)
}

/// Renders a template to text (non-strings as JSON).
pub(crate) fn render_text(text: &str, scope: &Scope) -> Result<String, String> {
    Ok(match render(text, scope)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Renders every string of a JSON value.
pub(crate) fn render_json(value: &Value, scope: &Scope) -> Result<Value, String> {
    let ctx = scope.context()?;
    render_json_with(value, &ctx)
}

fn render_json_with(value: &Value, ctx: &cel::Context<'_, '_>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => render_with(s, ctx)?,
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| render_json_with(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), render_json_with(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates a condition; it must be a boolean.
pub(crate) fn condition(expr: &str, scope: &Scope) -> Result<bool, String> {
    match eval(expr, &scope.context()?)? {
        Value::Bool(b) => Ok(b),
        other => Err(format!("`{expr}` is {other}, not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn templates_keep_types_or_interpolate() {
        let scope = Scope::new(
            &json!({"flight": {"to": "ICN", "seats": 2}, "id": 7}),
            json!({"flight": {"status": 201, "body": {"id": "f-1"}}, "book-hotel": {"body": {"id": "h-9"}}}),
        );
        assert_eq!(
            render("${input.flight}", &scope).unwrap(),
            json!({"to": "ICN", "seats": 2})
        );
        assert_eq!(
            render_text("/cancel/${steps.flight.body.id}?n=${input.id + 1}", &scope).unwrap(),
            "/cancel/f-1?n=8"
        );
        assert_eq!(
            render_json(
                &json!({"a": ["${steps['book-hotel'].body.id}", 3], "b": "x${input.flight}"}),
                &scope
            )
            .unwrap(),
            json!({"a": ["h-9", 3], "b": "x{\"seats\":2,\"to\":\"ICN\"}"})
        );
        assert!(condition("steps.flight.status == 201", &scope).unwrap());
        assert!(condition("input.id", &scope).is_err(), "not a boolean");
        let e = render("${steps.payment.body.id}", &scope).unwrap_err();
        assert!(e.contains("steps.payment.body.id"), "{e}");
    }
}
